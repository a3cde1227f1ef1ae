"""The cluster path against a real SLURM: the one-node cluster of tools/local_slurm.sh (slurmctld, slurmd
with GPUs declared as gres, slurmdbd on MariaDB, munge) and profiles/slurm-local.

A reduced demo through the profile gives the local run's tables byte for byte; GPU rules get GPUs and CPU
rules none (sacct's AllocTRES); a scancel'd job, a job over its time limit and a SIGKILLed Snakemake each end
in a finished run with the same tables; a training longer than one job's time limit runs as a chain of jobs
that ends bit-identical to one uninterrupted training. Skipped, with the reason, where no cluster answers:
`sudo tools/local_slurm.sh up` starts one (.ci/run does)."""
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_paper_workflow import GPU_RULES
from test_pipeline import REPO, reduced_config, snakemake, write_config

PROFILE = REPO / "profiles" / "slurm-local"
BIN = Path(sys.executable).parent / "expertmerge"
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _cluster_missing() -> str | None:
    """Why the cluster tests cannot run here, or None."""
    if shutil.which("sinfo") is None:
        return "no SLURM on this machine (start one with: sudo tools/local_slurm.sh up)"
    try:
        states = subprocess.run(["sinfo", "-h", "-p", "gpu", "-o", "%T"], capture_output=True, text=True, timeout=20)
        account = subprocess.run(["sacctmgr", "-n", "-P", "show", "account", "expertmerge", "format=account"],
                                 capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "the SLURM controller or its database does not answer (tools/local_slurm.sh status)"
    if states.returncode or not re.search(r"idle|mix|alloc", states.stdout):
        return f"no usable node in partition gpu: {(states.stdout + states.stderr).strip() or 'none'}"
    if account.stdout.strip() != "expertmerge":
        return "no SLURM accounting with the account expertmerge (tools/local_slurm.sh up creates it)"
    return None


MISSING = _cluster_missing()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(MISSING is not None, reason=str(MISSING))]


def cluster_config():
    """test_pipeline's reduced demo, smaller: etas edm, 0.3, auto and vdm; 24 samples in shards of 12."""
    config = reduced_config()
    digits = config["experiments"]["digits"]
    digits["etas"] = ["edm", 0.3, "auto", "vdm"]
    digits["sampling"].update(num_samples=24, shard_size=12, batch_size=12)
    digits["figures"].update(grid_samples=12, fid_vs_nfe=["edm", "vdm"])
    # one merged eta shares no trunk with another (its trunk jobs would only add queue waits): the cluster tests
    # are about the cluster, tests/test_pipeline.py runs the shared trunks
    digits["sampling"]["share"] = digits["nll"]["share"] = False
    return config


def slurm_snakemake(workdir, *args, wait=True, timeout=900):
    """`snakemake --profile profiles/slurm-local ARGS` in `workdir` (sbatch's working directory, so sacct's
    WorkDir tells this run's jobs apart). Returns the finished process, or the running one (wait=False)."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--profile", str(PROFILE),
               *args]
    log = open(workdir / f"snakemake-{time.time_ns()}.log", "w")
    process = subprocess.Popen(command, cwd=workdir, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    process.log_path = Path(log.name)
    if wait:
        try:
            process.wait(timeout=timeout)
        finally:
            if process.poll() is None:  # hung: stop it and its jobs before failing
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(60)
            log.close()
    return process


def output_of(process) -> str:
    return process.log_path.read_text()


def jobs_of(workdir) -> list[dict]:
    """sacct's record of every SLURM job submitted from `workdir`: rule, state, AllocTRES, node count."""
    fields = ["JobIDRaw", "State", "AllocTRES", "NNodes", "WorkDir", "Comment", "Elapsed"]
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-S", "now-1days", "-o", ",".join(fields)], capture_output=True,
                         text=True, check=True).stdout
    jobs = []
    for line in out.splitlines():
        row = dict(zip(fields, line.split("|")))
        if row.get("WorkDir") == str(workdir):
            row["rule"] = re.match(r"rule_(.+?)(_wildcards_.*)?$", row["Comment"])[1]
            jobs.append(row)
    return jobs


