"""Data sets as uint8 NHWC arrays: the demo's digits with fixed, recorded splits, and the paper's
image data sets read from their distributed files.

The embedded demo uses scikit-learn's handwritten digits: 1797 images of 8x8, levels 0..16,
mapped to 8 bits by round(v * 255/16). A seeded permutation splits them into train,
validation and test; the split is saved as an .npz of arrays plus a JSON of indices and
metadata next to it, so every later stage reads the same images.

CIFAR-10: the official python tarball (cifar-10-python.tar.gz). It holds `cifar-10-batches-py/`
with `data_batch_1..5`, `test_batch` and `batches.meta`: Python 2 pickles (protocol 2) of dicts
with b"data" a uint8 array [10000, 3072] whose rows are one image channel-major (1024 red, 1024
green, 1024 blue values, each row-major 32x32) and b"labels" a list of class numbers. They are read
with a restricted unpickler (`expertmerge.safe_pickle`) that can build numpy arrays and nothing
else, so a tampered tarball cannot run code.

ImageNet32: the original downsampled ImageNet of van den Oord et al. (2016), which VDM and i-DODE
(Zheng et al., 2023b) use through TFDS `downsampled_imagenet/32x32`. It was released as
`train_32x32.tar` (1,281,149 images) and `valid_32x32.tar` (49,999 images) of 32x32 RGB PNG files.
`read_imagenet32` reads such a tar, a directory of the extracted PNGs, or numpy batches (one
`.npz`, or a directory of `.npz` files) holding a uint8 array `x` or `data` either NHWC
[N, 32, 32, 3] or [N, 3072] channel-major rows as in CIFAR-10. Images come in sorted file-name
order. The reader cannot tell the original from the later box-resized variant (Chrabaszcz et al.,
2017, `Imagenet32_*.zip`, npz batches): the checksum in config.yaml pins which one is used.
"""
from __future__ import annotations

import codecs
import io
import json
import tarfile
from pathlib import Path

import numpy as np

from . import safe_pickle
from .files import atomic_path, write_text
from .npz import IMAGES, ArraySpec, NpzReader

try:
    from numpy._core.multiarray import _reconstruct  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

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


# What each array of a splits .npz must be, checked from its header before it is read.
SPLIT_SPECS = {**{name: IMAGES for name in SPLITS},
               **{f"{name}_{what}": ArraySpec(f"integer {what} [N]", ndims=(1,), kinds="iu")
                  for name in SPLITS for what in ("labels", "indices")}}


def load_splits(path) -> dict[str, np.ndarray]:
    """Read splits written by `save_splits`; checks the .json next to it agrees on sizes."""
    path = _check_npz_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"splits file {str(path)!r} does not exist")
    try:
        with NpzReader(path, "a splits file") as reader:  # only the arrays a splits file has
            splits = reader.load([name for name in reader.files if name in SPLIT_SPECS], SPLIT_SPECS)
        record = json.loads(_sidecar(path).read_text())
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{str(_sidecar(path))!r} is missing; save_splits writes it next to {str(path)!r}") from error
    except (ValueError, OSError, KeyError) as error:
        raise ValueError(f"cannot read splits: {error}") from None
    sizes = {name: len(splits[name]) for name in SPLITS if name in splits}
    if sizes != record.get("sizes"):
        raise ValueError(f"{str(path)!r} holds split sizes {sizes} but its JSON records {record.get('sizes')}")
    return splits


def split_images(path, split: str) -> np.ndarray:
    """The images of one split of a splits .npz; refuses a split the file lacks and one with no images."""
    splits = load_splits(path)
    held = [name for name in SPLITS if name in splits]
    if split not in held:
        raise ValueError(f"{str(path)!r} has no split {split!r}; it holds the splits {', '.join(held)}")
    if len(splits[split]) == 0:
        raise ValueError(f"split {split!r} of {str(path)!r} holds no images; use one of "
                         f"{', '.join(name for name in held if len(splits[name]))}")
    return splits[split]


