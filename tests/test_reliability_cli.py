"""Issue 21, the CLI's share: an --out that is a device, FIFO or folder is refused and left as it was; a full disk
names the file it could not write; every number has a finite, meaningful range; an .npz is checked before it is
read (a zip bomb, a forged header, a 3-D split, Inf features); images the FID features cannot take are refused
before any sampling. Every refusal is one line naming what is wrong."""
import argparse
import contextlib
import errno
import io
import json
import logging
import math
import os
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import gaussian_data
from expertmerge import cli
from expertmerge.datasets import load_digits_splits, load_splits, save_splits
from expertmerge.experts import GaussianExpert
from expertmerge.experts.registry import get_family
from expertmerge.features import save_classifier, train_classifier
from expertmerge.files import atomic_path, write_text
from expertmerge.frechet import FrechetReference, save_statistics
from expertmerge.likelihood import ode_nll
from expertmerge.sampling import sample_ode
from expertmerge.shards import load_shard, save_sample_shard
from expertmerge.train_expert import train_expert

BIN = Path(sys.executable).parent / "expertmerge"
RECORD = {"eta_label": "0.5", "eta": 0.5, "sampler": "ancestral", "steps": 16}


def run(*args, timeout=120):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def one_line(result, *words):
    """A refused command: non-zero exit, one line on stderr (no traceback) holding every word."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


def uint8_images(count, shape=(8, 8, 1), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Digits splits, a classifier, FID statistics and one shard; experts of 1x16x16 images (not the classifier's)."""
    root = tmp_path_factory.mktemp("reliability_cli")
    digits = load_digits_splits(seed=0, val_fraction=0.1, test_fraction=0.2)
    save_splits(root / "digits.npz", {name: digits[name][:12] for name in ("train", "val", "test")})
    save_classifier(root / "classifier", train_classifier(digits["train"], digits["train_labels"], steps=2))
    wide = {"train": uint8_images(16, (16, 16, 1)), "test": uint8_images(6, (16, 16, 1))}
    save_splits(root / "wide.npz", wide)
    for family, (lo, hi) in (("edm", get_family("edm").gamma_range), ("vdm", (-13.3, 5.0))):
        train_expert(family, wide["train"], wide["train"][:4], out_stem=root / f"wide_{family}", seed=0, steps=2,
                     batch_size=8, eval_every=2, val_repeats=1, gamma_min=lo, gamma_max=hi)
    features = np.random.default_rng(1).normal(size=(40, 6)).astype(np.float32)
    save_statistics(root / "reference.npz", features[20:].mean(0), np.cov(features[20:], rowvar=False))
    save_sample_shard(root / "s0.npz", images=uint8_images(20), seeds=np.arange(20), nfe=np.full(20, 16),
                      features=features[:20], record=RECORD)
    return root


def fid_args(tiny, out, reference=None, shard=None):
    return ["fid", "--reference", reference or tiny / "reference.npz", "--seed-groups", 2, "--shards",
            shard or tiny / "s0.npz", "--out", out]


# 1. --out at a device, a FIFO, a folder: refused before any work, and left as it was.

def special_files(folder: Path) -> dict:
    """A FIFO, a character device like /dev/null (skipped where mknod is not allowed), a folder, and a symlink to
    the FIFO, each named as a splits .npz."""
    made = {}
    os.mkfifo(folder / "fifo.npz")
    made["a FIFO"] = folder / "fifo.npz"
    try:
        os.mknod(folder / "null.npz", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        made["a character device"] = folder / "null.npz"
    except (PermissionError, OSError):
        pass
    (folder / "folder.npz").mkdir()
    made["a directory"] = folder / "folder.npz"
    (folder / "link.npz").symlink_to(folder / "fifo.npz")
    made["a symlink to a FIFO"] = folder / "link.npz"
    return made


def state(path: Path):
    info = os.lstat(path)
    return stat.S_IFMT(info.st_mode), info.st_rdev, info.st_ino


def test_an_out_that_is_not_a_regular_file_is_refused_and_left_as_it_was(tmp_path):
    made = special_files(tmp_path)
    if "a character device" not in made:
        pytest.skip("mknod is not allowed here (not root?)")
    before = {path: state(path) for path in made.values()}
    for kind, path in made.items():
        one_line(run("dataset", "--source", "sklearn-digits", "--out", path, timeout=60), f"--out {path} is {kind}",
                 "not a regular file")
    assert {path: state(path) for path in made.values()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in made.values())  # nothing new


def test_a_special_file_beside_out_is_refused_before_any_work(tmp_path):
    os.mkfifo(tmp_path / "splits.json")  # the JSON that `dataset` writes beside its .npz
    one_line(run("dataset", "--source", "sklearn-digits", "--out", tmp_path / "splits.npz"),
             f"{tmp_path / 'splits.json'}, written beside --out, is a FIFO")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "splits.json").st_mode) and len(list(tmp_path.iterdir())) == 1