def queued(workdir, rule=None, state=None) -> list[str]:
    """The job ids squeue lists for `workdir` (optionally of one rule and in one state)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%Z|%k"], capture_output=True, text=True, check=True).stdout
    ids = []
    for line in out.splitlines():
        job, job_state, job_dir, comment = line.split("|", 3)
        if job_dir == str(workdir) and (rule is None or comment.startswith(f"rule_{rule}_")) \
                and (state is None or job_state == state):
            ids.append(job)
    return ids


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"waited {timeout} s for {what}")


def tables(workdir) -> dict[str, bytes]:
    folder = workdir / "results/digits/tables"
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local")
    write_config(workdir, cluster_config())
    snakemake(workdir)
    return workdir


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm")
    write_config(workdir, cluster_config())
    process = slurm_snakemake(workdir)
    return workdir, process


def test_reduced_demo_through_slurm_gives_the_local_tables(slurm_run, local_run):
    workdir, process = slurm_run
    assert process.returncode == 0, output_of(process)[-4000:]
    assert tables(workdir) == tables(local_run)
    assert "Nothing to be done" in output_of(slurm_snakemake(workdir))


def test_gpu_rules_get_one_gpu_and_cpu_rules_none(slurm_run):
    workdir, _ = slurm_run
    jobs = jobs_of(workdir)
    not_run = {"reference_statistics", "train_recipe", "train_recipe_chunk", "trunk_samples", "trunk_nll"}  # sharing off
    assert {job["rule"] for job in jobs} >= GPU_RULES - not_run
    for job in jobs:
        gpus = re.search(r"gres/gpu=(\d+)", job["AllocTRES"])
        assert (job["rule"] in GPU_RULES) == bool(gpus) and job["NNodes"] == "1", job
        assert gpus is None or gpus[1] == "1", job


def fresh_copy(finished, destination):
    """A copy of a finished run's folder (results and Snakemake's records), as if run there."""
    shutil.copytree(finished, destination, ignore=shutil.ignore_patterns("snakemake-*.log", ".snakemake"))
    shutil.copytree(finished / ".snakemake", destination / ".snakemake", ignore=shutil.ignore_patterns("slurm_logs",
                                                                                                        "log", "locks"))
    return destination


def test_a_cancelled_job_is_retried_and_the_run_finishes(slurm_run, local_run, tmp_path):
    """scancel of a running NLL job (sacct: "CANCELLED by 0"): the run notices, submits it again and ends
    with the local run's tables; it does not wait for ever on the dead job."""
    workdir = fresh_copy(slurm_run[0], tmp_path / "run")
    process = slurm_snakemake(workdir, "--forcerun", "nll_shard", wait=False)
    victim = wait_for(lambda: queued(workdir, "nll_shard", "RUNNING"), 300, "a running nll_shard job")[0]
    subprocess.run(["scancel", victim], check=True)
    try:
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    output = output_of(process)
    assert process.returncode == 0, output[-4000:]
    assert re.search(rf"SLURM-job '{victim}' failed, SLURM status is: 'CANCELLED'", output), output[-4000:]
    cancelled = [job for job in jobs_of(workdir) if job["JobIDRaw"] == victim]
    assert cancelled and cancelled[0]["State"].startswith("CANCELLED")
    assert tables(workdir) == tables(local_run)


def test_a_killed_snakemake_is_finished_by_the_readme_command(slurm_run, local_run, tmp_path):
    """SIGKILL of the controlling snakemake while its SLURM jobs run. The jobs run on; the README's command
    (with --unlock, as asked) resubmits none of those that finished and ends with the local tables."""
    workdir = fresh_copy(slurm_run[0], tmp_path / "run")
    for result in [*workdir.glob("results/digits/vlb/*/run*.json"), *workdir.glob("results/digits/tables/table4.*")]:
        result.unlink()  # Table 4 to make again, from 8 VLB runs, 2 at a time
    process = slurm_snakemake(workdir, "--jobs", "2", wait=False)
    wait_for(lambda: queued(workdir, "vlb_run", "RUNNING"), 300, "a running vlb_run job")
    os.kill(process.pid, signal.SIGKILL)  # Snakemake alone: its SLURM jobs go on
    process.wait(30)
    orphans = set(queued(workdir))  # the controller's list (sacct's comes later)
    wait_for(lambda: not queued(workdir), 600, "the killed run's SLURM jobs to end")
    finished = wait_for(lambda: {job["Comment"] for job in jobs_of(workdir) if job["JobIDRaw"] in orphans
                                 and job["State"] == "COMPLETED"}, 60, "sacct to record the killed run's jobs")
    again = slurm_snakemake(workdir)
    if again.returncode != 0 and "--unlock" in output_of(again):
        assert slurm_snakemake(workdir, "--unlock").returncode == 0
        again = slurm_snakemake(workdir)
    assert again.returncode == 0, output_of(again)[-4000:]
    resubmitted = {job["Comment"] for job in jobs_of(workdir) if job["JobIDRaw"] not in orphans}
    assert resubmitted and not finished & resubmitted, (finished, resubmitted)  # the rest, and only the rest
    assert tables(workdir) == tables(local_run)


