"""The `expertmerge` command: clear errors, and a killed job leaves no finished-looking output."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_tiny_experts

from expertmerge.experts.registry import get_family

BIN = Path(sys.executable).parent / "expertmerge"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Barely trained experts and classifier: enough to run the commands."""
    return make_tiny_experts(tmp_path_factory.mktemp("cli"))


def run(*args, **kwargs):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, **kwargs)


def sample_args(root, out, seeds="0:8", eta="0.5"):
    return ["sample", "--quality", root / "edm", "--likelihood", root / "vdm", "--eta", eta, "--sampler", "ancestral",
            "--steps", 16, "--seeds", seeds, "--batch-size", 4, "--features", root / "classifier", "--out", out]


def test_help_lists_every_command_the_rules_call():
    out = run("--help").stdout
    rules = "".join(path.read_text() for path in (Path(__file__).parents[1] / "workflow" / "rules").glob("*.smk"))
    called = set(re.findall(r'"expertmerge ([a-z-]+)', rules))
    assert {"dataset", "fetch", "import-expert", "train-expert", "train-recipe", "sample", "fid", "nll"} <= called
    assert all(re.search(rf"^\s+{command}\s", out, flags=re.M) for command in called), out


@pytest.mark.parametrize("change, message", [
    ({"--seeds": "5:2"}, "START:STOP"),
    ({"--eta": "0.95"}, r"outside the feasible range \[0.0395, 0.8294\]"),
    ({"--eta": "often"}, "neither a number"),
])
def test_bad_input_gets_one_clear_error(tiny, tmp_path, change, message):
    args = sample_args(tiny, tmp_path / "shard.npz")
    for flag, value in change.items():
        args[args.index(flag) + 1] = value
    result = run(*args)
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "shard.npz").exists()