def test_atomic_path_refuses_a_special_file_before_and_at_the_rename(tmp_path):
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match=r"fifo.csv is a FIFO \(named pipe\), not a regular file"):
        write_text(fifo, "x\n")
    late = tmp_path / "late.csv"
    with pytest.raises(OSError, match=r"late.csv is a FIFO"), atomic_path(late) as temporary:
        temporary.write_text("done\n")
        os.mkfifo(late)  # appears while the output is being written
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_ISFIFO(os.lstat(late).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.csv", "late.csv"]  # no temporary left


@contextlib.contextmanager
def small_file_system(folder, options):
    """`folder` as a tmpfs mounted with `options` (skipped where mounting is not allowed)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # a failed writer's handle may still be open


def test_a_read_only_out_folder_is_one_line_before_any_work(tmp_path):
    with small_file_system(tmp_path / "results", "ro,size=1m") as folder:
        one_line(run("dataset", "--source", "sklearn-digits", "--out", folder / "digits" / "splits.npz"),
                 f"cannot write the output {folder / 'digits' / 'splits.npz'}: Read-only file system in {folder}")


# 2. A full disk names the file it could not write.

def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_the_output(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(OSError, match=rf"cannot write {tmp_path / 'table.csv'}: No space left on device") as caught:
        write_text(tmp_path / "table.csv", "x\n")
    assert caught.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_from_the_cli_naming_the_output(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(np, "savez", no_space)
    out = tmp_path / "out" / "splits.npz"
    with caplog.at_level(logging.ERROR, logger="expertmerge"):
        assert cli.main(["dataset", "--source", "sklearn-digits", "--out", str(out)]) == 1
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"cannot write {out}: No space left on device" in errors[0], errors
    assert list(out.parent.iterdir()) == []


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a 64 KiB file system (a tmpfs; skipped where mounting is not allowed)."""
    with small_file_system(tmp_path / "full", "size=64k") as folder:
        yield folder


def test_a_really_full_disk_names_the_output_whatever_the_writer(full_disk):
    import torch
    from safetensors.torch import save_file

    one_line(run("dataset", "--source", "sklearn-digits", "--out", full_disk / "splits.npz"),
             f"cannot write {full_disk / 'splits.npz'}: No space left on device")
    for name, write in (("state.pt", lambda temporary: torch.save(torch.zeros(10**5), temporary)),
                        ("expert.safetensors", lambda temporary: save_file({"w": torch.zeros(10**5)}, str(temporary)))):
        with pytest.raises(OSError, match=f"cannot write {full_disk / name}: No space left on device") as caught, \
                atomic_path(full_disk / name) as temporary:
            write(temporary)
        assert caught.value.errno == errno.ENOSPC
    assert list(full_disk.iterdir()) == []


def test_an_error_about_another_file_inside_the_write_is_left_alone(tmp_path):
    with pytest.raises(FileNotFoundError, match="input.csv"), atomic_path(tmp_path / "out.csv"):
        open(tmp_path / "input.csv")


# 3. Every number has a finite, meaningful range.

EXPERTS = ["--quality", "q", "--likelihood", "l", "--eta", "0.5"]
SAMPLE = ["sample", *EXPERTS, "--sampler", "ode", "--seeds", "0:4", "--features", "f", "--out", "o.npz"]
NLL = ["nll", *EXPERTS, "--data", "d.npz", "--out", "o.csv"]
TRAIN = ["train-expert", "--family", "edm", "--data", "d.npz", "--gamma-min=-12", "--gamma-max", "8", "--steps", "1",
         "--batch-size", "1", "--lr", "1e-3", "--ema-decay", "0.5", "--eval-every", "1", "--seed", "0", "--out", "e"]
PROFILE = ["loss-profile", "--quality", "q", "--likelihood", "l", "--data", "d.npz", "--points", "4", "--out", "p.csv"]
SUMMARY = ["summary", "--nll", "n", "--vlb", "v", "--fid", "f", "--out", "s.md"]


def with_flag(args, flag, *values):
    """`args` with `flag` set to `values` (replaced if present, else added)."""
    args = list(args)
    if flag in args:
        del args[args.index(flag):args.index(flag) + 2]
    return [*args, flag, *values]


@pytest.mark.parametrize("args, flag, value, allowed", [
    (SAMPLE, "--rtol", "1e-300", "must be a number in [1e-10, 1], got 1e-300"),
    (SAMPLE, "--atol", "inf", "must be a number in [1e-10, 1], got inf"),
    (NLL, "--rtol", "nan", "must be a number in [1e-10, 1], got nan"),
    (NLL, "--atol", "2", "must be a number in [1e-10, 1], got 2"),
    (["dataset", "--out", "s.npz"], "--val-fraction", "1", "must be a number in (0, 1), got 1"),
    (["dataset", "--out", "s.npz"], "--test-fraction", "0", "must be a number in (0, 1), got 0"),
    (["fetch", "--source", "s", "--checksum", "c", "--out", "o"], "--timeout", "inf", "[0.001, 86400], got inf"),
    (TRAIN, "--lr", "nan", "must be a number in [1e-10, 1], got nan"),
    (TRAIN, "--ema-decay", "1", "must be a number in [0, 1), got 1"),
    (TRAIN, "--gamma-max", "1e9", "must be a number in [-50, 50], got 1e9"),
    (TRAIN, "--steps", "-3", "must be a positive integer and <= 100000000, got -3"),
    (TRAIN, "--seed", str(2**63), "must be an integer >= 0 and <= 9223372036854775807"),
    (["train-classifier", "--data", "d", "--steps", "1", "--batch-size", "1", "--lr", "1", "--seed", "0", "--out", "c"],
     "--batch-size", "10000000", "must be a positive integer and <= 1000000, got 10000000"),
    (SAMPLE, "--seeds", "0:1000000000000", "at most 10000000 seeds"),
    (SAMPLE, "--threads", "0", "must be a positive integer and <= 4096, got 0"),
    (PROFILE, "--points", "1", "must be an integer >= 2 and <= 100000, got 1"),
    (PROFILE, "--shards", "100000", "must be a positive integer and <= 10000"),
    (NLL, "--images", "0", "must be a positive integer and <= 10000000, got 0"),
    (["fid", "--reference", "r", "--shards", "s", "--out", "f.json"], "--seed-groups", "1", "an integer >= 2"),
    (SUMMARY, "--fid-budget", "nan", "must be a number in [0, 10], got nan"),
    (SUMMARY, "--recommend-fid-budget", "-0.1", "must be a number in [0, 10], got -0.1"),
    (["literature-table", "--table", "3", "--nll", "cifar10", "n", "--vlb", "cifar10", "v", "--fid", "cifar10", "f",
      "--out", "t.csv"], "--recommend-fid-budget", "cifar10=inf", "DELTA of cifar10 must be a number in [0, 10], got inf"),
    (["figure-loss-profile", "--profile", "p", "--out", "f.png"], "--etas", "1.5", "must be a number in [0, 1], got 1.5"),
    (["figure-grid", "--kind", "samples", "--shards", "s", "--out", "g.png"], "--count", "1000000", "<= 10000"),
    (["import-expert", "--input", "i", "--format", "expertmerge", "--family", "edm", "--gamma-min=-12",
      "--gamma-max", "8", "--out", "e"], "--image-shape", "0", "must be a positive integer and <= 4096, got 0"),
    (["train-expert", *TRAIN[1:]], "--network", '{"channels": NaN}', "NaN is not a number JSON allows"),
])
def test_a_number_out_of_its_range_is_refused_by_the_parser(tmp_path, capsys, args, flag, value, allowed):
    values = [value, "8", "8"] if flag == "--image-shape" else [value]
    with pytest.raises(SystemExit) as exit_:
        cli.main(with_flag(args, flag, *values))
    error = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(error.splitlines()) == 1, error
    assert f"argument {flag}: " in error and allowed in error, error


def test_more_values_than_a_flag_may_take_are_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["predict-vlb", "--profile", "p", "--data", "d", "--etas", *map(str, range(65)), "--out", "p.csv"])
    assert "predict-vlb --etas takes at most 64 values, got 65" in capsys.readouterr().err


