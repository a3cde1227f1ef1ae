"""Inputs that would give a finished-looking but wrong result (issue 21): the same measurement pooled twice,
records that say a batch other than the one solved, and intermediate files edited or cut short. Each is
refused before any work with one line naming the file, and nothing is written at --out.
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from expertmerge import tables
from expertmerge.commands import solved_batch_sizes
from expertmerge.datasets import load_digits_splits, save_splits
from expertmerge.experts.registry import get_family
from expertmerge.features import load_feature_network, save_classifier, train_classifier
from expertmerge.frechet import save_statistics, statistics
from expertmerge.loss_profile import combine_profiles
from expertmerge.noise import feasible_etas
from expertmerge.profile_files import read_loss_profile, read_switches
from expertmerge.train_expert import train_expert

BIN = Path(sys.executable).parent / "expertmerge"
LABELS = {"edm": 0.0, "0.3": 0.3, "vdm": 1.0}
LIKELIHOOD, QUALITY = (-13.3, 5.0), (-12.43, 8.764)
NAMES = {"quality": "edm", "likelihood": "vdm"}


def run(*args):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)


def fails(out, *args, words):
    """`expertmerge *args --out out` fails with one line holding `words`, and writes nothing."""
    out = Path(out)
    result = run(*args, "--out", out)
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(word in result.stderr for word in words), result.stderr
    assert not out.parent.exists() or not list(out.parent.iterdir()), list(out.parent.iterdir())


# ----------------------------------------------------------------------------
# Result records, written as the pipeline writes them.


def nll_rows(images):
    return [dict(eta_label=label, eta=eta, image=i, bpd=1.5 + eta + 0.01 * (i % 7), nfe=100, batch_size=len(images))
            for label, eta in LABELS.items() for i in images]


def vlb_rows(runs):
    return [dict(eta_label=label, eta=eta, run=r, vlb=1.6 + eta + 0.01 * r) for label, eta in LABELS.items() for r in runs]


def fid_rows():
    return [dict(eta_label=label, eta=eta, sampler=sampler, fid=3 + eta, fid_spread=0.1, nfe_mean=120)
            for label, eta in LABELS.items() for sampler in ("ode", "ancestral")]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """NLL shards of images 0-3 and 4-7, VLB runs 1-3 and 4-5, FID records, predicted VLBs; a copy of each."""
    root = tmp_path_factory.mktemp("records")
    pd.DataFrame(nll_rows(range(4))).to_csv(root / "nll0.csv", index=False)
    pd.DataFrame(nll_rows(range(4, 8))).to_csv(root / "nll1.csv", index=False)
    (root / "vlb0.json").write_text(json.dumps(vlb_rows([1, 2, 3])))
    (root / "vlb1.json").write_text(json.dumps(vlb_rows([4, 5])))
    (root / "fid.json").write_text(json.dumps(fid_rows()))
    pd.DataFrame([dict(eta_label=label, eta=eta, predicted_vlb=1.6 + eta) for label, eta in LABELS.items()]).to_csv(
        root / "predicted.csv", index=False)
    for name in ("nll0.csv", "vlb0.json", "fid.json"):
        shutil.copy(root / name, root / f"copy_{name}")
    return root


# 1. The same measurement pooled twice.

def test_one_nll_shard_twice_no_longer_shrinks_the_standard_error(results):
    once = tables.table1(tables.load_records(results / "nll0.csv", results / "nll1.csv"))
    assert list(once["NFE batch"]) == [4, 4, 4]
    for twice in ((results / "nll0.csv", results / "nll0.csv"), (results / "nll0.csv", results / "copy_nll0.csv")):
        with pytest.raises(ValueError, match=r"more than one record of eta edm, image 0 .*nll0.csv"):
            tables.load_records(*twice)
    rows = pd.read_csv(results / "nll0.csv", dtype={"eta_label": str})
    with pytest.raises(ValueError, match="more than one record of eta edm, image 0"):  # the library, too
        tables.table1(pd.concat([rows, rows]))
    with pytest.raises(ValueError, match="more than one record of eta edm, run 2"):
        tables.table4(vlb_rows([1, 2]) + vlb_rows([2, 3]))


def repeated(results, nll=("nll0.csv",), vlb=("vlb0.json",), fid=("fid.json",)):
    """Each pooling command, given the files named (by default each once)."""
    n, v, f = ([results / name for name in names] for names in (nll, vlb, fid))
    return {
        "table 1": ["table", "--table", 1, "--inputs", *n],
        "table 2": ["table", "--table", 2, "--inputs", *f],
        "table 4": ["table", "--table", 4, "--inputs", *v, "--predicted", results / "predicted.csv"],
        "paper-table 1": ["paper-table", "--table", 1, "--dataset", "CIFAR-10", *n],
        "paper-table 4": ["paper-table", "--table", 4, "--dataset", "CIFAR-10", *v],
        "literature-table": ["literature-table", "--table", 3, "--nll", "cifar10", *n, "--vlb", "cifar10", *v,
                             "--fid", "cifar10", *f],
        "summary": ["summary", "--nll", *n, "--vlb", *v, "--fid", *f],
        "figure-tradeoff": ["figure-tradeoff", "--nll", *n, "--vlb", *v, "--fid", *f],
        "figure-predicted-vlb": ["figure-predicted-vlb", "--vlb", *v, "--predicted", results / "predicted.csv"],
        "figure-fid-vs-nfe": ["figure-fid-vs-nfe", "--fid", *f, "--etas", "0.3"],
    }


OUTS = {"summary": "summary.md", "figure-tradeoff": "f.png", "figure-predicted-vlb": "f.png", "figure-fid-vs-nfe": "f.png"}


@pytest.mark.parametrize("command, files, words", [
    ("table 1", {"nll": ("nll0.csv", "copy_nll0.csv")}, ["image 0", "nll0.csv and ", "copy_nll0.csv"]),
    ("table 2", {"fid": ("fid.json", "fid.json")}, ["eta edm, sampler ode", "fid.json"]),
    ("table 4", {"vlb": ("vlb0.json", "copy_vlb0.json")}, ["eta edm, run 1", "copy_vlb0.json"]),
    ("paper-table 1", {"nll": ("nll0.csv", "nll0.csv")}, ["image 0 twice in", "nll0.csv"]),
    ("paper-table 4", {"vlb": ("vlb0.json", "vlb0.json")}, ["run 1", "vlb0.json"]),
    ("literature-table", {"nll": ("nll1.csv", "nll0.csv", "copy_nll0.csv")}, ["image 0", "copy_nll0.csv"]),
    ("summary", {"vlb": ("vlb1.json", "copy_vlb0.json", "vlb0.json")}, ["run 1", "copy_vlb0.json and "]),
    ("figure-tradeoff", {"fid": ("fid.json", "copy_fid.json")}, ["sampler ode", "copy_fid.json"]),
    ("figure-predicted-vlb", {"vlb": ("vlb0.json", "vlb0.json")}, ["run 1", "vlb0.json"]),
    ("figure-fid-vs-nfe", {"fid": ("copy_fid.json", "fid.json")}, ["sampler ode", "copy_fid.json and "]),
])
def test_every_pooling_command_refuses_a_measurement_twice(results, tmp_path, command, files, words):
    fails(tmp_path / "out" / OUTS.get(command, "t.csv"), *repeated(results, **files)[command],
          words=["more than one record of eta edm", *words])


def test_disjoint_shards_and_runs_are_pooled(results, tmp_path):
    for command in ("table 1", "table 4", "paper-table 1"):
        args = repeated(results, nll=("nll0.csv", "nll1.csv"), vlb=("vlb0.json", "vlb1.json"))[command]
        result = run(*args, "--out", tmp_path / f"{command.replace(' ', '')}.csv")
        assert result.returncode == 0, (command, result.stderr)


@pytest.mark.parametrize("args, words", [
    (["vlb", "--quality", "q", "--likelihood", "l", "--eta", "0.3", "--runs", 1, 2, 1], ["--runs names a run more than once"]),
    (["predict-vlb", "--profile", "p.csv", "--etas", "0.3", "vdm", "0.3"], ["--etas names an eta more than once"]),
])
def test_a_run_or_an_eta_asked_for_twice_is_refused(tiny, tmp_path, args, words):
    fails(tmp_path / "out" / "r.json", *args, "--data", tiny / "splits.npz", words=words)


def test_a_figure_grid_refuses_one_eta_twice(tiny, tmp_path):
    shard = tmp_path / "s.npz"
    assert run(*sample_args(tiny, "0:4", 4), "--out", shard).returncode == 0
    shutil.copy(shard, tmp_path / "copy.npz")
    fails(tmp_path / "out" / "g.png", "figure-grid", "--kind", "samples", "--count", 2, "--shards", shard,
          tmp_path / "copy.npz", words=["s.npz and ", "copy.npz are both samples at eta 0.3"])


# ----------------------------------------------------------------------------
# Loss-profile shards and files.


def profile_frame(shard=0, shards=1, images=10, offset=0.0) -> pd.DataFrame:
    """A loss profile as `expertmerge loss-profile` writes it: the quality expert better at high noise."""
    grid = np.union1d(np.linspace(-13.3, 8.764, 12), [*LIKELIHOOD, *QUALITY])
    (eta_min, eta_max), = feasible_etas([LIKELIHOOD, QUALITY])
    likelihood = lambda g: 0.5 / (1 + np.exp(-g)) + 0.01 + offset  # noqa: E731
    quality = lambda g: likelihood(g) * (1 + 0.5 * np.tanh(-(g + 5)))  # noqa: E731
    rows = []
    for role, (lo, hi), curve in (("quality", QUALITY, quality), ("likelihood", LIKELIHOOD, likelihood)):
        for g in grid[(grid >= lo) & (grid <= hi)]:
            paired = LIKELIHOOD[0] <= g <= LIKELIHOOD[1] and QUALITY[0] <= g <= QUALITY[1]
            rows.append(dict(role=role, expert=NAMES[role], gamma=g, loss=curve(g), standard_error=0.01, images=images,
                             difference=quality(g) - likelihood(g) if paired else np.nan,
                             difference_standard_error=0.002 if paired else np.nan, gamma_min=lo, gamma_max=hi,
                             eta_min=eta_min, eta_max=eta_max, gamma_0=-13.3, gamma_1=8.764, shard=shard, shards=shards))
    return pd.DataFrame(rows)


def test_combine_profiles_refuses_a_shard_twice(tmp_path):
    parts = [profile_frame(k, 3, offset=0.001 * k) for k in range(3)]
    for k, part in enumerate(parts):
        part.to_csv(tmp_path / f"shard{k}.csv", index=False)
    shutil.copy(tmp_path / "shard1.csv", tmp_path / "copy.csv")
    combined = tmp_path / "combined.csv"
    assert run("combine-profiles", "--inputs", *(tmp_path / f"shard{k}.csv" for k in range(3)), "--out", combined).returncode == 0
    whole = pd.read_csv(combined)
    assert (whole["images"] == 30).all() and (whole["shard"] == 0).all() and (whole["shards"] == 1).all()
    read_loss_profile(combined)  # a whole profile, as auto-switch reads it
    for inputs, words in (([0, 1, "copy"], ["shard1.csv and ", "copy.csv are the same loss-profile shard"]),
                          ([0, 1, 1, 2], ["shard1.csv are the same loss-profile shard"]),
                          ([0, 2], ["lack shard(s) [1] of 3"])):
        fails(tmp_path / "out" / "p.csv", "combine-profiles", "--inputs", *(tmp_path / f"{'shard' if k != 'copy' else ''}{k}.csv"
                                                                               for k in inputs), words=words)
    rerun = profile_frame(1, 3, offset=0.5)  # shard 1 again, other numbers (other seeds): still its images twice
    with pytest.raises(ValueError, match="profile 1 and profile 2 are both shard 1 of 3"):
        combine_profiles([parts[0], parts[1], rerun])
    with pytest.raises(ValueError, match=r"split the images in \[2, 3\] parts"):
        combine_profiles([parts[0], profile_frame(1, 2)])


def edited(frame, role, column, change):
    frame = frame.copy()
    rows = frame.index[frame["role"] == role]
    frame.loc[rows, column] = change(frame.loc[rows, column].to_numpy())
    return frame


PROFILE_EDITS = [
    (lambda f: edited(f, "quality", "gamma", lambda g: g[::-1]), "gamma of the quality expert must increase strictly"),
    (lambda f: edited(f, "likelihood", "loss", lambda v: np.where(np.arange(len(v)) == 3, np.nan, v)),
     "loss of the likelihood expert must be finite numbers, but row"),
    (lambda f: edited(f, "quality", "loss", lambda v: -v), "loss of the quality expert is a mean squared error, >= 0"),
    (lambda f: edited(f, "quality", "standard_error", lambda v: -v), "standard_error of the quality expert must be >= 0"),
    (lambda f: edited(f, "likelihood", "standard_error", lambda v: v * np.inf), "standard_error of the likelihood expert must be finite"),
    (lambda f: edited(f, "quality", "images", lambda v: 0 * v), "images of the quality expert must be positive whole counts"),
    (lambda f: f.drop(columns="difference_standard_error"), "lacks column(s) ['difference_standard_error']"),
    (lambda f: f[f["role"] == "quality"], "holds rows of the roles ['likelihood', 'quality']"),
    (lambda f: edited(f, "quality", "expert", lambda v: np.where(np.arange(len(v)) == 0, "other", v)), "name 2 experts"),
    (lambda f: edited(f, "quality", "gamma", lambda g: g + 1), "outside its range"),
    (lambda f: f.assign(eta_min=0.2), "eta_min 0.2 (the ranges give 0.0394"),
    (lambda f: f.assign(shard=1, shards=2), "is shard 1 of 2 of a loss profile; combine the shards"),
]


@pytest.mark.parametrize("edit, words", PROFILE_EDITS)
def test_auto_switch_refuses_an_edited_loss_profile(tmp_path, edit, words):
    profile = tmp_path / "profile.csv"
    edit(profile_frame()).to_csv(profile, index=False)
    fails(tmp_path / "out" / "auto.json", "auto-switch", "--profile", profile, words=[str(profile), words])


def test_a_one_image_shard_has_no_standard_error_and_is_read(tmp_path):
    frame = profile_frame(images=1).assign(standard_error=np.nan, difference_standard_error=np.nan)
    frame.to_csv(tmp_path / "one.csv", index=False)
    read_loss_profile(tmp_path / "one.csv", whole=False)
    frame.assign(images=2).to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(ValueError, match="standard_error of the likelihood expert must be finite"):
        read_loss_profile(tmp_path / "two.csv", whole=False)


def test_every_profile_reader_checks_the_file(tiny, results, tmp_path):
    profile = tmp_path / "profile.csv"
    edited(profile_frame(), "likelihood", "loss", lambda v: v * np.nan).to_csv(profile, index=False)
    words = [str(profile), "loss of the likelihood expert must be finite"]
    fails(tmp_path / "out" / "f.png", "figure-loss-profile", "--profile", profile, words=words)
    fails(tmp_path / "out" / "p.csv", "predict-vlb", "--profile", profile, "--data", tiny / "splits.npz", "--etas", "0.3",
          words=words)
    fails(tmp_path / "out" / "s.md", *repeated(results)["summary"], "--profile", profile, words=words)


# ----------------------------------------------------------------------------
# Auto-switch files.


def switches(ranges=None, etas=(0.3,), **change) -> dict:
    ranges = ranges or {"likelihood": LIKELIHOOD, "quality": QUALITY}
    gamma_0, gamma_1 = min(lo for lo, _ in ranges.values()), max(hi for _, hi in ranges.values())
    chosen = {"switch_etas": list(etas), "switch_gammas": [gamma_0 + eta * (gamma_1 - gamma_0) for eta in etas],
              "excess_bpd": 0.0, "standard_error_bpd": 0.0,
              "experts": [("likelihood", "quality")[k % 2] for k in range(len(etas) + 1)], "names": dict(NAMES),
              "gamma_0": gamma_0, "gamma_1": gamma_1, "images": 10}
    chosen.update(change)
    return {key: value for key, value in chosen.items() if value is not None}


def test_auto_switch_writes_a_file_its_readers_accept(tmp_path):
    profile_frame().to_csv(tmp_path / "profile.csv", index=False)
    assert run("auto-switch", "--profile", tmp_path / "profile.csv", "--out", tmp_path / "auto.json").returncode == 0
    roles, etas = read_switches(tmp_path / "auto.json", NAMES, {"likelihood": LIKELIHOOD, "quality": QUALITY})
    assert roles == ["likelihood", "quality"] and len(etas) == 1


@pytest.mark.parametrize("chosen, words", [
    (switches(experts=["quality", "quality"]), "switch 0 has the quality expert on both sides"),
    (switches(experts=None), "lacks the key(s) ['experts']"),
    (switches(experts=["likelihood"]), "one piece more than switches"),
    (switches(experts=["likelihood", "edm"]), "one piece more than switches"),
    (switches(switch_etas="0.3"), "switch_etas must be a list of numbers, got '0.3'"),
    (switches(gamma_0=True), "gamma_0 must be a number"),
    (switches(names=None), "lacks the key(s) ['names']"),
    (switches(etas=(0.5, 0.3, 0.7)), "switch_etas must be finite, strictly increasing"),
    (switches(etas=(0.3, 0.3, 0.7)), "switch_etas must be finite, strictly increasing"),
    (switches(switch_etas=[float("nan")]), "switch_etas must be finite"),
    (switches(switch_gammas=[0.0]), "switch eta 0.3 is gamma -6.68"),
    (switches(etas=(0.01,)), "switch 0 at gamma -13.0794 is outside the quality expert's range"),
    (switches(etas=(0.9,)), "switch 0 at gamma 6.5576 is outside the likelihood expert's range"),
    (switches(names={"quality": "vdm", "likelihood": "edm"}), "was chosen for the experts"),
    (switches(gamma_1=10.0, switch_gammas=[-13.3 + 0.3 * 23.3]), "is not the experts' [-13.3, 8.764]"),
])
def test_an_edited_switches_file_is_refused(tmp_path, chosen, words):
    path = tmp_path / "auto.json"
    path.write_text(json.dumps(chosen))
    with pytest.raises(ValueError, match=re.escape(str(path))) as error:
        read_switches(path, NAMES, {"likelihood": LIKELIHOOD, "quality": QUALITY})
    assert words in str(error.value)


@pytest.mark.parametrize("text, words", [("[1, 2]", "holds a list, not an object"), ("{", "is not an auto-switch JSON file")])
def test_a_switches_file_that_is_not_one_is_refused(tmp_path, text, words):
    (tmp_path / "auto.json").write_text(text)
    with pytest.raises(ValueError, match=words):
        read_switches(tmp_path / "auto.json")


@pytest.mark.parametrize("change, words", [
    ({"experts": ["quality", "quality"]}, "has the quality expert on both sides"),
    ({"experts": None}, "lacks the key(s) ['experts']"),
    ({"etas": (0.95,)}, "outside the likelihood expert's range"),
])
def test_samplers_and_likelihoods_refuse_an_edited_switches_file(tiny, tmp_path, change, words):
    ranges = {"likelihood": (-13.3, 5.0), "quality": get_family("edm").gamma_range}
    etas = change.pop("etas", (0.3,))
    path = tmp_path / "auto.json"
    path.write_text(json.dumps(switches(ranges, etas, **change)))
    experts = ["--quality", tiny / "edm", "--likelihood", tiny / "vdm", "--eta", "auto", "--switches", path]
    fails(tmp_path / "out" / "n.csv", "nll", *experts, "--data", tiny / "splits.npz", "--images", 2,
          words=[str(path), words])


# ----------------------------------------------------------------------------
# Records checked when read.


@pytest.mark.parametrize("name, content, words", [
    ("nll.csv", lambda: pd.DataFrame(nll_rows(range(2))).assign(bpd=np.nan), ["(an NLL shard): column 'bpd' must hold finite"]),
    ("nll.csv", lambda: pd.DataFrame(nll_rows(range(2))).drop(columns="nfe"), ["(an NLL shard) lacks column(s) ['nfe']"]),
    ("vlb.json", lambda: '[{"eta_label": "0.3", "eta": 0.3, "run": 1, "vlb": null}]',
     ["(VLB runs): column 'vlb' must hold finite numbers"]),
    ("fid.json", lambda: pd.DataFrame(fid_rows()).assign(nfe_mean=np.inf), ["(an FID record): column 'nfe_mean'"]),
    ("fid.json", lambda: "not json", ["is not a records JSON file"]),
    ("predicted.csv", lambda: pd.DataFrame([dict(eta_label="0.3", eta=0.3, predicted_vlb=np.nan)]),
     ["(predicted VLBs): column 'predicted_vlb' must hold finite numbers"]),
])
def test_records_are_checked_when_read_naming_the_file(tmp_path, name, content, words):
    path = tmp_path / name
    value = content()
    if isinstance(value, str):
        path.write_text(value)
    elif name.endswith(".json"):
        value.to_json(path, orient="records")
    else:
        value.to_csv(path, index=False)
    with pytest.raises(ValueError, match=re.escape(str(path))) as error:
        tables.load_records(path)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_a_bad_predicted_vlb_stops_table4(results, tmp_path):
    bad = tmp_path / "predicted.csv"
    pd.DataFrame([dict(eta_label=label, eta=eta, predicted_vlb=np.nan) for label, eta in LABELS.items()]).to_csv(bad, index=False)
    fails(tmp_path / "out" / "t.csv", "table", "--table", 4, "--inputs", results / "vlb0.json", "--predicted", bad,
          words=[str(bad), "predicted_vlb"])


def test_records_of_different_kinds_are_not_pooled(results):
    with pytest.raises(ValueError, match=r"of different kinds: .*nll0.csv is an NLL shard, .*vlb0.json is VLB runs"):
        tables.load_records(results / "nll0.csv", results / "vlb0.json")


# ----------------------------------------------------------------------------
# 2. Records say the batch actually solved.


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Barely trained experts and classifier on 6 test digits; reference statistics of their features."""
    root = tmp_path_factory.mktemp("tiny")
    digits = load_digits_splits(seed=0, val_fraction=0.1, test_fraction=0.2)
    splits = {"train": digits["train"][:64], "train_labels": digits["train_labels"][:64], "val": digits["val"][:8],
              "test": digits["test"][:6]}
    save_splits(root / "splits.npz", splits, {})
    for family, (lo, hi) in (("edm", get_family("edm").gamma_range), ("vdm", (-13.3, 5.0))):
        train_expert(family, splits["train"], splits["val"], out_stem=root / family, seed=0, steps=2, batch_size=8,
                     eval_every=2, val_repeats=1, gamma_min=lo, gamma_max=hi)
    save_classifier(root / "classifier", train_classifier(splits["train"], splits["train_labels"], steps=2))
    features = load_feature_network("digits-classifier", root / "classifier")(splits["train"])
    save_statistics(root / "reference.npz", *statistics(features))
    return root


