"""Atomic output files: write to a temporary name in the target's directory, rename when complete.

A job that fails or is killed never leaves a file that looks finished; a failed write removes its
temporary file, and one left by a killed job (SIGKILL runs no cleanup) is removed by the next write of
the same target.
"""
from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.partial{glob.escape(path.suffix)}"):
        stale.unlink(missing_ok=True)  # a killed earlier attempt's; one job writes a target at a time
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + path.suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp (and some writers) make 0600; use the usual mode
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text(path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
