"""The real Snakemake DAG on a reduced digits config in a temp dir: tables, no-op re-run, incremental
re-runs, schema rejections."""
import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "config.yaml").read_text())


def reduced_config():
    config = copy.deepcopy(BASE)
    digits = config["experiments"]["digits"]
    for expert in digits["experts"].values():
        expert["train"].update(steps=40, batch_size=64, eval_every=20)
    digits["fid"]["classifier"].update(steps=60)
    digits["etas"] = ["edm", "eta_min", 0.5, "eta_max", "auto", "vdm"]
    digits["sampling"].update(num_samples=48, shard_size=24, batch_size=24, ode={"rtol": 1e-3, "atol": 1e-3},
                              ancestral={"steps": 16}, heun={"steps": [4], "schedule": "split"})
    digits["nll"].update(rtol=1e-3, atol=1e-3, shards=2, batch_size=200)
    digits["vlb"].update(runs=2, runs_per_job=1)  # one job per run; grouped: test_grouped_vlb_runs_give_the_same_table
    digits["loss_profile"].update(points=23, batch_size=90, shards=2)
    digits["figures"].update(fixed_noise_rows=2, grid_samples=16, fid_vs_nfe=["edm", "eta_min", "vdm"])
    digits["sampling"]["share_grid"] = digits["nll"]["share_grid"] = 4  # trunk anchors 0.25, 0.5, 0.75: few jobs
    config["keep_trunk_states"] = True  # so that an added eta finds its anchors (test_an_added_eta_...)
    return config


def snakemake(workdir, *args, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def planned_jobs(workdir, *targets):
    """{rule: count} that a dry-run would execute."""
    out = snakemake(workdir, "-n", *targets, "--quiet", "rules").stdout
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M) if rule != "total"}


def write_config(workdir, config):
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipeline")
    write_config(workdir, reduced_config())
    snakemake(workdir)
    return workdir


def test_tables_have_one_finite_row_per_eta(finished_run):
    tables = finished_run / "results" / "digits" / "tables"
    heun = ["FID (Heun 4)", "NFE (Heun 4)"]
    for number, columns in ((1, ["NLL (bpd)", "NFE"]), (2, ["FID (ODE)", "FID (ancestral)", *heun]), (4, ["VLB mean (bpd)"])):
        table = pd.read_csv(tables / f"table{number}.csv")
        assert len(table) == 6, table
        if number == 2:  # the split schedule: merges spend a single expert's 2 steps - 1 NFE
            assert (table["NFE (Heun 4)"] == 7).all(), table
        for column in columns:
            assert np.isfinite(table[column]).all(), table
        assert (tables / f"table{number}.md").stat().st_size > 0 and (tables / f"table{number}.tex").stat().st_size > 0
    summary = (tables / "summary.md").read_text().split("\n\n")
    rows = [len(chunk.strip().splitlines()) for chunk in summary if chunk.startswith("|")]  # lines per table
    # header, separator and a row per eta / claim / (the recommendation's candidates, if any merge is within the
    # FID budget) / eta (few-step sampling) / eta / expert / eta (the VLB predicted from the loss profile)
    assert rows[:2] == [2 + 6, 2 + 8] and rows[-4:] == [2 + 6, 2 + 6, 2 + 2, 2 + 6] and len(rows) in (6, 7), summary
    assert "Recommended" in "".join(summary)
    assert len(pd.read_csv(tables / "summary.csv")) == 8  # the paper's 7 claims and auto's
    for name in ("tradeoff", "fixed_noise", "samples_ode", "samples_ancestral", "loss_profile", "predicted_vlb",
                 "fid_vs_nfe"):
        assert (finished_run / "results" / "digits" / "figures" / f"{name}.png").stat().st_size > 0


def test_loss_profile_has_both_experts_on_their_ranges(finished_run):
    profile = pd.read_csv(finished_run / "results" / "digits" / "diagnostics" / "loss_profile.csv")
    grid = np.union1d(np.linspace(-13.3, 2 * np.log(80.0), 23), [2 * np.log(0.002), 5.0])  # and both ranges' ends
    assert sorted(profile["role"].unique()) == ["likelihood", "quality"]
    for role, rows in profile.groupby("role"):
        inside = grid[(grid >= rows["gamma_min"].iloc[0] - 1e-9) & (grid <= rows["gamma_max"].iloc[0] + 1e-9)]
        assert np.allclose(rows["gamma"], inside) and (rows["images"] == 180).all()
        assert np.isfinite(rows[["loss", "standard_error"]]).all().all() and (rows["loss"] > 0).all()