def sample_args(root, seeds, batch):
    return ["sample", "--quality", root / "edm", "--likelihood", root / "vdm", "--eta", "0.3", "--sampler", "ancestral",
            "--steps", 4, "--seeds", seeds, "--batch-size", batch, "--features", root / "classifier"]


def test_solved_batch_sizes():
    assert solved_batch_sizes(359, 400) == [359] * 359
    assert solved_batch_sizes(5, 4) == [4, 4, 4, 4, 1]


def test_nll_records_and_table1_say_the_batch_solved(tiny, tmp_path):
    """6 test images asked for in batches of 400 are one batch of 6: the records and Table 1 say 6, not 400."""
    out = tmp_path / "nll.csv"
    result = run("nll", "--quality", tiny / "edm", "--likelihood", tiny / "vdm", "--eta", "0.3", "--data",
                 tiny / "splits.npz", "--rtol", 1e-2, "--atol", 1e-2, "--batch-size", 400, "--out", out)
    assert result.returncode == 0, result.stderr
    assert (pd.read_csv(out)["batch_size"] == 6).all()
    assert run("table", "--table", 1, "--inputs", out, "--out", tmp_path / "table1.csv").returncode == 0
    assert pd.read_csv(tmp_path / "table1.csv")["NFE batch"].tolist() == [6]