def load_splits_meta(path) -> dict:
    """The JSON record (meta, sizes, indices) saved next to a splits .npz."""
    return json.loads(_sidecar(_check_npz_path(path)).read_text())


# ----------------------------------------------------------------------------
# The paper's image data sets.

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CHECKSUM = "md5:c58f30108f718f92721af3b95e74349a"  # published on the CIFAR-10 page
CIFAR10_CLASSES = 10
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{k}" for k in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_META = "batches.meta"
RESOLUTION = 32
ROW_LENGTH = 3 * RESOLUTION * RESOLUTION

_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # how Python 2 numpy named it
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy >= 2 re-pickles
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes in protocol 2 written by Python 3
}


class _ArrayUnpickler(safe_pickle.Unpickler):
    allowed, kind = _CIFAR_GLOBALS, "a CIFAR-10 data pickle"
    stateful = (np.ndarray, np.dtype)  # numpy arrays are rebuilt with BUILD; nothing else takes state


def load_array_pickle(data: bytes) -> object:
    """Unpickle a CIFAR-style pickle (Python 2 strings as bytes) allowing only numpy arrays."""
    return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()


def rows_to_nhwc(rows: np.ndarray, name: str = "data") -> np.ndarray:
    """[N, 3072] channel-major rows (R plane, G plane, B plane) -> uint8 [N, 32, 32, 3]."""
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != ROW_LENGTH:
        got = f"{rows.dtype} {list(rows.shape)}" if isinstance(rows, np.ndarray) else type(rows).__name__
        raise ValueError(f"{name} must be a uint8 array [N, {ROW_LENGTH}], got {got}")
    return np.ascontiguousarray(rows.reshape(-1, 3, RESOLUTION, RESOLUTION).transpose(0, 2, 3, 1))


def _cifar_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    batch = load_array_pickle(data)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{name} must be a dict with b'data' and b'labels', got {type(batch).__name__}"
                         + (f" with keys {sorted(batch)}" if isinstance(batch, dict) else ""))
    images = rows_to_nhwc(batch[b"data"], f"{name}[b'data']")
    labels = np.asarray(batch[b"labels"])
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu" or labels.min(initial=0) < 0 \
            or labels.max(initial=0) >= CIFAR10_CLASSES:
        raise ValueError(f"{name}[b'labels'] must be {len(images)} integers in [0, {CIFAR10_CLASSES}), "
                         f"got {labels.dtype} {list(labels.shape)}")
    return images, labels.astype(np.uint8)


def read_cifar10_tarball(path) -> dict[str, np.ndarray]:
    """CIFAR-10's python tarball -> train/test uint8 images [N, 32, 32, 3] and uint8 labels [N].

    The training set is data_batch_1..5 in order (50000 images), the test set test_batch (10000).
    """
    members = {}
    with tarfile.open(path, "r:*") as archive:
        for member in archive.getmembers():
            if member.isfile() and Path(member.name).name in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH, CIFAR10_META):
                members[Path(member.name).name] = archive.extractfile(member).read()
    missing = [n for n in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH, CIFAR10_META) if n not in members]
    if missing:
        raise ValueError(f"{path} is not the CIFAR-10 python tarball: missing {', '.join(missing)}")
    meta = load_array_pickle(members[CIFAR10_META])
    if not isinstance(meta, dict) or len(meta.get(b"label_names", ())) != CIFAR10_CLASSES:
        raise ValueError(f"{path}: {CIFAR10_META} must be a dict with {CIFAR10_CLASSES} b'label_names'")
    train = [_cifar_batch(members[n], f"{path}:{n}") for n in CIFAR10_TRAIN_BATCHES]
    test_images, test_labels = _cifar_batch(members[CIFAR10_TEST_BATCH], f"{path}:{CIFAR10_TEST_BATCH}")
    return {"train": np.concatenate([images for images, _ in train]),
            "train_labels": np.concatenate([labels for _, labels in train]),
            "test": test_images, "test_labels": test_labels}