def test_a_killed_job_leaves_nothing_finished_and_the_rerun_completes(tiny, tmp_path):
    out = tmp_path / "shard.npz"
    process = subprocess.Popen([str(BIN), *map(str, sample_args(tiny, out, seeds="0:4000"))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # wait until it is mid-way: the first progress line
        if "ancestral samples" in line:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not out.exists()
    assert all(name.startswith(".") for name in os.listdir(tmp_path))  # only a hidden temporary, if anything
    result = run(*sample_args(tiny, out, seeds="0:8"))
    assert result.returncode == 0, result.stderr
    with np.load(out) as shard:
        assert shard["images"].shape == (8, 8, 8, 1) and shard["features"].shape[0] == 8


def test_grouped_vlb_runs_equal_single_runs(tiny, tmp_path):
    common = ["vlb", "--quality", tiny / "edm", "--likelihood", tiny / "vdm", "--eta", "0.5", "--data",
              tiny / "splits.npz", "--threads", 1]
    for runs, name in (([1, 2], "runs1-2"), ([1], "run1"), ([2], "run2")):
        result = run(*common, "--runs", *runs, "--out", tmp_path / f"{name}.json")
        assert result.returncode == 0, result.stderr
    records = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("runs1-2", "run1", "run2")}
    assert [record["run"] for record in records["runs1-2"]] == [1, 2]
    assert records["runs1-2"] == records["run1"] + records["run2"]  # the same numbers, bit for bit
    assert records["run1"][0]["vlb"] != records["run2"][0]["vlb"]


def test_loss_profile_covers_each_expert_on_its_range_of_one_grid(tiny, tmp_path):
    out = tmp_path / "profile.csv"
    result = run("loss-profile", "--quality", tiny / "edm", "--likelihood", tiny / "vdm", "--data", tiny / "splits.npz",
                 "--split", "val", "--points", 12, "--seed", 3, "--batch-size", 64, "--threads", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    profile = pd.read_csv(out)
    gamma_0, gamma_1 = -13.3, get_family("edm").gamma_range[1]
    grid = np.union1d(np.linspace(gamma_0, gamma_1, 12), [*get_family("edm").gamma_range, -13.3, 5.0])  # and the ends
    for role, (lo, hi) in (("quality", get_family("edm").gamma_range), ("likelihood", (-13.3, 5.0))):
        rows = profile[profile["role"] == role]
        assert np.allclose(rows["gamma"], grid[(grid >= lo - 1e-9) & (grid <= hi + 1e-9)], rtol=0, atol=1e-12)
        assert (rows["images"] == 180).all() and (rows["loss"] > 0).all() and (rows["standard_error"] > 0).all()
        assert np.allclose(rows[["gamma_min", "gamma_max"]], [lo, hi])
    assert set(profile["expert"]) == {"edm", "vdm"}
    assert np.allclose(profile[["gamma_0", "gamma_1"]], [gamma_0, gamma_1])
    assert np.allclose(profile[["eta_min", "eta_max"]], [(get_family("edm").gamma_range[0] - gamma_0) / (gamma_1 - gamma_0),
                                                          (5.0 - gamma_0) / (gamma_1 - gamma_0)])
    figure = run("figure-loss-profile", "--profile", out, "--etas", 0.1, 0.5, "--out", tmp_path / "profile.png")
    assert figure.returncode == 0, figure.stderr
    assert (tmp_path / "profile.png").stat().st_size > 0 and (tmp_path / "profile.pdf").stat().st_size > 0

    # Each eta's VLB predicted from the two curves: a merge takes the likelihood expert's curve below gamma_eta.
    predicted = tmp_path / "predicted.csv"
    result = run("predict-vlb", "--profile", out, "--data", tiny / "splits.npz", "--split", "val", "--etas", "edm",
                 "eta_min", "0.5", "vdm", "--out", predicted)
    assert result.returncode == 0, result.stderr
    rows = pd.read_csv(predicted, dtype={"eta_label": str}).set_index("eta_label")
    assert list(rows.index) == ["edm", "eta_min", "0.5", "vdm"]
    assert np.allclose(rows["predicted_vlb"], rows[["predicted_prior", "predicted_reconstruction",
                                                    "predicted_diffusion"]].sum(axis=1))
    assert np.allclose(rows.loc[["edm", "vdm"], ["gamma_min", "gamma_max"]], [get_family("edm").gamma_range, (-13.3, 5.0)])
    assert (rows.loc[["eta_min", "0.5"], ["gamma_min", "gamma_max"]].to_numpy() == [gamma_0, gamma_1]).all()


def test_a_sharded_profile_chooses_eta_auto_which_every_measurement_runs(tiny, tmp_path):
    """A profile of a fixed choice of images in 3 shards, combined, equals the profile in one job; auto-switch
    chooses from it, and sample, nll, vlb, predict-vlb and the figure run eta auto from the switches file."""
    experts = ["--quality", tiny / "edm", "--likelihood", tiny / "vdm"]
    profile = [*experts, "--data", tiny / "splits.npz", "--split", "train", "--images", 90, "--seed", 4, "--points", 12]
    assert run("loss-profile", *profile, "--out", tmp_path / "whole.csv").returncode == 0
    for shard in range(3):
        result = run("loss-profile", *profile, "--shard", shard, "--shards", 3, "--out", tmp_path / f"shard{shard}.csv")
        assert result.returncode == 0, result.stderr
    shards = [tmp_path / f"shard{shard}.csv" for shard in range(3)]
    assert run("combine-profiles", "--inputs", *shards, "--out", tmp_path / "combined.csv").returncode == 0
    whole, combined = pd.read_csv(tmp_path / "whole.csv"), pd.read_csv(tmp_path / "combined.csv")
    assert (combined["images"] == 90).all()
    pd.testing.assert_frame_equal(combined, whole, check_exact=False, rtol=1e-9)

    switches = tmp_path / "auto.json"
    result = run("auto-switch", "--profile", tmp_path / "combined.csv", "--out", switches)
    assert result.returncode == 0, result.stderr
    chosen = json.loads(switches.read_text())
    assert len(chosen["experts"]) == len(chosen["switch_etas"]) + 1 and len(chosen["switch_etas"]) % 2 == 1
    assert chosen["experts"][0] == "likelihood" and chosen["experts"][-1] == "quality"

    for args in (sample_args(tiny, tmp_path / "auto.npz", eta="auto") + ["--switches", switches],
                 ["nll", *experts, "--eta", "auto", "--switches", switches, "--data", tiny / "splits.npz",
                  "--split", "test", "--images", 4, "--rtol", 1e-2, "--atol", 1e-2, "--out", tmp_path / "nll.csv"],
                 ["vlb", *experts, "--eta", "auto", "--switches", switches, "--data", tiny / "splits.npz",
                  "--split", "test", "--runs", 1, "--out", tmp_path / "vlb.json"],
                 ["predict-vlb", "--profile", tmp_path / "combined.csv", "--data", tiny / "splits.npz", "--split",
                  "train", "--images", 90, "--seed", 4, "--etas", "auto", "--switches", switches,
                  "--out", tmp_path / "predicted.csv"],
                 ["figure-loss-profile", "--profile", tmp_path / "combined.csv", "--switches", switches,
                  "--out", tmp_path / "profile.png"]):
        result = run(*args)
        assert result.returncode == 0, (args[0], result.stderr)
    records = pd.read_csv(tmp_path / "nll.csv", dtype={"eta_label": str})
    assert (records["eta_label"] == "auto").all() and np.allclose(records["eta"], chosen["switch_etas"][0])
    assert json.loads((tmp_path / "vlb.json").read_text())[0]["eta_label"] == "auto"

    result = run(*sample_args(tiny, tmp_path / "none.npz", eta="auto"))
    assert result.returncode != 0 and "needs --switches" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "none.npz").exists()


def replaced(args, **changes):
    args = list(args)
    for flag, value in changes.items():
        flag = "--" + flag.replace("_", "-")
        if value is None:
            index = args.index(flag)
            del args[index:index + 2]
        elif flag in args:
            args[args.index(flag) + 1] = value
        else:
            args[-2:-2] = [flag, value]
    return args


def test_a_tail_from_cli_trunk_segments_is_the_independent_run(tiny, tmp_path):
    """Issue 23 through the commands: two trunk segments (sample --until-level, eta_min's merge), then eta 0.3's
    tail (--start-state) give the images and NFE of `sample` run from the prior; NLL likewise within tolerance."""
    trunk = sample_args(tiny, tmp_path / "s0.8.npz", eta="eta_min")
    assert run(*replaced(trunk, features=None, until_level=0.8)).returncode == 0
    second = replaced(trunk, features=None, until_level=0.4, start_state=tmp_path / "s0.8.npz", out=tmp_path / "s0.4.npz")
    assert run(*second).returncode == 0
    tail = replaced(sample_args(tiny, tmp_path / "tail.npz", eta="0.3"), start_state=tmp_path / "s0.4.npz")
    assert run(*tail).returncode == 0, run(*tail).stderr
    assert run(*sample_args(tiny, tmp_path / "alone.npz", eta="0.3")).returncode == 0
    shared, alone = np.load(tmp_path / "tail.npz"), np.load(tmp_path / "alone.npz")
    assert np.array_equal(shared["images"], alone["images"]) and np.array_equal(shared["nfe"], alone["nfe"])
    nll = ["nll", "--quality", tiny / "edm", "--likelihood", tiny / "vdm", "--data", tiny / "splits.npz", "--images", 6,
           "--rtol", 1e-4, "--atol", 1e-4, "--eta", "eta_max", "--out", tmp_path / "n0.5.npz"]
    assert run(*replaced(nll, until_level=0.5)).returncode == 0
    for out, extra in (("tail.csv", {"start_state": tmp_path / "n0.5.npz"}), ("alone.csv", {})):
        assert run(*replaced(nll, eta="0.6", out=tmp_path / out, **extra)).returncode == 0
    shared, alone = (pd.read_csv(tmp_path / name) for name in ("tail.csv", "alone.csv"))
    assert (shared["bpd"] - alone["bpd"]).abs().max() < 0.05 and shared["trunk_level"].eq(0.5).all()


@pytest.mark.parametrize("change, message", [
    ({"sampler": "heun", "steps": 5}, "the heun path shares no trunk"),
    ({"steps": 17}, r"does not continue this run: it has options"),
    ({"seeds": "0:4"}, r"does not continue this run: it has seeds '0:8' where this run has '0:4'"),
    ({"eta": "edm"}, "runs on the merged clock .* not one sweep"),  # a baseline, on its own range
])
def test_a_tail_that_does_not_continue_its_trunk_state_is_refused(tiny, tmp_path, change, message):
    trunk = replaced(sample_args(tiny, tmp_path / "state.npz", eta="eta_min"), features=None, until_level=0.5)
    assert run(*trunk).returncode == 0
    tail = replaced(sample_args(tiny, tmp_path / "tail.npz", eta="0.3"), start_state=tmp_path / "state.npz", **change)
    result = run(*tail)
    assert result.returncode != 0 and re.search(message, result.stderr), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "tail.npz").exists()


