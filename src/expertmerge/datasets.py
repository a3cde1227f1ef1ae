"""Data sets as uint8 NHWC arrays with fixed, recorded splits.

The embedded demo uses scikit-learn's handwritten digits: 1797 images of 8x8, levels 0..16,
mapped to 8 bits by round(v * 255/16). A seeded permutation splits them into train,
validation and test; the split is saved as an .npz of arrays plus a JSON of indices and
metadata next to it, so every later stage reads the same images.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .files import atomic_path, write_text

SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "test")  # the paper's data sets have no validation split
DIGITS_LEVELS = 16  # scikit-learn's digits use levels 0..16


def digits_to_uint8(levels: np.ndarray) -> np.ndarray:
    """Digit levels 0..16 -> 8-bit values round(v * 255/16)."""
    return np.rint(np.asarray(levels, dtype=np.float64) * (255 / DIGITS_LEVELS)).astype(np.uint8)


def split_indices(n: int, seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Disjoint sorted index sets covering range(n), from a permutation seeded with `seed`."""
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < fraction < 1:
            raise ValueError(f"{name} must be in (0, 1), got {fraction!r}")
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n_val < 1 or n_test < 1 or n_val + n_test >= n:
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} of {n} images "
                         f"leave {n - n_val - n_test} for training; each split needs at least one image")
    order = np.random.default_rng(seed).permutation(n)
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {name: np.sort(parts[name]) for name in SPLITS}


def load_digits_splits(seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.15) -> dict[str, np.ndarray]:
    """scikit-learn's digits split into train/val/test.

    Returns `name` -> uint8 images [N, 8, 8, 1], `name_labels` -> uint8 class [N] and
    `name_indices` -> int64 rows of `sklearn.datasets.load_digits()` [N], for name in SPLITS.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits_to_uint8(digits.images)[..., None]
    labels = digits.target.astype(np.uint8)
    splits = {}
    for name, index in split_indices(len(images), seed, val_fraction, test_fraction).items():
        splits[name], splits[f"{name}_labels"], splits[f"{name}_indices"] = images[index], labels[index], index.astype(np.int64)
    return splits


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _check_npz_path(path) -> Path:
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"splits path must end in .npz (a JSON of indices is written next to it), got {str(path)!r}")
    return path


def save_splits(path, splits: dict[str, np.ndarray], meta: dict | None = None) -> Path:
    """Write `splits` to `path` (.npz) and indices + `meta` to the .json next to it, each via a temp name."""
    path = _check_npz_path(path)
    missing = [name for name in REQUIRED_SPLITS if name not in splits]
    if missing:
        raise ValueError(f"splits must hold images for {REQUIRED_SPLITS} (and optionally 'val'); missing {missing}")
    present = [name for name in SPLITS if name in splits]
    for name in present:
        images = splits[name]
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"split {name!r} must be uint8 images [N, H, W, C], got {images.dtype} {images.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"meta": dict(meta or {}),
              "sizes": {name: len(splits[name]) for name in present},
              "indices": {name: splits[f"{name}_indices"].tolist() for name in present if f"{name}_indices" in splits}}
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, **splits)
    write_text(_sidecar(path), json.dumps(record, indent=1) + "\n")
    return path


def load_splits(path) -> dict[str, np.ndarray]:
    """Read splits written by `save_splits`; checks the .json next to it agrees on sizes."""
    path = _check_npz_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"splits file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            splits = {name: data[name] for name in data.files}
        record = json.loads(_sidecar(path).read_text())
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{str(_sidecar(path))!r} is missing; save_splits writes it next to {str(path)!r}") from error
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read splits from {str(path)!r}: {error}") from error
    sizes = {name: len(splits[name]) for name in SPLITS if name in splits}
    if sizes != record.get("sizes"):
        raise ValueError(f"{str(path)!r} holds split sizes {sizes} but its JSON records {record.get('sizes')}")
    return splits


def load_splits_meta(path) -> dict:
    """The JSON record (meta, sizes, indices) saved next to a splits .npz."""
    return json.loads(_sidecar(_check_npz_path(path)).read_text())