def test_every_number_of_every_command_has_a_bounded_type():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    loose = [(name, action.option_strings[0]) for name, sub in commands.items() for action in sub._actions
             if action.type in (int, float) and not action.choices]  # a plain int or float takes nan, inf, -1e300
    assert loose == []


def test_the_rtol_that_made_a_nan_noise_level_is_refused_up_front(tmp_path):
    started = time.perf_counter()
    result = run(*SAMPLE[:-1], tmp_path / "o.npz", "--rtol", "1e-300")
    assert result.returncode == 2 and time.perf_counter() - started < 30
    line = one_line(result, "argument --rtol: must be a number in [1e-10, 1], got 1e-300")
    assert "nan" not in line and not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("rtol, atol", [(1e-300, 1e-5), (1e-5, math.inf), (math.nan, 1e-5), (2.0, 1e-5)])
def test_the_library_refuses_tolerances_out_of_range(rtol, atol):
    mean, cov = gaussian_data()
    expert = GaussianExpert(mean, cov, gamma_min=-13.3, gamma_max=8.764)
    expert.image_shape = (1, 2, 2)
    message = r"solver tolerances: [ra]tol must be a number in \[1e-10, 1\]"
    with pytest.raises(ValueError, match=message):
        sample_ode(expert, [0], (1, 2, 2), rtol=rtol, atol=atol)
    with pytest.raises(ValueError, match=message):
        ode_nll(expert, uint8_images(2, (2, 2, 1)), rtol=rtol, atol=atol)


