"""Files that pipeline jobs write and read: sample shards and result records, each written atomically."""
from __future__ import annotations

import json

import numpy as np

from .files import atomic_path
from .npz import FEATURES, IMAGES, INTEGERS, ArraySpec, load_npz


def write_json(path, payload) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2) + "\n")


def write_csv(path, frame) -> None:
    """Write a pandas DataFrame as CSV."""
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)


def save_sample_shard(path, *, images: np.ndarray, seeds: np.ndarray, nfe: np.ndarray, features: np.ndarray,
                      record: dict) -> None:
    """One shard of samples: uint8 NHWC images, their seeds and NFE, their FID features, and a JSON record."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, images=images, seeds=seeds, nfe=nfe, features=features,
                     record=np.array(json.dumps(record)))


def load_arrays(path, names, what: str, specs: dict | None = None) -> dict:
    """The named arrays of an .npz file, each checked against `specs` before it is read (expertmerge.npz); a
    ValueError naming the file if it is not an .npz or lacks one of them. `what` says what the file should be."""
    return load_npz(path, names, what, specs)


# What a sample shard's arrays must be, checked from their headers before they are read.
SHARD_SPECS = {"images": IMAGES, "seeds": INTEGERS, "nfe": INTEGERS, "features": FEATURES,
               "record": ArraySpec("a JSON string", ndims=(0,), kinds="U")}


def load_shard(path, *fields: str) -> dict:
    """Only the named arrays of a shard, plus its record."""
    out = load_arrays(path, [*fields, "record"], "a sample shard", SHARD_SPECS)
    try:
        out["record"] = json.loads(str(out["record"]))
    except ValueError:
        raise ValueError(f"{path}: the record of a sample shard must be JSON, got {str(out['record'])[:80]!r}") from None
    return out