def test_sample_shards_and_fid_say_the_largest_batch_solved(tiny, tmp_path):
    from expertmerge.shards import load_shard

    for name, seeds in (("a", "0:3"), ("b", "3:8")):  # batches of 3, and of 4 and 1
        result = run(*sample_args(tiny, seeds, 4), "--out", tmp_path / f"{name}.npz")
        assert result.returncode == 0, result.stderr
    records = [load_shard(tmp_path / f"{name}.npz")["record"] for name in "ab"]
    assert [(r["batch_size"], r["batch_limit"]) for r in records] == [(3, 4), (4, 4)]
    result = run("fid", "--reference", tiny / "reference.npz", "--seed-groups", 2, "--shards", tmp_path / "a.npz",
                 tmp_path / "b.npz", "--out", tmp_path / "fid.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "fid.json").read_text())[0]["batch_size"] == 4
    other = run(*sample_args(tiny, "3:8", 5), "--out", tmp_path / "c.npz")  # another --batch-size: not one setting
    assert other.returncode == 0, other.stderr
    fails(tmp_path / "out" / "fid.json", "fid", "--reference", tiny / "reference.npz", "--seed-groups", 2,
          "--shards", tmp_path / "a.npz", tmp_path / "c.npz", words=["differ in batch_limit (4 vs 5)"])


def test_vlb_records_say_the_batch_solved(tiny, tmp_path):
    out = tmp_path / "vlb.json"
    result = run("vlb", "--quality", tiny / "edm", "--likelihood", tiny / "vdm", "--eta", "0.3", "--data",
                 tiny / "splits.npz", "--runs", 1, "--batch-size", 400, "--out", out)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())[0]["batch_size"] == 6
