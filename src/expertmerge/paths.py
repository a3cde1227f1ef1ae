"""Where the workflow's files live: every path it writes, named once. Each is a pattern in Snakemake's wildcard
syntax, used as it stands in a rule's input, output and log, and filled in Python with `.format(...)`
(`expertmerge.pipeline`, `expertmerge.rule_arguments`). A "stem" is a path without its suffixes: a checkpoint
(.safetensors + .json), a table (.csv + .md + .tex), a figure (.png + .pdf); a rule adds a suffix with an f-string,
f"{paths.EXPERT}.json" (`snakemake --lint` flags path composition with '+').
"""
from __future__ import annotations

RESULTS = "results"
EXPERIMENT = RESULTS + "/{experiment}"
PAPER = RESULTS + "/paper"

# Data, experts and FID features.
DOWNLOAD = "{download_dir}/{download}"
SPLITS = EXPERIMENT + "/data/splits.npz"
SPLITS_SUMMARY = EXPERIMENT + "/data/splits.json"
EXPERT = EXPERIMENT + "/experts/{source}/{expert}"                     # stem
TRAINING = EXPERIMENT + "/training/{expert}"                           # a training chain's folder
TRAINING_STATE = TRAINING + "/state-{step}.pt"
CLASSIFIER = EXPERIMENT + "/fid/classifier"                            # stem
REFERENCE = EXPERIMENT + "/fid/reference.npz"

# Measurements, one file per job.
SAMPLE_SHARD = EXPERIMENT + "/samples/{sampler}/{eta}/shard{shard}.npz"
FID = EXPERIMENT + "/fid/{sampler}/{eta}.json"
NLL_SHARD = EXPERIMENT + "/nll/{eta}/shard{shard}.csv"
VLB_JOB = EXPERIMENT + "/vlb/{eta}/{runs}.json"
TRUNK_STATE = EXPERIMENT + "/trunks/{path}/level{level}/shard{shard}.npz"  # a sweep's shared trunk at an anchor

# The per-noise-level view.
LOSS_PROFILE_SHARD = EXPERIMENT + "/diagnostics/loss_profile/shard{shard}.csv"
LOSS_PROFILE = EXPERIMENT + "/diagnostics/loss_profile.csv"
AUTO_SWITCH = EXPERIMENT + "/diagnostics/auto_switch.json"
AUTO_MERGE = EXPERIMENT + "/diagnostics/auto_merge/{merge}.json"
PREDICTED_VLB = EXPERIMENT + "/diagnostics/predicted_vlb.csv"

# Results as shown.
TABLE = EXPERIMENT + "/tables/table{number}"                           # stem
SUMMARY = EXPERIMENT + "/tables/summary"                               # stem: .md, and the claims as .csv
FIGURE = EXPERIMENT + "/figures/{figure}"                              # stem
PAPER_TABLE = PAPER + "/tables/table{number}"                          # stem

TABLE_SUFFIXES = (".csv", ".md", ".tex")
FIGURE_SUFFIXES = (".png", ".pdf")


def log(job: str, under: str = EXPERIMENT) -> str:
    """A job's log: <under>/logs/<job>.log (job may hold wildcards, e.g. "sample/{sampler}/{eta}/shard{shard}");
    under=RESULTS for a job of no experiment (a download)."""
    return f"{under}/logs/{job}.log"


def fill(pattern: str, **wildcards) -> str:
    """`pattern` with the given wildcards filled in and the others left as wildcards."""
    return pattern.format_map(_Keep(wildcards))


class _Keep(dict):
    def __missing__(self, key):
        return "{" + key + "}"
