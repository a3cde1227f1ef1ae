"""No silent wrong results (issue 15): input that would give a finished-looking but wrong file fails
before any work, with one clear line and nothing at --out. Images that do not fit the expert; FID
shards that are not one sampler's and eta's seeds 0..N-1; shard numbers and counts out of range;
--out names the command would not write; splits, statistics and shards that are not what they should be.
"""
import hashlib
import json
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from conftest import gaussian_data
from expertmerge.commands import _test_shard
from expertmerge.datasets import load_digits_splits, save_splits, split_images
from expertmerge.experts import GaussianExpert
from expertmerge.experts.registry import get_family
from expertmerge.frechet import load_statistics, save_statistics
from expertmerge.likelihood import ode_nll, vlb, vlb_runs
from expertmerge.loss_profile import loss_profile, loss_profile_of_data
from expertmerge.merge import eta_range, switch
from expertmerge.shards import load_shard, save_sample_shard
from expertmerge.train_expert import train_expert

BIN = Path(sys.executable).parent / "expertmerge"
RECORD = {"eta_label": "0.5", "eta": 0.5, "switch_eta": 0.5, "gamma_min": -13.3, "gamma_max": 8.764,
          "sampler": "ancestral", "steps": 16, "clip_denoised": False, "batch_size": 10}