# 4. .npz files are checked before they are read.

def forged_member(shape, dtype="|u1", body=b"\0" * 16) -> bytes:
    """An .npy member whose header declares `shape` but which holds only `body`."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    return header.getvalue() + body


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def shard_with(path, **members):
    """A sample shard .npz of 20 samples whose members `members` (name -> .npy bytes) replace the real ones."""
    arrays = {"images": npy_bytes(uint8_images(20)), "seeds": npy_bytes(np.arange(20)), "nfe": npy_bytes(np.full(20, 3)),
              "features": npy_bytes(np.zeros((20, 6), np.float32)), "record": npy_bytes(np.array(json.dumps(RECORD)))}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in {**arrays, **members}.items():
            archive.writestr(f"{name}.npy", data)
    return path


def test_a_forged_header_declaring_a_huge_array_is_refused_without_reading(tiny, tmp_path):
    shard = shard_with(tmp_path / "forged.npz", features=forged_member((10**6, 3, 1024, 1024)))
    assert shard.stat().st_size < 10_000
    started = time.perf_counter()
    line = one_line(run(*fid_args(tiny, tmp_path / "out" / "fid.json", shard=shard)), str(shard), "'features'",
                    "declares shape [1000000, 3, 1024, 1024] uint8 (2.9 TiB)", "more than the 16.0 GiB")
    assert time.perf_counter() - started < 30 and not (tmp_path / "out").exists(), line
    with pytest.raises(ValueError, match=r"declares shape \[10, 10\] float64 \(800 bytes\) but holds only 16 bytes"):
        load_shard(shard_with(tmp_path / "short.npz", features=forged_member((10, 10), "<f8")), "features")


def test_a_zip_bomb_is_refused_before_it_is_inflated(tiny, tmp_path):
    bomb = tmp_path / "bomb.npz"
    shard_with(bomb)
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("mu.npy", "w", force_zip64=True) as member:  # 128 MiB of deflated zeros, ~130 KB
            member.write(forged_member((2**24,), "<f8", b""))
            for _ in range(8):
                member.write(bytes(2**24))
        archive.writestr("sigma.npy", npy_bytes(np.eye(6)))
    result, peak_kib = run_measured(*fid_args(tiny, tmp_path / "out" / "fid.json", reference=bomb))
    line = one_line(result, str(bomb), "'mu'", "expands", "to 128.0 MiB, more than 100x")
    assert peak_kib < 100 * 1024 and not (tmp_path / "out").exists(), (peak_kib, line)


# A fresh, small Python starts the command: a child forked from pytest itself would count pytest's memory too.
_MEASURE = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def run_measured(*args):
    """Run `expertmerge *args`; (its result, its peak resident memory in KiB)."""
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(BIN), *map(str, args)], capture_output=True,
                            text=True, timeout=120)
    *lines, peak = result.stderr.strip().splitlines()
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout, "\n".join(lines)), int(peak)


def test_inf_features_are_refused_naming_the_file(tiny, tmp_path):
    features = np.zeros((20, 6), np.float32)
    features[7, 2] = np.inf
    shard = shard_with(tmp_path / "inf.npz", features=npy_bytes(features))
    one_line(run(*fid_args(tiny, tmp_path / "out" / "fid.json", shard=shard)), str(shard), "'features'",
             "holds 1 NaN or Inf value(s), the first at index [7, 2]")
    save_statistics(tmp_path / "nan_reference.npz", np.zeros(6), np.full((6, 6), np.nan))
    one_line(run(*fid_args(tiny, tmp_path / "out" / "fid.json", reference=tmp_path / "nan_reference.npz")),
             "nan_reference.npz", "'sigma'", "holds 36 NaN or Inf")
    with pytest.raises(ValueError, match="must be finite"):
        FrechetReference(np.zeros(2), np.array([[1.0, 0], [0, np.inf]]))


def test_features_of_another_network_are_refused_naming_the_shard(tiny, tmp_path):
    shard = shard_with(tmp_path / "wide.npz", features=npy_bytes(np.zeros((20, 2048), np.float32)))
    one_line(run(*fid_args(tiny, tmp_path / "out" / "fid.json", shard=shard)), str(shard),
             "2048-dimensional features", "6-dimensional ones")


def test_a_split_that_is_not_nhwc_images_is_refused_naming_file_and_array(tiny, tmp_path):
    path = tmp_path / "flat.npz"
    np.savez(path, train=uint8_images(4)[..., 0], test=uint8_images(3))  # train is [N, H, W]
    path.with_suffix(".json").write_text(json.dumps({"sizes": {"train": 4, "test": 3}}))
    message = "'train' of a splits file must be uint8 images [N, H, W, C] with C in 1, 3, got uint8 [4, 8, 8]"
    with pytest.raises(ValueError) as caught:
        load_splits(path)
    assert f"{path}: array {message}" in str(caught.value)
    one_line(run("reference-stats", "--data", path, "--features", tiny / "classifier", "--out",
                 tmp_path / "out" / "r.npz"), str(path), message)


def test_the_loader_refuses_pickles_and_reads_good_files(tmp_path):
    from expertmerge.npz import load_npz

    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "objects.npz", "w") as archive:
        archive.write(tmp_path / "objects.npy", "x.npy")
    with pytest.raises(ValueError, match=r"objects.npz: array 'x' of .* holds Python objects"):
        load_npz(tmp_path / "objects.npz", ["x"])
    np.savez_compressed(tmp_path / "good.npz", x=np.arange(5), y=np.eye(3))
    arrays = load_npz(tmp_path / "good.npz")
    assert np.array_equal(arrays["x"], np.arange(5)) and np.array_equal(arrays["y"], np.eye(3))


# 5. Images the FID features cannot take are refused before any sampling.

def test_experts_of_other_images_than_the_feature_networks_are_refused_before_sampling(tiny, tmp_path):
    result = run("sample", "--quality", tiny / "wide_edm", "--likelihood", tiny / "wide_vdm", "--eta", "0.5",
                 "--sampler", "heun", "--steps", 4, "--seeds", "0:4", "--features", tiny / "classifier",
                 "--out", tmp_path / "out" / "s.npz")
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "samples at eta" not in result.stderr, result.stderr
    assert "digits-classifier FID features take 1x8x8 images (C x H x W), not 1x16x16" in errors[0]
    one_line(run("reference-stats", "--data", tiny / "wide.npz", "--features", tiny / "classifier", "--out",
                  tmp_path / "out" / "r.npz"), "take 1x8x8 images (C x H x W), not 1x16x16")
    assert not (tmp_path / "out").exists()
