"""profiles/slurm-local is profiles/slurm with its placeholders filled and sizes for a small node: the same
rules, GPU requests, node counts, retries and executor settings, so that what the cluster tests prove holds
for the profile users run."""
from pathlib import Path

import yaml

PROFILES = Path(__file__).resolve().parents[1] / "profiles"
SLURM, LOCAL = (yaml.safe_load((PROFILES / name / "config.yaml").read_text()) for name in ("slurm", "slurm-local"))
SIZES = {"runtime", "mem_mb", "cpus_per_task", "slurm_partition", "slurm_account"}  # what a node decides
SCALE = {"jobs", "latency-wait", "slurm-init-seconds-before-status-checks"}  # what a cluster's size decides


def test_same_rules_and_the_same_gpu_and_node_requests():
    assert SLURM["set-resources"].keys() == LOCAL["set-resources"].keys()
    for rule, resources in SLURM["set-resources"].items():
        local = LOCAL["set-resources"][rule]
        assert {key: value for key, value in resources.items() if key not in SIZES} == \
               {key: value for key, value in local.items() if key not in SIZES}, rule
        on_gpus = resources.get("slurm_partition") == "<gpu-partition>"
        assert (local.get("slurm_partition") == "gpu") == on_gpus, rule


def test_same_executor_settings():
    assert {key: value for key, value in SLURM.items() if key not in SCALE | {"default-resources", "set-resources"}} \
        == {key: value for key, value in LOCAL.items() if key not in SCALE | {"default-resources", "set-resources"}}
    assert SLURM["slurm-status-command"] == "squeue"  # sacct's "CANCELLED by <uid>" hangs plugin 2.8.0


def test_local_profile_fills_every_placeholder_and_fits_the_node():
    text = (PROFILES / "slurm-local" / "config.yaml").read_text()
    assert "<" not in text.split("set-resources")[1] and LOCAL["default-resources"]["slurm_account"] == "expertmerge"
    for resources in [LOCAL["default-resources"], *LOCAL["set-resources"].values()]:
        assert resources.get("cpus_per_task", 1) <= 2 and resources.get("mem_mb", 0) <= 8000
