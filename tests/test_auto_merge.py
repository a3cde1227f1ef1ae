"""Issue 24: an expert beyond the eta grid's pair, and merges of any number of experts chosen from the loss
profile (`{auto: [experts]}` in config.yaml), through the commands the workflow runs: loss-profile --expert,
auto-merge, and sample / nll of the chosen merge and of the third expert alone."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import make_tiny_experts

BIN = Path(sys.executable).parent / "expertmerge"


def run(*args):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """The tiny edm and vdm experts and a tiny flow expert on its native range."""
    from expertmerge.datasets import load_splits
    from expertmerge.train_expert import train_expert

    root = make_tiny_experts(tmp_path_factory.mktemp("three"))
    splits = load_splits(root / "splits.npz")
    train_expert("flow", splits["train"], splits["val"], out_stem=root / "flow", seed=0, steps=2, batch_size=8,
                 eval_every=1, val_repeats=1)
    return root


def profile(root, out, *more):
    return run("loss-profile", "--quality", root / "edm", "--likelihood", root / "vdm", *more, "--data",
               root / "splits.npz", "--split", "val", "--images", 40, "--points", 12, "--batch-size", 40, "--out", out)


def test_an_auto_merge_of_three_experts_is_chosen_from_their_profiles_and_runs(three, tmp_path):
    assert profile(three, tmp_path / "pair.csv").returncode == 0
    result = profile(three, tmp_path / "three.csv", "--expert", f"flow={three / 'flow'}")
    assert result.returncode == 0, result.stderr
    pair, full = pd.read_csv(tmp_path / "pair.csv"), pd.read_csv(tmp_path / "three.csv")
    flow = full[full["role"] == "other"]
    assert set(flow["expert"]) == {"flow"} and flow["difference"].isna().all()
    assert flow["gamma"].min() < pair["gamma"].min() and flow["gamma"].max() > pair["gamma"].max()  # its wider range
    clock = ["eta_min", "eta_max", "gamma_0", "gamma_1"]  # the eta grid's clock stays the pair's
    assert np.allclose(full[clock].drop_duplicates(), pair[clock].drop_duplicates())
    assert run("auto-switch", "--profile", tmp_path / "three.csv", "--out", tmp_path / "auto.json").returncode == 0

    result = run("auto-merge", "--profile", tmp_path / "three.csv", "--experts", "edm", "flow", "vdm",
                 "--out", tmp_path / "three.json")
    assert result.returncode == 0, result.stderr
    chosen = json.loads((tmp_path / "three.json").read_text())
    assert (chosen["gamma_0"], chosen["gamma_1"]) == pytest.approx((flow["gamma_min"].iloc[0], flow["gamma_max"].iloc[0]))
    assert chosen["merge"]["experts"] == chosen["experts"][::-1] and chosen["excess_bpd"] <= chosen["standard_error_bpd"]
    selection = ["--data", three / "splits.npz", "--split", "val", "--images", 40]
    hard = json.dumps({"experts": ["edm", "vdm"], "switches": [0.5]})  # the eta grid's 0.5, by name
    result = run("predict-vlb", "--profile", tmp_path / "three.csv", *selection, "--etas", "0.5", "--merges",
                 f"half={hard}", "--auto-merges", f"three={tmp_path / 'three.json'}", "--out", tmp_path / "predicted.csv")
    assert result.returncode == 0, result.stderr
    predicted = pd.read_csv(tmp_path / "predicted.csv", dtype={"eta_label": str}).set_index("eta_label")
    assert predicted.loc["half", "predicted_vlb"] == pytest.approx(predicted.loc["0.5", "predicted_vlb"], abs=1e-12)
    assert np.isnan(predicted.loc["three", "eta"]) and np.isfinite(predicted.loc["three", "predicted_vlb"])
    blend = json.dumps({"experts": ["edm", "vdm"], "switches": [{"blend": [0.4, 0.6]}]})
    result = run("predict-vlb", "--profile", tmp_path / "three.csv", *selection, "--etas", "0.5", "--merges",
                 f"soft={blend}", "--out", tmp_path / "blend.csv")
    assert result.returncode != 0 and "a blend's VLB is not predicted" in result.stderr and "Traceback" not in result.stderr
    figure = run("figure-loss-profile", "--profile", tmp_path / "three.csv", "--switches", tmp_path / "auto.json",
                 "--merges", f"three={tmp_path / 'three.json'}", "--out", tmp_path / "profile.png")
    assert figure.returncode == 0 and (tmp_path / "profile.png").stat().st_size > 0, figure.stderr
    experts = ["--quality", three / "edm", "--likelihood", three / "vdm", "--expert", f"flow={three / 'flow'}"]
    for eta, more in (("three", ["--switches", tmp_path / "three.json"]), ("flow", [])):
        result = run("nll", *experts, "--eta", eta, *more, "--data", three / "splits.npz", "--split", "test",
                     "--images", 3, "--rtol", 1e-2, "--atol", 1e-2, "--out", tmp_path / f"{eta}.csv")
        assert result.returncode == 0, result.stderr
        record = pd.read_csv(tmp_path / f"{eta}.csv", dtype={"eta_label": str})
        assert (record["eta_label"] == eta).all() and np.isfinite(record["bpd"]).all()
    alone = pd.read_csv(tmp_path / "flow.csv")
    assert alone["eta"].isna().all() and alone["gamma_min"].iloc[0] == pytest.approx(flow["gamma_min"].iloc[0])


@pytest.mark.parametrize("args,message", [
    (["--experts", "edm", "nope"], "--experts must name distinct experts of the profile"),
    (["--experts", "edm", "edm"], "--experts must name distinct experts of the profile"),
])
def test_auto_merge_refuses_experts_not_in_the_profile(three, tmp_path, args, message):
    assert profile(three, tmp_path / "pair.csv").returncode == 0
    result = run("auto-merge", "--profile", tmp_path / "pair.csv", *args, "--out", tmp_path / "out.json")
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.json").exists()


def test_an_auto_merge_file_is_checked_against_its_experts(tmp_path):
    from expertmerge.profile_files import read_auto_merge

    ranges = {"edm": (-12.4, 8.8), "vdm": (-13.3, 5.0), "flow": (-13.8, 9.2)}
    path = tmp_path / "chosen.json"
    chosen = {"experts": ["flow", "edm", "vdm", "flow"], "switches": [0.95, 0.4, 0.025]}  # flow at both ends
    path.write_text(json.dumps({"merge": chosen}))
    assert read_auto_merge(path, ranges) == chosen
    path.write_text(json.dumps({"merge": {"experts": ["flow"], "switches": []}}))
    assert read_auto_merge(path, ranges)["experts"] == ["flow"]  # one expert serving the whole range alone
    for merge, message in (({"experts": ["edm", "vdm"], "switches": [0.99]}, "leaves the levels where both are valid"),
                           ({"experts": ["edm", "vdm"], "switches": [{"blend": [0.3, 0.5]}]}, "holds a blend"),
                           ({"experts": ["edm", "other"], "switches": [0.5]}, "names the expert(s) ['other']"),
                           ({"experts": ["edm"]}, "is not an auto-merge JSON file")):
        path.write_text(json.dumps({"merge": merge}))
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
            read_auto_merge(path, ranges)


def checked(change):
    """config.yaml with `change` applied to its digits3 experiment, validated and checked as the workflow does."""
    import copy

    import yaml

    from expertmerge.configuration import check_config, validate_config

    repo = Path(__file__).resolve().parents[1]
    config = copy.deepcopy(yaml.safe_load((repo / "config.yaml").read_text()))
    change(config["experiments"]["digits3"])
    validate_config(config, repo / "workflow/schemas/config.schema.yaml")
    check_config(config)


def test_the_three_expert_experiment_is_a_valid_config():
    checked(lambda experiment: None)


@pytest.mark.parametrize("change, message", [
    (lambda e: e["merges"].update(bad={"auto": ["edm", "nope"]}), "names the expert 'nope', which the experiment"),
    (lambda e: e.pop("loss_profile"), "an auto merge is chosen from the experts' loss profiles: configure loss_profile"),
    (lambda e: e["experts"]["flow"].update(noise_range={"gamma_min": 6.0, "gamma_max": 9.1902}),
     r"merge 'flow-vdm': no expert of \['flow', 'vdm'\] serves gamma in \(5, 6\)"),
    (lambda e: e["experts"]["flow"].update(role="quality"), "exactly one 'quality' and one 'likelihood' role"),
])
def test_a_bad_named_merge_or_role_is_refused_while_planning(change, message):
    from expertmerge.pipeline import ConfigError

    with pytest.raises(ConfigError, match=message):
        checked(change)


def test_the_digits3_target_plans_three_experts_their_auto_merges_and_leaves_the_demo_alone(tmp_path):
    """`snakemake -n digits3` trains three experts, profiles all three in one loss profile, chooses each named auto
    merge and runs every eta of digits3; the default target's plan is the demo's alone."""
    import yaml

    from test_pipeline import planned_jobs, write_config

    repo = Path(__file__).resolve().parents[1]
    write_config(tmp_path, yaml.safe_load((repo / "config.yaml").read_text()))
    digits3 = yaml.safe_load((repo / "config.yaml").read_text())["experiments"]["digits3"]
    planned = planned_jobs(tmp_path, "digits3")
    etas = len(digits3["etas"])
    assert (planned["train_expert"], planned["auto_merge"], planned["loss_profile_shard"]) == (3, 3, 1)
    assert (planned["nll_shard"], planned["vlb_run"]) == (etas, etas)  # one shard and one job of runs per eta
    assert "digits3" not in str(planned_jobs(tmp_path)) and planned_jobs(tmp_path)["train_expert"] == 2
