"""Verified downloads: fetch a file from a URL or local path and check its checksum before it lands.

A checksum is written with its algorithm, "sha256:<hex>" or "md5:<hex>" (CIFAR-10 publishes an
MD5). `fetch` copies or downloads to a temporary name beside the destination, verifies the digest,
and only then renames, so a mismatch or an interrupted transfer never leaves an output file.

A file config.yaml leaves "unpinned" is trusted on first use, as package managers' lock files do: its
SHA-256 is recorded in `checksums.lock` beside it when it is first fetched or used, and every later
fetch or use verifies it; a changed file is an error until its digest is pinned in config.yaml.
Only a transfer shown complete is trusted: an unpinned HTTP download must come with a Content-Length
(all of it received) or chunked encoding (its last chunk received), and a local copy must match its
source's size when opened and when closed. Processes updating one lock take turns (a flock on
`checksums.lock.flock`, never deleted) and replace it atomically, so parallel first uses all stay.

A download cannot hang: besides the per-read `timeout`, it must average `min_rate` bytes/s once
`rate_grace` seconds have passed, and may be given a total `deadline` (`Pace`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import http.client
import json
import logging
import math
import os
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .files import atomic_path

log = logging.getLogger(__name__)

ALGORITHMS = {"md5": 32, "sha256": 64}  # algorithm -> hex digest length
UNPINNED = "unpinned"  # a file whose checksum is not known yet: trusted on first use (checksums.lock)
LOCK_NAME = "checksums.lock"  # beside the files: {file name: "sha256:<hex>"} of unpinned files as first seen
CHUNK_BYTES = 1 << 20
PROGRESS_SECONDS = 10.0  # log progress at most this often
MIN_RATE = 1000.0  # bytes/s a download must average (after RATE_GRACE_SECONDS): a trickle ends, a slow link does not
RATE_GRACE_SECONDS = 30.0  # connection set-up and a slow start do not count against MIN_RATE


class ChecksumError(ValueError):
    """A file's digest differs from the expected one."""


class DownloadError(RuntimeError):
    """A URL could not be read; the message says how to place the file by hand."""


def parse_checksum(checksum: str) -> tuple[str, str]:
    """"sha256:<hex>" or "md5:<hex>" -> (algorithm, lower-case hex digest)."""
    if not isinstance(checksum, str) or ":" not in checksum:
        raise ValueError(f"checksum must be 'algorithm:hexdigest' with algorithm one of {sorted(ALGORITHMS)}, got {checksum!r}")
    algorithm, digest = checksum.split(":", 1)
    algorithm, digest = algorithm.strip().lower(), digest.strip().lower()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"checksum algorithm {algorithm!r} in {checksum!r} is not supported; allowed: {sorted(ALGORITHMS)}")
    if len(digest) != ALGORITHMS[algorithm] or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{algorithm} checksum must be {ALGORITHMS[algorithm]} hexadecimal digits, got {digest!r}")
    return algorithm, digest


def file_checksum(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"checksum algorithm {algorithm!r} is not supported; allowed: {sorted(ALGORITHMS)}")
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path, checksum: str, *, name=None) -> None:
    """Raise ChecksumError unless the file's digest equals `checksum` ("algorithm:hex")."""
    algorithm, expected = parse_checksum(checksum)
    actual = file_checksum(path, algorithm)
    if actual != expected:
        raise ChecksumError(f"{algorithm} checksum mismatch for {name or path}: expected {expected}, got {actual}")


def _local_source(source: str) -> Path | None:
    """The local path a source names (plain path or file:// URL), or None for an http(s) URL."""
    parsed = urllib.parse.urlparse(str(source))
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise ValueError(f"cannot fetch {source!r}: allowed sources are a local path, file://, http:// or https:// URLs")
    return Path(source)


def _hand_placement(source, dest, checksum) -> str:
    expected = "its checksum is not pinned" if checksum == UNPINNED else f"it must have checksum {checksum}"
    return f"Download {source} yourself and place the file by hand at {Path(dest).resolve()} ({expected}), then re-run."


class WriteError(OSError):
    """Writing the fetched file failed (a full disk, a quota): the source is fine, the message names the file."""


class _Sink:
    """The temporary file a transfer writes to; a failed write raises WriteError naming `dest`, not the temporary."""

    def __init__(self, temporary, dest):
        self.dest = dest
        self.file = open(temporary, "wb")

    def write(self, chunk: bytes) -> None:
        try:
            self.file.write(chunk)
        except OSError as error:
            raise self._failure(error) from error

    def _failure(self, error: OSError) -> WriteError:
        return WriteError(f"cannot write {self.dest}: {error.strerror or error}")

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        try:
            self.file.close()  # flushes: a full disk may show only here
        except OSError as error:
            if kind is None:
                raise self._failure(error) from error


