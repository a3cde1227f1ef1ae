"""Atomic output files: write to a temporary name in the target's directory, rename when complete.

A job that fails or is killed never leaves a file that looks finished; a failed write removes its
temporary file, and one left by a killed job (SIGKILL runs no cleanup) is removed by the next write of
the same target; a temporary of a writer still alive, on this host or (for a day) another, is left alone.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import socket
import stat
import tempfile
import time
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)
_HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64]
STALE_SECONDS = 24 * 3600  # a temporary untouched this long is dead whoever wrote it (another host, a reused pid)


def _writer_prefix(path: Path) -> str:
    """Temporaries carry their writer's pid and host: a later writer can tell a killed writer's from a live one's."""
    return f".{path.name}.{os.getpid()}~{_HOST}~"


def _remove_dead_temporaries(path: Path) -> None:
    """Remove temporaries of `path` that killed writers left: those of a pid no longer alive on this host, any
    untouched for STALE_SECONDS, and any without a pid (an earlier version's). A live writer's (another process
    writing the same file meanwhile) stays."""
    ours = re.compile(re.escape(f".{path.name}.") + r"(?:(\d+)~([^~]*)~)?\w+" + re.escape(f".partial{path.suffix}"))
    for temporary in path.parent.glob(f".{glob.escape(path.name)}.*.partial{glob.escape(path.suffix)}"):
        match = ours.fullmatch(temporary.name)  # the glob also matches other targets': a.bin's finds a.bin.x.bin's
        try:
            idle = time.time() - temporary.stat().st_mtime
        except FileNotFoundError:
            continue  # its writer finished meanwhile
        if match and (match[1] is None or idle > STALE_SECONDS or (match[2] == _HOST and not _alive(int(match[1])))):
            temporary.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # another user's process, or no pid at all: left to STALE_SECONDS
    return True


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    refuse_non_regular(path)  # before the work; checked again just before the rename
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(path)
    handle, temporary = tempfile.mkstemp(prefix=_writer_prefix(path), suffix=".partial" + path.suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp (and some writers) make 0600; use the usual mode
        refuse_non_regular(path)
        os.replace(temporary, path)
    except Exception as error:
        named = _naming_target(error, path, temporary)
        if named is error:
            raise
        raise named from error
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _naming_target(error: Exception, path: Path, temporary: str) -> Exception:
    """A failed write's error, naming the target: an OSError (a full disk, a quota) names nothing or the temporary
    file, and torch's and safetensors' writers raise errors of their own on a full disk."""
    if isinstance(error, OSError):
        if error.errno is None or error.filename not in (None, temporary):
            return error  # a message of its own, or about another file (an input read inside the block)
        return OSError(error.errno, f"cannot write {path}: {error.strerror or error}")
    if _full(path.parent):
        return OSError(errno.ENOSPC, f"cannot write {path}: No space left on device ({type(error).__name__}: "
                                     f"{' '.join(str(error).split())[:200]})")
    return error


def _full(folder: Path) -> bool:
    """Whether the file system holding `folder` has (almost) no space left."""
    try:
        info = os.statvfs(folder)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < 2**20


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def non_regular_kind(path) -> str | None:
    """What an existing `path` is if it is not a regular file (through symlinks), e.g. "a character device";
    None for a regular file or a path that does not exist."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # absent or unreachable: writing it reports that, naming it
        return None
    kind = next((name for test, name in _KINDS if test(mode)), None if stat.S_ISREG(mode) else "a special file")
    return kind and ("a symlink to " + kind if os.path.islink(path) else kind)


def refuse_non_regular(path) -> None:
    """Refuse an output path that is a device, FIFO, socket or directory: the rename would replace it (as root,
    an output at /dev/null would destroy /dev/null) or fail only after the work."""
    kind = non_regular_kind(path)
    if kind:
        raise OSError(f"the output {path} is {kind}, not a regular file; give a file path (it is replaced by the "
                      f"finished output)")


def write_text(path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


# Files a command writes beside --out: a checkpoint stem's, a figure's .pdf, a table's .md and .tex, a .json record.
_BESIDE_STEM, _BESIDE_SUFFIXES = (".safetensors", ".json"), (".pdf", ".md", ".tex", ".csv", ".json")


def check_output_path(out) -> None:
    """Fail before any work if --out (or a file written beside it) exists but is not a regular file (a device,
    FIFO or folder, which the finished output would replace), or if its folder (or the nearest one there is)
    cannot be written (a read-only or missing mount). Creates nothing."""
    out = Path(out)
    beside = [] if not out.name else [out.with_name(out.name + suffix) for suffix in _BESIDE_STEM] + \
        [out.with_suffix(suffix) for suffix in _BESIDE_SUFFIXES if out.suffix != suffix]
    for path in [out, *beside]:
        kind = non_regular_kind(path)
        if kind:
            where = f"--out {out}" if path == out else f"{path}, written beside --out,"
            raise OSError(f"{where} is {kind}, not a regular file; the finished output would replace it, so give "
                          f"the path of a file")
    folder = next(path for path in [out.parent, *out.parent.parents] if path.exists())  # made when writing, not now
    if not folder.is_dir():
        raise OSError(f"cannot write the output {out}: {folder} is not a folder")
    try:
        tempfile.TemporaryFile(dir=folder).close()  # leaves nothing behind
    except OSError as error:
        raise OSError(f"cannot write the output {out}: {error.strerror or error} in {folder}") from None
