"""The `expertmerge` command: clear errors, and a killed job leaves no finished-looking output."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from expertmerge.datasets import load_digits_splits, save_splits
from expertmerge.fid import save_classifier, train_classifier
from expertmerge.noise import edm_gamma_range
from expertmerge.training import train_expert

BIN = Path(sys.executable).parent / "expertmerge"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Barely trained experts and classifier: enough to run the commands."""
    root = tmp_path_factory.mktemp("cli")
    splits = load_digits_splits(seed=0, val_fraction=0.1, test_fraction=0.2)
    save_splits(root / "splits.npz", splits, {})
    for family, (lo, hi) in (("edm", edm_gamma_range()), ("vdm", (-13.3, 5.0))):
        train_expert(family, splits["train"], splits["val"], out_stem=root / family, seed=0, steps=2, batch_size=8,
                     eval_every=1, val_repeats=1, gamma_min=lo, gamma_max=hi)
    save_classifier(root / "classifier", train_classifier(splits["train"], splits["train_labels"], steps=2))
    return root


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