def _require_finite(name: str, value, *, above_zero: bool = False) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and (value > 0 if above_zero else value >= 0)):
        raise ValueError(f"{name} must be a finite number {'> 0' if above_zero else '>= 0'}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Pace:
    """How long a download may take: `timeout` seconds per read, an average of at least `min_rate` bytes/s once
    `rate_grace` seconds have passed (0: no minimum), and all of it within `deadline` seconds (None: no deadline).
    The per-read timeout alone lets a server that sends a byte now and then hold a download for ever."""
    timeout: float = 60.0
    min_rate: float = MIN_RATE
    rate_grace: float = RATE_GRACE_SECONDS
    deadline: float | None = None

    def __post_init__(self):
        _require_finite("timeout", self.timeout, above_zero=True)
        _require_finite("min_rate", self.min_rate)
        _require_finite("rate_grace", self.rate_grace)
        if self.deadline is not None:
            _require_finite("deadline", self.deadline, above_zero=True)

    def check(self, done: int, total: int | None, elapsed: float) -> None:
        """Raise DownloadError if a download, `done` bytes after `elapsed` seconds, is past its deadline or too slow."""
        received = f"received {done}" + (f" of {total}" if total is not None else "") + " bytes"
        if self.deadline is not None and elapsed > self.deadline:
            raise DownloadError(f"not complete after {self.deadline:g} s (the deadline): {received}")
        if self.min_rate and elapsed > self.rate_grace and done < self.min_rate * elapsed:
            raise DownloadError(f"too slow: {received} in {elapsed:.1f} s, {done / elapsed:.1f} bytes/s, below the "
                                f"minimum {self.min_rate:g} bytes/s")


def _copy_stream(response, sink: _Sink, total: int | None, source, pace: Pace) -> int:
    """Copy a response to `sink` as its bytes arrive (read1: a trickle is not gathered into one long read), checking
    the pace after each piece and logging bytes and rate every PROGRESS_SECONDS."""
    start = last = time.monotonic()
    done = 0
    while chunk := response.read1(CHUNK_BYTES):
        sink.write(chunk)
        done += len(chunk)
        now = time.monotonic()
        pace.check(done, total, now - start)
        if now - last >= PROGRESS_SECONDS:
            last = now
            of = f" of {total / 1e6:.1f} MB" if total else ""
            log.info("%s: %.1f MB%s at %.2f MB/s", source, done / 1e6, of, done / 1e6 / (now - start))
    return done


def _download(url: str, sink: _Sink, pace: Pace, *, need_length: bool) -> None:
    """Download `url` into `sink`. With `need_length` (an unpinned file, which no checksum will prove complete) the
    server must say where the file ends, by a Content-Length or chunked transfer encoding: over HTTP/1.0 without
    them a connection cut short looks like the end of the file."""
    start = time.monotonic()
    timeout = min(pace.timeout, pace.deadline or math.inf)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if need_length and total is None and not getattr(response, "chunked", False):
            raise DownloadError("the server sent neither a Content-Length nor chunked transfer encoding, so a cut "
                                "connection cannot be told from the end of the file; an unpinned file is only "
                                "trusted complete: pin its checksum in config.yaml to fetch it from this server")
        done = _copy_stream(response, sink, total, url, pace)
    if total is not None and done != total:
        raise DownloadError(f"connection closed after {done} of {total} bytes")
    seconds = max(time.monotonic() - start, 1e-9)
    log.info("downloaded %s: %.1f MB in %.1f s (%.2f MB/s)", url, done / 1e6, seconds, done / 1e6 / seconds)


_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
          (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"))


def _not_regular(mode: int, source) -> DownloadError | None:
    """The error for a local source that is not a regular file (reading /dev/zero would never end), else None."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "special file")
    return DownloadError(f"source {source} is a {kind}, not a regular file; give the path of the file itself")


def _check_local_source(local: Path, source, dest, checksum) -> None:
    """Refuse a missing local source, or one that is not a regular file, before any work (stat opens nothing)."""
    try:
        mode = os.stat(local).st_mode
    except FileNotFoundError:
        raise DownloadError(f"cannot read {source}: no such file. " + _hand_placement(source, dest, checksum)) from None
    except OSError as error:
        raise DownloadError(f"cannot read {source}: {error.strerror or error}") from None
    if error := _not_regular(mode, source):
        raise error


def _copy_local(local: Path, sink: _Sink, source) -> None:
    """Copy a local file, which must be as long when opened, as copied and when closed: a file still being written
    (or one whose size the kernel makes up, as in /proc) would otherwise be taken, and trusted, cut short."""
    try:
        # O_NONBLOCK: should a FIFO replace the file after the stat, opening it must not wait for a writer
        with open(os.open(local, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            status = os.fstat(file.fileno())
            if error := _not_regular(status.st_mode, source):
                raise error
            size, done = status.st_size, 0
            while done <= size and (chunk := file.read(min(CHUNK_BYTES, size + 1 - done))):  # size + 1: growth shows
                sink.write(chunk)
                done += len(chunk)
            at_close = os.fstat(file.fileno()).st_size
    except WriteError:
        raise  # the disk, not the source
    except OSError as error:
        raise DownloadError(f"cannot read {source}: {error.strerror or error}") from error
    if not done == size == at_close:
        read = f"more than {size}" if done > size else str(done)
        raise DownloadError(f"source {source} changed size while it was copied: {size} bytes when opened, {read} "
                            f"read, {at_close} at the end; fetch it again once nothing is writing it")


def fetch(source, checksum: str, dest, *, timeout: float = 60, min_rate: float = MIN_RATE,
          rate_grace: float = RATE_GRACE_SECONDS, deadline: float | None = None) -> Path:
    """Place the file at `source` (local path, file://, http:// or https:// URL) at `dest`, verified.

    If `dest` already exists with the right checksum nothing is read. Otherwise the file is copied
    or downloaded to a temporary name beside `dest`, checked complete, verified, then renamed; a checksum
    mismatch raises ChecksumError and leaves no `dest`. An unreadable URL, a download that breaks the
    limits of `Pace` or ends short raises DownloadError naming it and the path where the file can be placed
    by hand; a failed write (a full disk) raises WriteError naming `dest`. With checksum "unpinned" the
    file is trusted on first use (`trusted_checksum`), and only a download shown complete is.
    """
    unpinned = checksum == UNPINNED
    if not unpinned:
        parse_checksum(checksum)
    pace = Pace(timeout, min_rate, rate_grace, deadline)
    dest = Path(dest)
    if dest.exists():
        if unpinned:
            trusted_checksum(dest)
            return dest
        try:
            verify_file(dest, checksum)
            log.info("%s already present with checksum %s", dest, checksum)
            return dest
        except ChecksumError as error:
            log.warning("%s exists but is not the expected file (%s); fetching it again", dest, error)
    local = _local_source(source)
    if local is not None:
        _check_local_source(local, source, dest, checksum)
    with atomic_path(dest) as temporary:
        with _Sink(temporary, dest) as sink:
            _transfer(source, local, sink, pace, dest, checksum)
        if unpinned:
            trusted_checksum(temporary, name=dest)
        else:
            verify_file(temporary, checksum, name=f"{source} (fetched for {dest})")
    return dest


def _transfer(source, local: Path | None, sink: _Sink, pace: Pace, dest, checksum) -> None:
    """Copy or download `source` into `sink`; a download that fails says where the file can be placed by hand."""
    if local is not None:
        return _copy_local(local, sink, source)
    try:
        _download(str(source), sink, pace, need_length=checksum == UNPINNED)
    except WriteError:
        raise  # the disk, not the source
    except (DownloadError, urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise DownloadError(f"cannot download {source}: {error}. " + _hand_placement(source, dest, checksum)) from error


@contextlib.contextmanager
def _holding(lock: Path):
    """Hold an exclusive flock on `lock`'s sidecar file for a read-modify-write of `lock`. The sidecar is never
    renamed or deleted, so every process locks the same file (`lock` itself is replaced by each atomic write)."""
    handle = os.open(lock.with_name(lock.name + ".flock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the flock


def _lock_entries(lock: Path) -> dict:
    try:
        entries = json.loads(lock.read_text()) if lock.exists() else {}
    except json.JSONDecodeError as error:
        raise ChecksumError(f"{lock} is not a valid lock file ({error}); delete it to trust the files again") from None
    if not isinstance(entries, dict):
        raise ChecksumError(f"{lock} is not a valid lock file (not a JSON object); delete it to trust the files again")
    return entries


def _record(lock: Path, name: str, digest: str) -> str | None:
    """Add `name: digest` to `lock`, or return what another process recorded for `name` meanwhile. Only a
    record takes the flock: verifying reads `lock` alone, which is never half written (a read-only folder works)."""
    with _holding(lock):
        entries = _lock_entries(lock)
        if name in entries:
            return entries[name]
        with atomic_path(lock) as temporary:
            temporary.write_text(json.dumps({**entries, name: digest}, indent=2, sort_keys=True) + "\n")
    return None


def trusted_checksum(path, *, name=None) -> str:
    """The SHA-256 of an unpinned file, trusted on first use: recorded in checksums.lock beside `name` (default
    `path`) the first time, verified on every later call; a changed file raises ChecksumError. Processes that
    first use files at once each add their entry (`_record`)."""
    name = Path(name or path)
    lock = name.parent / LOCK_NAME
    recorded = _lock_entries(lock).get(name.name)  # a broken lock file is refused before the file is read
    actual = "sha256:" + file_checksum(path, "sha256")
    if recorded is None:
        recorded = _record(lock, name.name, actual)
    if recorded is None:
        log.warning("%s is not pinned by a checksum in config.yaml; trusting it on first use, %s recorded in %s. Pin "
                    "it in config.yaml after checking the file is the published one.", name, actual, lock)
    elif recorded != actual:
        raise ChecksumError(f"{name} changed since it was first used: {lock} records {recorded}, the file has {actual}."
                            f" If the new file is the published one (a file recorded before the checks of complete "
                            f"downloads may have been cut short), pin its checksum in config.yaml or delete the "
                            f"\"{name.name}\" entry from {lock}, then re-run; if not, replace {name} with the "
                            f"published file")
    return actual
