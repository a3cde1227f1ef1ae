"""Which device a job runs on. `--device auto` takes a GPU when there is one, else the CPU.

Several jobs on one multi-GPU machine (the local-GPU profile) must not pile onto cuda:0: Snakemake
limits how many GPU jobs run at once (the `gpu` resource) but does not say which GPU each gets. So
a job takes the first visible GPU whose lock file it can hold (an exclusive `flock`, released by
the OS when the process ends, even if it is killed). Locks are named by the GPU's UUID, so jobs
that see different CUDA_VISIBLE_DEVICES (e.g. under SLURM) still agree on what is taken.
"""
from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

_held = []  # open lock files; kept for the life of the process
POLL_SECONDS = 5.0


def try_lock(path: Path):
    """An open file holding an exclusive lock on `path`, or None if another process holds it."""
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def claim_free(names: list[str], lock_dir: Path, wait: bool = True) -> int:
    """Index of the first of `names` whose lock this process could take (waits until one is free)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for index, name in enumerate(names):
            handle = try_lock(lock_dir / f"expertmerge-gpu-{name}.lock")
            if handle is not None:
                _held.append(handle)
                return index
        if not wait:
            raise RuntimeError(f"all of {len(names)} GPUs are taken by other expertmerge jobs")
        log.info("all %d GPUs are taken by other expertmerge jobs; waiting", len(names))
        time.sleep(POLL_SECONDS)


def resolve_device(device: str = "auto") -> str:
    """'auto' -> a free 'cuda:<i>' (locked for this process) or 'cpu'; anything else unchanged."""
    import torch

    if device != "auto":
        return device
    if not torch.cuda.is_available():
        return "cpu"
    names = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
    lock_dir = Path(os.environ.get("EXPERTMERGE_LOCK_DIR", tempfile.gettempdir()))
    index = claim_free(names, lock_dir)
    log.info("using cuda:%d (GPU %s)", index, names[index])
    return f"cuda:{index}"