def images(count, shape=(8, 8, 1), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two experts of 1x8x8 digits trained for 2 steps; splits of digits, of 16x16 and 8x8x3 images and with an
    empty split; three FID shards of seeds 0:10, 10:20, 20:30 and their reference statistics."""
    root = tmp_path_factory.mktemp("bad_input")
    digits = load_digits_splits(seed=0, val_fraction=0.1, test_fraction=0.2)
    save_splits(root / "digits.npz", {name: digits[name][:12] for name in ("train", "val", "test")})
    for family, (lo, hi) in (("edm", get_family("edm").gamma_range), ("vdm", (-13.3, 5.0))):
        train_expert(family, digits["train"][:16], digits["val"][:4], out_stem=root / family, seed=0, steps=2,
                     batch_size=8, eval_every=2, val_repeats=1, gamma_min=lo, gamma_max=hi)
    save_splits(root / "wide.npz", {"train": images(4, (16, 16, 1)), "test": images(6, (16, 16, 1))})
    save_splits(root / "rgb.npz", {"train": images(4, (8, 8, 3)), "test": images(6, (8, 8, 3))})
    save_splits(root / "empty.npz", {"train": images(4), "val": images(0), "test": images(6)})
    features = np.random.default_rng(1).normal(size=(60, 6)).astype(np.float32)
    save_statistics(root / "reference.npz", features[30:].mean(0), np.cov(features[30:], rowvar=False))
    for k in range(3):
        seeds = np.arange(10 * k, 10 * k + 10)
        save_sample_shard(root / f"s{k}.npz", images=images(10, seed=k), seeds=seeds, nfe=np.full(10, 16),
                          features=features[seeds], record=RECORD)
    (root / "text.npz").write_text("not an archive\n")
    return root


def fails(out, *args, words):
    """Run `expertmerge *args --out out`: it must fail with one line on stderr holding `words`, and write nothing."""
    out = Path(out)
    result = subprocess.run([str(BIN), *map(str, args), "--out", str(out)], capture_output=True, text=True)
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(word in result.stderr for word in words), result.stderr
    assert not out.parent.exists() or not list(out.parent.iterdir()), list(out.parent.iterdir())


def experts(root, eta="0.5"):
    return ["--quality", root / "edm", "--likelihood", root / "vdm", "--eta", eta]


# 1. Images that do not fit the expert.

@pytest.mark.parametrize("command, data, eta, words", [
    ("nll", "wide", "0.5", ["the images are 1x16x16 (C x H x W)", "works on 1x8x8 images"]),
    ("vlb", "wide", "0.5", ["the images are 1x16x16 (C x H x W)", "works on 1x8x8 images"]),
    ("nll", "rgb", "edm", ["the images are 3x8x8 (C x H x W)", "works on 1x8x8 images"]),
    ("loss-profile", "wide", None, ["the images are 1x16x16", "the quality expert edm works on 1x8x8 images"]),
])
def test_images_that_do_not_fit_the_expert_are_refused(tiny, tmp_path, command, data, eta, words):
    common = ["--data", tiny / f"{data}.npz", "--threads", 1]
    args = {"nll": [*experts(tiny, eta), *common, "--rtol", 1e-2, "--atol", 1e-2],
            "vlb": [*experts(tiny, eta), *common, "--runs", 1],
            "loss-profile": [*experts(tiny)[:4], *common, "--split", "test", "--points", 4]}[command]
    fails(tmp_path / "out" / "result", command, *args, words=words)


def test_the_library_checks_the_image_shape_of_an_expert_and_of_a_merge():
    mean, cov = gaussian_data()  # an expert of 1x2x2 data
    likelihood = GaussianExpert(mean, cov, gamma_min=-13.3, gamma_max=5.0)
    quality = GaussianExpert(mean, cov, gamma_min=-10.0, gamma_max=8.764)
    likelihood.image_shape = quality.image_shape = (1, 2, 2)
    merged = switch(quality, likelihood, sum(eta_range(quality, likelihood)) / 2)
    assert merged.image_shape == (1, 2, 2)
    wrong = images(2, (4, 4, 1))
    message = r"the images are 1x4x4 \(C x H x W\) but the expert works on 1x2x2 images"
    for expert in (likelihood, merged):
        for call in (lambda: ode_nll(expert, wrong), lambda: vlb(expert, wrong), lambda: vlb_runs(expert, wrong, runs=2),
                     lambda: loss_profile(expert, wrong, [-5.0, 0.0]),
                     lambda: loss_profile_of_data(expert, np.zeros((2, 3, 2, 2), np.float32), [0.0])):
            with pytest.raises(ValueError, match=message.replace("1x4x4", "(1x4x4|3x2x2)")):
                call()
    assert ode_nll(merged, images(2, (2, 2, 1)), rtol=1e-2, atol=1e-2).bpd.isfinite().all()  # the right shape runs
    quality.image_shape = (3, 2, 2)
    with pytest.raises(ValueError, match=r"different shapes 1x2x2, 3x2x2 \(C x H x W\)"):
        switch(quality, likelihood, sum(eta_range(quality, likelihood)) / 2)


# 2. FID's shards: one sampler and eta, seeds 0..N-1 each once, in any order.

def test_fid_is_the_same_for_any_order_of_its_shards(tiny, tmp_path):
    outputs = []
    for k, order in enumerate(([0, 1, 2], [2, 0, 1], [1, 2, 0])):
        out = tmp_path / f"fid{k}.json"
        args = ["fid", "--reference", tiny / "reference.npz", "--seed-groups", 3, "--shards",
                *(tiny / f"s{i}.npz" for i in order), "--out", out]
        result = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    assert json.loads(outputs[0])[0]["num_samples"] == 30


def shard_with(root, name, **record):
    with np.load(root / "s1.npz") as shard:
        arrays = {key: shard[key] for key in ("images", "seeds", "nfe", "features")}
    save_sample_shard(root / name, **arrays, record={**RECORD, **record})
    return root / name



def test_an_ode_fid_records_its_tolerances(tiny, tmp_path):
    """An adaptive ODE's FID means nothing without its rtol/atol (before: the FID record left them out)."""
    ode = {"sampler": "ode", "rtol": 1e-3, "atol": 1e-4, "error_norm": "batch-rms"}
    with np.load(tiny / "s0.npz") as first:
        save_sample_shard(tmp_path / "ode0.npz", **{key: first[key] for key in ("images", "seeds", "nfe", "features")},
                          record={**RECORD, **ode})
    out = tmp_path / "fid.json"
    result = subprocess.run([str(BIN), "fid", "--reference", str(tiny / "reference.npz"), "--seed-groups", "2",
                             "--shards", str(tmp_path / "ode0.npz"), "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())[0]
    assert (record["rtol"], record["atol"], record["error_norm"]) == (1e-3, 1e-4, "batch-rms")

@pytest.mark.parametrize("shards, words", [
    (["s0", "s0", "s1"], ["the shards overlap: seed 0 is in each of", "s0.npz, ", "s0.npz (10 seeds repeat; a file is given twice)"]),
    (["s0", "s2"], ["must be seeds 0..19", "10 of those are missing (the first 10)", "s2.npz hold(s) seeds outside"]),
    (["s1", "s2"], ["must be seeds 0..19", "10 of those are missing (the first 0)", "s2.npz hold(s) seeds outside"]),
    (["s0", "eta", "s2"], ["not of one sampler and eta", "s0.npz and ", "eta.npz differ in eta (0.5 vs 0.7), eta_label ('0.5' vs '0.7')"]),
    (["s0", "sampler", "s2"], ["not of one sampler and eta", "sampler.npz differ in sampler ('ancestral' vs 'ode')"]),
    (["s0", "text", "s2"], ["text.npz is not a .npz file"]),
    (["s0", "reference", "s2"], ["reference.npz is missing the array(s) features, nfe, seeds, record of a sample shard"]),
])
def test_fid_refuses_shards_that_are_not_one_set_of_seeds(tiny, tmp_path, shards, words):
    shard_with(tiny, "eta.npz", eta_label="0.7", eta=0.7, switch_eta=0.7)
    shard_with(tiny, "sampler.npz", sampler="ode")
    fails(tmp_path / "out" / "fid.json", "fid", "--reference", tiny / "reference.npz", "--seed-groups", 2,
          "--shards", *(tiny / f"{name}.npz" for name in shards), words=words)


@pytest.mark.parametrize("reference, words", [
    ("s0", ["s0.npz is missing the array(s) mu, sigma of FID reference statistics; it holds images, seeds"]),
    ("text", ["text.npz is not a .npz file"]),
])
def test_fid_refuses_a_reference_that_is_not_statistics(tiny, tmp_path, reference, words):
    fails(tmp_path / "out" / "fid.json", "fid", "--reference", tiny / f"{reference}.npz", "--seed-groups", 2,
          "--shards", tiny / "s0.npz", words=words)


def test_statistics_and_shards_that_are_not_npz_files_name_the_file(tiny, tmp_path):
    np.save(tmp_path / "array.npy", np.zeros(3))
    for path, what in ((tiny / "text.npz", "not a .npz file"), (tmp_path / "array.npy", "a single .npy array"),
                       (tiny / "digits.npz", "is missing the array(s) mu, sigma")):
        with pytest.raises(ValueError, match=f"{re.escape(path.name)}.*{re.escape(what)}"):
            load_statistics(path)
    with pytest.raises(ValueError, match=r"digits.npz is missing the array\(s\) seeds, record of a sample shard"):
        load_shard(tiny / "digits.npz", "seeds")
    (tmp_path / "cut.npz").write_bytes((tiny / "s0.npz").read_bytes()[:200])  # a zip cut short
    with pytest.raises(ValueError, match=r"cut.npz is not a readable .npz file, as a sample shard must be"):
        load_shard(tmp_path / "cut.npz", "seeds")


# 3. Shard numbers and counts.

@pytest.mark.parametrize("command, change, words", [
    ("nll", ["--shard", 3, "--shards", 3], ["--shard must be in 0..2 for --shards 3, got 3"]),
    ("nll", ["--shards", 500, "--images", 10], ["--shards must be in 1..10", "got 500"]),
    ("nll", ["--images", 13], ["--images 13 is more than the 12 images of split 'test'"]),
    ("nll", ["--images", 10, "--shards", 6, "--shard", 5], ["10 images in 6 equal shards of 2 leave the last 1 empty"]),
    ("loss-profile", ["--shards", 500, "--images", 10], ["--shards must be in 1..10", "selected images), got 500"]),
    ("loss-profile", ["--shard", 3, "--shards", 3], ["--shard must be in 0..2 for --shards 3, got 3"]),
])
def test_shards_out_of_range_are_refused(tiny, tmp_path, command, change, words):
    args = {"nll": [*experts(tiny), "--rtol", 1e-2, "--atol", 1e-2],
            "loss-profile": [*experts(tiny)[:4], "--split", "test", "--points", 4]}[command]
    fails(tmp_path / "out" / "result.csv", command, *args, "--data", tiny / "digits.npz", *change, words=words)


def test_a_negative_shard_is_refused_in_the_library(tiny):
    args = Namespace(data=tiny / "digits.npz", split="test", images=None, shard=-1, shards=1)
    with pytest.raises(ValueError, match=r"--shard must be in 0..0 for --shards 1, got -1"):
        _test_shard(args)


# 4. A figure grid of more samples than the shards hold.

def test_figure_grid_refuses_more_samples_than_the_shards_hold(tiny, tmp_path):
    fails(tmp_path / "out" / "grid.png", "figure-grid", "--kind", "samples", "--count", 500, "--shards",
          tiny / "s0.npz", tiny / "s1.npz", words=["--count 500 is more than the shards hold", "s0.npz has 10 samples"])


# 5. --out names a file the command would not write.

@pytest.mark.parametrize("suffix, args", [
    (".png", ["figure-tradeoff", "--nll", "n.csv", "--vlb", "v.json", "--fid", "f.json"]),
    (".png", ["figure-grid", "--kind", "samples", "--count", 2, "--shards", "s0.npz"]),
    (".png", ["figure-loss-profile", "--profile", "p.csv"]),
    (".png", ["figure-predicted-vlb", "--vlb", "v.json", "--predicted", "p.csv"]),
    (".png", ["figure-fid-vs-nfe", "--fid", "f.json", "--etas", "0.5"]),
    (".csv", ["table", "--table", 1, "--inputs", "n.csv"]),
    (".csv", ["paper-table", "--table", 1, "--dataset", "digits", "n.csv"]),
    (".csv", ["literature-table", "--table", 3, "--nll", "cifar10", "n.csv", "--vlb", "cifar10", "v.json", "--fid",
              "cifar10", "f.json"]),
])
def test_figures_and_tables_refuse_an_out_of_another_kind(tmp_path, suffix, args):
    for name in ("g.txt", "g.pdf" if suffix == ".png" else "g.md", "g") if args[0] in ("figure-grid", "table") else ("g.txt",):
        fails(tmp_path / "out" / name, *args, words=[f"--out must end in {suffix}", f"got {tmp_path / 'out' / name}"])


# 6. Splits that are not there or empty.

@pytest.mark.parametrize("command, data, split, words", [
    ("nll", "digits", "nosuch", ["digits.npz' has no split 'nosuch'; it holds the splits train, val, test"]),
    ("nll", "empty", "val", ["split 'val' of ", "empty.npz' holds no images; use one of train, test"]),
    ("vlb", "wide", "val", ["wide.npz' has no split 'val'; it holds the splits train, test"]),
    ("loss-profile", "digits", "train_labels", ["has no split 'train_labels'"]),
    ("reference-stats", "empty", "val", ["holds no images"]),
])
def test_a_split_that_is_not_there_or_empty_is_refused(tiny, tmp_path, command, data, split, words):
    args = {"nll": experts(tiny), "vlb": [*experts(tiny), "--runs", 1], "loss-profile": [*experts(tiny)[:4], "--points", 4],
            "reference-stats": ["--features", tiny / "classifier"]}[command]
    fails(tmp_path / "out" / "result", command, *args, "--data", tiny / f"{data}.npz", "--split", split, words=words)


def test_split_images_names_the_file_and_its_splits(tiny):
    assert split_images(tiny / "digits.npz", "val").shape == (12, 8, 8, 1)
    with pytest.raises(ValueError, match=r"digits.npz' has no split 'nosuch'; it holds the splits train, val, test"):
        split_images(tiny / "digits.npz", "nosuch")
    with pytest.raises(ValueError, match=r"split 'val' of .*empty.npz' holds no images"):
        split_images(tiny / "empty.npz", "val")


# A broken expert: every command that runs it stops, naming the expert, the images and the noise level.

@pytest.mark.parametrize("sampler", ["ode", "ancestral", "heun"])
def test_a_nan_expert_stops_every_sampler_with_one_line(tiny, tmp_path, sampler):
    import shutil

    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "experts"
    broken.mkdir()
    for name in ("edm", "vdm"):
        for suffix in (".safetensors", ".json"):
            shutil.copy(tiny / f"{name}{suffix}", broken / f"{name}{suffix}")
    weights = load_file(str(broken / "vdm.safetensors"))
    weights = {key: np.full_like(value, np.nan) if value.dtype.kind == "f" else value for key, value in weights.items()}
    save_file(weights, str(broken / "vdm.safetensors"))
    record = json.loads((broken / "vdm.json").read_text())  # record the NaN weights' digest: they load, then fail
    record["weights_sha256"] = hashlib.sha256((broken / "vdm.safetensors").read_bytes()).hexdigest()
    (broken / "vdm.json").write_text(json.dumps(record))
    steps = [] if sampler == "ode" else ["--steps", 4]
    fails(tmp_path / "out" / "shard.npz", "sample", *experts(broken), "--sampler", sampler, *steps, "--seeds", "3:5",
          "--features", tiny / "edm", "--features-kind", "digits-classifier",
          words=["FloatingPointError", "of the expert vdm", "is NaN or Inf for images [3, 4] at noise level"])
