"""Files that pipeline jobs write and read: sample shards and result records, each written atomically."""
from __future__ import annotations

import json
import zipfile

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


def load_arrays(path, names, what: str) -> dict:
    """The named arrays of an .npz file (members load lazily); a ValueError naming the file if it is not an
    .npz or lacks one of them. `what` says what the file should be, e.g. "a sample shard"."""
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, EOFError):  # neither .npz nor .npy: numpy takes it for a pickle, which it refuses
        raise ValueError(f"{path} is not a .npz file, as {what} must be") from None
    except (OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable .npz file, as {what} must be: {error}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is not a .npz file, as {what} must be, but a single .npy array")
    with data:
        missing = [name for name in names if name not in data.files]
        if missing:
            raise ValueError(f"{path} is missing the array(s) {', '.join(missing)} of {what}; it holds "
                             f"{', '.join(data.files) or 'none'}")
        try:
            return {name: data[name] for name in names}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"cannot read {path} ({what}): {error}") from None


def load_shard(path, *fields: str) -> dict:
    """Only the named arrays of a shard, plus its record."""
    out = load_arrays(path, [*fields, "record"], "a sample shard")
    try:
        out["record"] = json.loads(str(out["record"]))
    except ValueError:
        raise ValueError(f"{path}: the record of a sample shard must be JSON, got {str(out['record'])[:80]!r}") from None
    return out
