"""Verified downloads: fetch a file from a URL or local path and check its checksum before it lands.

A checksum is written with its algorithm, "sha256:<hex>" or "md5:<hex>" (CIFAR-10 publishes an
MD5). `fetch` copies or downloads to a temporary name beside the destination, verifies the digest,
and only then renames, so a mismatch or an interrupted transfer never leaves an output file.

A file config.yaml leaves "unpinned" is trusted on first use, as package managers' lock files do: its
SHA-256 is recorded in `checksums.lock` beside it when it is first fetched or used, and every later
fetch or use verifies it; a changed file is an error until its digest is pinned in config.yaml.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import shutil
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


def _copy_stream(response, file, total: int | None, source) -> int:
    """Copy a response to a file in chunks, logging bytes and rate every PROGRESS_SECONDS."""
    start = last = time.monotonic()
    done = 0
    while chunk := response.read(CHUNK_BYTES):
        file.write(chunk)
        done += len(chunk)
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS:
            last = now
            of = f" of {total / 1e6:.1f} MB" if total else ""
            log.info("%s: %.1f MB%s at %.2f MB/s", source, done / 1e6, of, done / 1e6 / (now - start))
    return done


def _download(url: str, temporary: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(temporary, "wb") as file:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        start = time.monotonic()
        done = _copy_stream(response, file, total, url)
    if total is not None and done != total:
        raise urllib.error.URLError(f"connection closed after {done} of {total} bytes")
    seconds = max(time.monotonic() - start, 1e-9)
    log.info("downloaded %s: %.1f MB in %.1f s (%.2f MB/s)", url, done / 1e6, seconds, done / 1e6 / seconds)


def fetch(source, checksum: str, dest, *, timeout: float = 60) -> Path:
    """Place the file at `source` (local path, file://, http:// or https:// URL) at `dest`, verified.

    If `dest` already exists with the right checksum nothing is read. Otherwise the file is copied
    or downloaded to a temporary name beside `dest`, checked, then renamed; a checksum mismatch
    raises ChecksumError and leaves no `dest`. An unreadable URL raises DownloadError naming it and
    the path where the file can be placed by hand. With checksum "unpinned" nothing is checked: the
    file's SHA-256 is logged as a warning, to be pinned in config.yaml.
    """
    unpinned = checksum == UNPINNED
    if not unpinned:
        parse_checksum(checksum)
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
    if local is not None and not local.is_file():
        raise DownloadError(f"cannot read {source}: no such file. " + _hand_placement(source, dest, checksum))
    with atomic_path(dest) as temporary:
        if local is not None:
            shutil.copyfile(local, temporary)
        else:
            try:
                _download(str(source), temporary, timeout)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                raise DownloadError(f"cannot download {source}: {error}. " + _hand_placement(source, dest, checksum)) from error
        if unpinned:
            trusted_checksum(temporary, name=dest)
        else:
            verify_file(temporary, checksum, name=f"{source} (fetched for {dest})")
    return dest


def trusted_checksum(path, *, name=None) -> str:
    """The SHA-256 of an unpinned file, trusted on first use: recorded in checksums.lock beside `name` (default
    `path`) the first time, verified on every later call; a changed file raises ChecksumError."""
    name = Path(name or path)
    lock = name.parent / LOCK_NAME
    try:
        entries = json.loads(lock.read_text()) if lock.exists() else {}
    except json.JSONDecodeError as error:
        raise ChecksumError(f"{lock} is not a valid lock file ({error}); delete it to trust the files again") from None
    actual = "sha256:" + file_checksum(path, "sha256")
    recorded = entries.get(name.name)
    if recorded is None:
        with atomic_path(lock) as temporary:
            temporary.write_text(json.dumps({**entries, name.name: actual}, indent=2, sort_keys=True) + "\n")
        log.warning("%s is not pinned by a checksum in config.yaml; trusting it on first use, %s recorded in %s. Pin "
                    "it in config.yaml after checking the file is the published one.", name, actual, lock)
    elif recorded != actual:
        raise ChecksumError(f"{name} changed since it was first used: {lock} records {recorded}, the file has {actual}. "
                            f"If the new file is the right one, pin its checksum in config.yaml or delete its entry "
                            f"from {lock}")
    return actual