def test_second_run_is_a_no_op(finished_run):
    assert planned_jobs(finished_run) == {}


def test_changed_tolerance_reruns_only_downstream_nodes(finished_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    config = reduced_config()
    config["experiments"]["digits"]["nll"]["rtol"] = 2e-3
    write_config(workdir, config)
    assert planned_jobs(workdir) == {"trunk_nll": 6, "nll_shard": 12, "table1": 1, "figure_tradeoff": 1, "summary": 1,
                                     "all": 1}
    config = reduced_config()
    config["experiments"]["digits"]["etas"][2] = 0.6  # one eta changed: its jobs and the aggregates
    write_config(workdir, config)
    jobs = planned_jobs(workdir)
    assert jobs == {"sample_shard": 6, "fid": 3, "nll_shard": 2, "vlb_run": 2, "table1": 1, "table2": 1, "table4": 1,
                    "figure_tradeoff": 1, "figure_fixed_noise": 1, "figure_samples": 2, "figure_fid_vs_nfe": 1,
                    "figure_loss_profile": 1, "predict_vlb": 1, "figure_predicted_vlb": 1, "summary": 1,
                    "all": 1}  # the profile does not depend on them


def test_an_added_eta_plans_only_its_own_jobs_and_the_aggregates(finished_run, tmp_path):
    """Issue 23: a merge's sample and NLL jobs start from the shared trunk's state at a fixed anchor (here every
    1/4 of the clock), so an eta added between two others finds its anchors (kept) and plans its own tails, FID
    and VLB and the aggregates; no trunk segment and no other eta's job is planned again."""
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    config = reduced_config()
    config["experiments"]["digits"]["etas"].insert(2, 0.3)  # between eta_min and 0.5
    write_config(workdir, config)
    assert planned_jobs(workdir) == {"sample_shard": 6, "fid": 3, "nll_shard": 2, "vlb_run": 2, "table1": 1,
                                     "table2": 1, "table4": 1, "figure_tradeoff": 1, "figure_fixed_noise": 1,
                                     "figure_samples": 2, "figure_fid_vs_nfe": 1, "figure_loss_profile": 1,
                                     "predict_vlb": 1, "figure_predicted_vlb": 1, "summary": 1, "all": 1}
    trunks = workdir / "results" / "digits" / "trunks"
    assert sorted(p.parent.name for p in (trunks / "ancestral").glob("*/shard0.npz")) == ["level0.25", "level0.5",
                                                                                           "level0.75"]


def test_shared_ancestral_samples_are_those_of_an_independent_run(finished_run, tmp_path):
    """The pipeline's 0.5 ancestral shards (a tail from the anchor 0.5) against `expertmerge sample` run from the
    prior: the same images, bit for bit."""
    from expertmerge import rule_arguments

    config = reduced_config()  # the fixture's
    shard = finished_run / "results" / "digits" / "samples" / "ancestral" / "0.5" / "shard1.npz"
    assert "--start-state" in rule_arguments.sample_shard_arguments(config, "digits", "ancestral", "0.5", 1)
    arguments = " ".join([rule_arguments.sample_arguments(config, "digits", "ancestral", "0.5", 1),
                          rule_arguments.feature_network(config, "digits")])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(f"expertmerge sample {arguments} --out {tmp_path / 'alone.npz'}", shell=True, check=True,
                   cwd=finished_run, env=env, capture_output=True)
    shared, alone = np.load(shard), np.load(tmp_path / "alone.npz")
    assert np.array_equal(shared["images"], alone["images"]) and np.array_equal(shared["nfe"], alone["nfe"])
    assert '"trunk_level": 0.5' in str(shared["record"]) and "trunk_level" not in str(alone["record"])


def test_grouped_vlb_runs_give_the_same_table(finished_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    config = reduced_config()
    config["experiments"]["digits"]["vlb"]["runs_per_job"] = 2  # both runs of an eta in one job
    write_config(workdir, config)
    assert planned_jobs(workdir) == {"vlb_run": 6, "table4": 1, "figure_tradeoff": 1, "figure_predicted_vlb": 1,
                                     "summary": 1, "all": 1}
    snakemake(workdir)
    vlb = workdir / "results" / "digits" / "vlb"
    assert sorted(path.name for path in (vlb / "0.5").glob("*.json")) == ["run1.json", "run2.json", "runs1-2.json"]
    single = pd.concat([pd.read_json(vlb / "0.5" / f"run{k}.json") for k in (1, 2)], ignore_index=True)
    pd.testing.assert_frame_equal(pd.read_json(vlb / "0.5" / "runs1-2.json"), single)
    tables = [pd.read_csv(root / "results" / "digits" / "tables" / "table4.csv") for root in (finished_run, workdir)]
    pd.testing.assert_frame_equal(*tables)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["sampling"].update(bogus=1), "Additional properties are not allowed"),
    (lambda d: d["sampling"].update(num_samples=-5), "minimum"),
    (lambda d: d.update(etas=["edm", 0.9]), r"outside the feasible range \[0.0395, 0.8294\]"),
    (lambda d: d.update(etas=["edm", "sometimes"]), "neither a number"),
    (lambda d: d["vlb"].update(runs_per_job=3), r"vlb.runs_per_job \(3\) exceeds vlb.runs \(2\)"),
    (lambda d: d["vlb"].update(runs_per_job=0), "minimum"),
    (lambda d: d["loss_profile"].update(points=1), "minimum"),
    (lambda d: d["loss_profile"].update(split="test"), "'test' is not one of"),
    (lambda d: d.pop("loss_profile"), "eta 'auto' is chosen from the experts' loss profile"),
])
def test_schema_rejects_bad_config(tmp_path, change, message):
    config = reduced_config()
    change(config["experiments"]["digits"])
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), result.stdout + result.stderr


