# expertmerge: merge pretrained diffusion experts by noise level and regenerate the paper's
# tables and figures. Rules hold no numerics: each calls one `expertmerge <command>`.
from snakemake.utils import min_version

from expertmerge.configuration import check_config_files, validate_config
from expertmerge.plugins import load_plugins
from expertmerge.samplers import result_pattern

min_version("9.20")


configfile: "config.yaml"


# Refused in seconds whatever its shape: duplicate keys, aliases expanding beyond reason, then the schema
# (jsonschema directly: Snakemake's `validate` prints the whole instance, for ever for a "billion laughs").
load_plugins()  # a researcher's own samplers, tables and families (EXPERTMERGE_PLUGINS)
check_config_files(workflow.configfiles)
validate_config(config, workflow.source_path("workflow/schemas/config.schema.yaml"))


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
wildcard_constraints:
    experiment="|".join(config["experiments"]),
    sampler=result_pattern(),  # every declared sampler's result names (expertmerge.samplers)
    shard=r"\d+",
    runs=r"run\d+|runs\d+-\d+",  # a VLB job: one run, or runs first..last
    expert=r"[a-z][a-z0-9_-]*",
    eta=r"[a-z0-9_.-]+",
    level=r"[0-9][0-9.e-]*",  # a trunk anchor k/grid as Python prints it
    merge=r"[a-z][a-z0-9_-]*",


include: "workflow/rules/data.smk"
include: "workflow/rules/experts.smk"
include: "workflow/rules/trunks.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/fid.smk"
include: "workflow/rules/likelihood.smk"
include: "workflow/rules/diagnostics.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/paper.smk"


rule all:
    default_target: True
    input:
        experiment_targets(config["demo"]),


if "digits3" in config["experiments"]:

    rule digits3:
        input:
            experiment_targets("digits3"),
