"""What happens when things go wrong (issue 15): a broken expert stops every sampler with one message,
the CLI answers every expected failure with one line (the traceback only with --debug), checks come
before work, killed jobs leave nothing behind that a re-run trips over."""
import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from expertmerge.experts import GaussianExpert
from expertmerge.files import atomic_path, write_text
from expertmerge.merge import switch
from expertmerge.configuration import check_config
from expertmerge.pipeline import ConfigError
from expertmerge.sampling import sample_ancestral, sample_heun, sample_ode

from conftest import gaussian_data

BIN = Path(sys.executable).parent / "expertmerge"
REPO = Path(__file__).resolve().parents[1]
SHAPE = (1, 2, 2)


class BrokenBelow(GaussianExpert):
    """An exact Gaussian expert whose output is NaN below a noise level."""

    name = "broken"

    def __init__(self, gamma_broken, *args):
        super().__init__(*args)
        self.gamma_broken = gamma_broken

    def _denoise(self, x, s):
        out = super()._denoise(x, s)
        out[2 * torch.log(s) < self.gamma_broken] = math.nan
        return out


@pytest.mark.parametrize("sampler", [sample_ode, sample_heun, sample_ancestral], ids=["ode", "heun", "ancestral"])
def test_every_sampler_refuses_a_nan_expert_naming_it_the_images_and_the_noise_level(sampler):
    mean, cov = gaussian_data()
    good = GaussianExpert(mean, cov, -12.43, 8.764)
    broken = BrokenBelow(-5.0, mean, cov, -13.3, 5.0)
    with pytest.raises(FloatingPointError, match=r"of the expert broken \(gamma in \[-13.3, 5\]\) is NaN or Inf for "
                                                 r"images \[7, 8, 9\] at noise level s=.* \(gamma=-"):
        sampler(switch(good, broken, 0.5), [7, 8, 9], SHAPE)


def run(*args):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)


def one_line_error(result, *words):
    """A failed command: non-zero exit, exactly one line on stderr at level ERROR, no traceback."""
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert result.returncode != 0 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(word in errors[0] for word in words), errors[0]
    return errors[0]


@pytest.mark.parametrize("flag, value, words", [
    ("--batch-size", "0", ["--batch-size", "must be a positive integer"]),
    ("--shards", "0", ["--shards", "must be a positive integer"]),
    ("--shard", "-1", ["--shard", "must be an integer >= 0"]),
    ("--rtol", "abc", ["--rtol"]),
])
def test_bad_numbers_are_refused_by_the_parser_with_what_is_allowed(tmp_path, flag, value, words):
    args = ["nll", "--quality", "q", "--likelihood", "l", "--eta", "0.5", "--data", "d.npz", "--out", tmp_path / "o.csv"]
    result = run(*args, flag, value)
    assert result.returncode == 2 and all(word in result.stderr for word in words), result.stderr
    assert not (tmp_path / "o.csv").exists()


def test_an_unwritable_output_is_found_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run("dataset", "--source", "sklearn-digits", "--out", blocker / "splits.npz")
    one_line_error(result, "cannot write the output", str(blocker))


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    stem = tmp_path / "expert"
    (tmp_path / "expert.json").write_text(json.dumps({"format": "expertmerge-expert", "version": 1}))
    result = run("sample", "--quality", stem, "--likelihood", stem, "--eta", "0.5", "--sampler", "heun",
                 "--seeds", "0:2", "--features", stem, "--out", tmp_path / "s.npz")
    one_line_error(result)
    debug = run("sample", "--quality", stem, "--likelihood", stem, "--eta", "0.5", "--sampler", "heun",
                "--seeds", "0:2", "--features", stem, "--out", tmp_path / "s.npz", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_a_checkpoint_with_a_negative_noise_level_is_named(tmp_path):
    from expertmerge.experts.checkpoint import FORMAT, VERSION, load_expert_meta

    meta = {"format": FORMAT, "version": VERSION, "family": "edm", "sigma_min": -0.002, "sigma_max": 80.0}
    (tmp_path / "e.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"e.json.*0 < sigma_min < sigma_max.*sigma_min=-0.002"):
        load_expert_meta(tmp_path / "e")


def digits_config():
    return copy.deepcopy(yaml.safe_load((REPO / "config.yaml").read_text()))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["nll"].update(shards=400), r"nll.shards \(400\) exceeds the 359 test images"),
    (lambda d: d["loss_profile"].update(shards=181), r"loss_profile.shards \(181\) exceeds its 180 images"),
    (lambda d: d["loss_profile"].update(split="train", images=5000), r"loss_profile.images \(5000\) exceeds the 1258"),
])
def test_shard_counts_are_checked_against_the_images_before_any_job(change, message):
    config = digits_config()
    change(config["experiments"]["digits"])
    with pytest.raises(ConfigError, match=message):
        check_config(config)


def test_the_paper_config_passes_the_shard_checks():
    check_config(digits_config())


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "table.csv"
    stale = tmp_path / ".table.csv.abc123.partial.csv"  # what atomic_path leaves when its job is SIGKILLed
    stale.write_text("half")
    other = tmp_path / ".other.csv.x.partial.csv"
    other.write_text("another target's")
    write_text(target, "done\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.csv.x.partial.csv", "table.csv"]
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:  # a failed write leaves nothing new
        temporary.write_text("partial")
        raise RuntimeError("killed")
    assert target.read_text() == "done\n" and len(list(tmp_path.iterdir())) == 2