def test_a_killed_run_is_finished_by_a_plain_rerun(finished_run, tmp_path):
    """SIGKILL of Snakemake and its jobs mid-run: after Snakemake's own `--unlock` (its lock message says so),
    a plain `snakemake --cores all` re-runs what was cut off, with no --rerun-incomplete, and ends with the
    same tables as an uninterrupted run."""
    import signal
    import time

    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", "2", "--forcerun", "vlb_run"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((workdir / ".snakemake" / "incomplete").glob("*")) and time.monotonic() < deadline:
        time.sleep(0.2)  # until a job is running (Snakemake marks its outputs incomplete)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    locked = snakemake(workdir, check=False)
    if locked.returncode != 0:  # the killed Snakemake's lock: its message says to unlock
        assert "--unlock" in locked.stdout + locked.stderr
        snakemake(workdir, "--unlock")
    snakemake(workdir)  # a plain re-run
    assert planned_jobs(workdir) == {}
    for name in ("table1.csv", "table2.csv", "table4.csv"):
        tables = [root / "results" / "digits" / "tables" / name for root in (finished_run, workdir)]
        pd.testing.assert_frame_equal(*(pd.read_csv(path) for path in tables))


def test_a_changed_fid_budget_replans_everything_that_reads_it(finished_run, tmp_path):
    """Each value a command reads re-plans that command's jobs: here recommend.fid_budget, read by the
    trade-off figure and the summary (before: the summary's params read `input`, which Snakemake's params
    trigger leaves out, and summary.md kept the old budget; tests/test_config_reliability.py pins the class)."""
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    config = reduced_config()
    config["experiments"]["digits"]["recommend"] = {"fid_budget": 0.5}
    write_config(workdir, config)
    assert set(planned_jobs(workdir)) == {"all", "figure_tradeoff", "summary"}


def test_a_schema_error_says_what_and_where_in_a_few_lines(tmp_path):
    """Not the whole schema (jsonschema appends it: hundreds of lines at the top level)."""
    config = reduced_config()
    config["bogus"] = 1
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "'bogus' was unexpected" in text and "at the top level of config.yaml" in text
    assert len(text.splitlines()) < 20 and "Failed validating" not in text, text