def recipe_config(name, **recipe):
    """An experiment of only a data set and a paper-recipe expert (VDM's CIFAR-10 recipe, tiny network) trained
    on the digits under a one-minute time limit."""
    config = cluster_config()
    digits = config["experiments"]["digits"]
    network = dict(embedding_dim=recipe.pop("width", 16), n_blocks=recipe.pop("blocks", 1), norm_groups=8)
    config["experiments"][name] = {
        "data": copy.deepcopy(digits["data"]),
        "experts": {
            "edm": copy.deepcopy(digits["experts"]["edm"]),
            "vdm": {"role": "likelihood", "family": "vdm", "noise_range": {"gamma_min": -13.3, "gamma_max": 5.0},
                    "recipe": {"name": "vdm-cifar10", "batch_size": 8, "checkpoint_every": 1, "log_every": 1,
                               "network": network, **recipe}},
        },
    }
    return config


ONE_MINUTE = ["--set-resources", "train_recipe:runtime=1", "train_recipe_chunk:runtime=1"]


def train_locally(workdir, experiment, gpus):
    """The same recipe as one uninterrupted `expertmerge train-recipe` on this machine, with the torch thread
    count the SLURM jobs had (float sums depend on it)."""
    logged = (workdir / f"results/{experiment}/logs/train_recipe/vdm.log").read_text()
    threads = re.search(r"process\(es\) of (\d+) torch thread", logged)[1]
    recipe = yaml.safe_load((workdir / "config.yaml").read_text())["experiments"][experiment]["experts"]["vdm"]["recipe"]
    out = workdir / "uninterrupted"
    result = subprocess.run([str(BIN), "train-recipe", "--recipe", "vdm-cifar10", "--family", "vdm", "--gamma-min",
                             "-13.3", "--gamma-max", "5", "--data", str(workdir / f"results/{experiment}/data/splits.npz"),
                             "--workdir", str(out), "--max-steps", str(recipe["max_steps"]), "--batch-size",
                             str(recipe["batch_size"]), "--gpus", str(gpus), "--network", json.dumps(recipe["network"]),
                             "--out", str(out / "vdm")], capture_output=True, text=True,
                            env={**ENV, "OMP_NUM_THREADS": threads}, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(out / "vdm.safetensors")


def test_training_longer_than_a_time_limit_is_a_chain_of_jobs_equal_to_one_run(tmp_path):
    """A recipe of 6 steps on 2 GPUs in jobs of 2 steps under a one-minute limit: three SLURM jobs, each
    resuming from the state the previous one handed on, no human in between; the expert equals one
    uninterrupted training's bit for bit (data order, RNG, optimizer and EMA resume exactly)."""
    write_config(tmp_path, recipe_config("chain", max_steps=6, steps_per_job=2, gpus=2))
    target = "results/chain/experts/recipe/vdm.safetensors"
    process = slurm_snakemake(tmp_path, target, *ONE_MINUTE)
    assert process.returncode == 0, output_of(process)[-4000:]
    training = [job for job in jobs_of(tmp_path) if job["rule"].startswith("train_recipe")]
    assert [job["State"] for job in training] == ["COMPLETED"] * 3, training
    assert all("gres/gpu=2" in job["AllocTRES"] and job["NNodes"] == "1" for job in training), training
    chained = load_file(tmp_path / target)
    whole = train_locally(tmp_path, "chain", gpus=2)
    assert chained.keys() == whole.keys() and all(torch.equal(chained[key], whole[key]) for key in whole)


def test_a_job_over_its_time_limit_is_retried_and_resumes(tmp_path):
    """One training job that needs more than its one-minute limit (~2 min on this machine): SLURM stops it
    (TIMEOUT), the profile's retry resumes from its last checkpoint, and the run finishes. (That a resumed
    training equals an uninterrupted one is the chain test's and test_train_recipe's.)"""
    write_config(tmp_path, recipe_config("limit", max_steps=300, width=128, blocks=4, checkpoint_every=20))
    target = "results/limit/experts/recipe/vdm.safetensors"
    process = slurm_snakemake(tmp_path, target, *ONE_MINUTE, timeout=1200)
    assert process.returncode == 0, output_of(process)[-4000:]
    states = [job["State"] for job in jobs_of(tmp_path) if job["rule"] == "train_recipe"]
    assert "TIMEOUT" in states and states[-1] == "COMPLETED", states
    log = (tmp_path / "results/limit/logs/train_recipe/vdm.log").read_text()
    assert re.search(r"resuming from step [1-9]\d* of 300", log), log[-3000:]
    assert json.loads((tmp_path / "results/limit/experts/recipe/vdm.json").read_text())["training"]["steps"] == 300