def _decode_png(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
    if pixels.shape != (RESOLUTION, RESOLUTION, 3):
        raise ValueError(f"{name} must be a {RESOLUTION}x{RESOLUTION} RGB image, got shape {list(pixels.shape)}")
    return pixels


def _read_png_tar(path: Path) -> np.ndarray:
    with tarfile.open(path, "r:*") as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile() and m.name.lower().endswith(".png")),
                         key=lambda m: m.name)
        if not members:
            raise ValueError(f"{path} holds no .png files; expected the original ImageNet32 tar (train_32x32.tar or valid_32x32.tar)")
        images = np.empty((len(members), RESOLUTION, RESOLUTION, 3), np.uint8)
        for i, member in enumerate(members):
            images[i] = _decode_png(archive.extractfile(member).read(), f"{path}:{member.name}")
    return images


IMAGENET_BATCH = ArraySpec(f"uint8 images, NHWC [N, {RESOLUTION}, {RESOLUTION}, 3] or channel-major rows "
                           f"[N, {ROW_LENGTH}]", ndims=(2, 4), kinds="u", itemsize=1)


def _read_npz(path: Path) -> np.ndarray:
    with NpzReader(path, "an ImageNet32 batch") as batch:
        key = next((k for k in ("x", "data") if k in batch.files), None)
        if key is None:
            raise ValueError(f"{path} must hold an array 'x' or 'data', found {batch.files}")
        array = batch.load([key], {key: IMAGENET_BATCH})[key]
    if array.dtype != np.uint8:
        raise ValueError(f"{path}['{key}'] must be uint8, got {array.dtype}")
    if array.ndim == 4 and array.shape[1:] == (RESOLUTION, RESOLUTION, 3):
        return array
    if array.ndim == 2 and array.shape[1] == ROW_LENGTH:
        return rows_to_nhwc(array, f"{path}['{key}']")
    raise ValueError(f"{path}['{key}'] must be NHWC [N, {RESOLUTION}, {RESOLUTION}, 3] or channel-major rows "
                     f"[N, {ROW_LENGTH}], got {list(array.shape)}")


def read_imagenet32(path) -> np.ndarray:
    """ImageNet32 images as uint8 [N, 32, 32, 3] from a PNG tar, a PNG directory, an .npz or an .npz directory."""
    path = Path(path)
    if path.is_dir():
        pngs = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".png")
        if pngs:
            return np.stack([_decode_png(p.read_bytes(), str(p)) for p in pngs])
        batches = sorted(path.glob("*.npz"))
        if not batches:
            raise ValueError(f"{path} holds neither .png nor .npz files")
        return np.concatenate([_read_npz(p) for p in batches])
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet32 data not found at {path}")
    if path.suffix == ".npz":
        return _read_npz(path)
    if tarfile.is_tarfile(path):
        return _read_png_tar(path)
    raise ValueError(f"{path} must be a tar of PNGs, a directory of PNGs or .npz batches, or an .npz file")


# The files each image data set is read from, by role (config.yaml's data.files maps roles to downloads).
DATASET_FILES = {"cifar10": ("archive",), "imagenet32": ("train", "test")}
IMAGE_SHAPE = (3, RESOLUTION, RESOLUTION)  # (C, H, W) of both


def read_image_dataset(source: str, files: dict) -> dict[str, np.ndarray]:
    """{"train": uint8 [N, 32, 32, 3], "test": ...} (CIFAR-10 also with labels) from the data set's files:
    cifar10 {"archive": python tarball}; imagenet32 {"train": train_32x32.tar, "test": valid_32x32.tar}."""
    if source not in DATASET_FILES:
        raise ValueError(f"unknown image data set {source!r}; known: {', '.join(DATASET_FILES)}")
    if set(files) != set(DATASET_FILES[source]):
        raise ValueError(f"{source} is read from files {list(DATASET_FILES[source])}, got {sorted(files)}")
    if source == "cifar10":
        return read_cifar10_tarball(files["archive"])
    return {"train": read_imagenet32(files["train"]), "test": read_imagenet32(files["test"])}
