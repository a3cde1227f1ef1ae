"""Files that pipeline jobs write and read: atomic writes, sample shards, result records.

Every output is written to a temporary name in its directory and renamed when complete, so a
killed job never leaves a file that looks finished.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + path.suffix, dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual mode
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(path, payload) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2) + "\n")


def write_csv(path, frame: pd.DataFrame) -> None:
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
