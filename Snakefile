# expertmerge: merge pretrained diffusion experts by noise level and regenerate the paper's
# tables and figures. Rules hold no numerics: each calls one `expertmerge <command>`.
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from expertmerge.pipeline import short_schema_error

min_version("9.20")


configfile: "config.yaml"


try:
    validate(config, "workflow/schemas/config.schema.yaml")
except WorkflowError as error:  # the message, not the whole schema that jsonschema appends
    raise WorkflowError(short_schema_error(error)) from None


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
wildcard_constraints:
    experiment="|".join(config["experiments"]),
    sampler=r"ode|ancestral|heun\d+",
    shard=r"\d+",
    runs=r"run\d+|runs\d+-\d+",  # a VLB job: one run, or runs first..last
    expert=r"[a-z][a-z0-9_-]*",
    eta=r"[a-z0-9_.-]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/experts.smk"
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
