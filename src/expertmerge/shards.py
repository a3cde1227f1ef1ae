"""Files that pipeline jobs write and read: sample shards and result records, each written atomically."""
from __future__ import annotations

import json

import numpy as np

from .files import atomic_path


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


def load_shard(path, *fields: str) -> dict:
    """Only the named arrays of a shard (npz members load lazily), plus its record."""
    with np.load(path, allow_pickle=False) as shard:
        out = {field: shard[field] for field in fields}
        out["record"] = json.loads(str(shard["record"]))
    return out