def test_sample_without_features_says_what_it_needs(tiny, tmp_path):
    result = run(*replaced(sample_args(tiny, tmp_path / "shard.npz"), features=None))
    assert result.returncode != 0 and "sample needs --features" in result.stderr, result.stderr


def test_a_named_merge_runs_and_with_hard_switches_equals_the_eta_merge(tiny, tmp_path):
    """Issue 24 through `sample`: a named merge (--merge, --eta its name) of the two experts with a hard switch at
    0.5 gives the images of --eta 0.5 bit for bit; one with a blend window runs and records its name and levels."""
    hard = json.dumps({"experts": ["edm", "vdm"], "switches": [0.5]})
    assert run(*replaced(sample_args(tiny, tmp_path / "named.npz", eta="half"), merge=hard)).returncode == 0
    assert run(*sample_args(tiny, tmp_path / "eta.npz", eta="0.5")).returncode == 0
    named, eta = np.load(tmp_path / "named.npz"), np.load(tmp_path / "eta.npz")
    assert np.array_equal(named["images"], eta["images"])
    blended = json.dumps({"experts": ["edm", "vdm"], "switches": [{"blend": [0.4, 0.6]}]})
    result = run(*replaced(sample_args(tiny, tmp_path / "blend.npz", eta="soft"), merge=blended))
    assert result.returncode == 0, result.stderr
    record = json.loads(str(np.load(tmp_path / "blend.npz")["record"]))
    assert (record["eta_label"], record["switch_etas"]) == ("soft", "0.4 0.6")
    missing = json.dumps({"experts": ["edm", "flow", "vdm"], "switches": [0.7, 0.3]})
    result = run(*replaced(sample_args(tiny, tmp_path / "three.npz", eta="three"), merge=missing))
    assert result.returncode != 0 and "--expert flow=STEM" in result.stderr, result.stderr
