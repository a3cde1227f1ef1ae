"""Reading .npz files without trusting them: the one place the package opens an .npz.

numpy's own loader allocates whatever shape a member's header declares, so a few megabytes of
deflated zeros declaring a (10**6, 3, 1024, 1024) array take the machine's memory before anything
can be refused. Here every requested member's header is read first and checked against the size
caps and against what the caller expects (ArraySpec: dimensions, dtype, channels); only then are the
arrays read, never with pickles. Every refusal is one ValueError naming the file and the array.
"""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from .limits import MAX_ARRAY_BYTES

# A deflated member may expand at most this much (deflated zeros expand 230-1000x; natural images ~2x).
# np.savez stores members uncompressed, so the files this package writes are never affected; members
# below the floor are always allowed.
MAX_EXPANSION = 100
EXPANSION_FLOOR = 64 * 2**20
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local header, or an empty zip


@dataclass(frozen=True)
class ArraySpec:
    """What one array must be, checked from its header before it is read (`finite` after reading)."""
    meaning: str                          # for the message, e.g. "uint8 images [N, H, W, C] with C in 1, 3"
    ndims: tuple[int, ...] | None = None
    kinds: str | None = None              # allowed numpy dtype kinds, e.g. "u", "iu", "f"
    itemsize: int | None = None
    channels: tuple[int, ...] | None = None  # allowed sizes of the last axis
    finite: bool = False

    def problem(self, shape: tuple, dtype: np.dtype) -> bool:
        return ((self.ndims is not None and len(shape) not in self.ndims)
                or (self.kinds is not None and dtype.kind not in self.kinds)
                or (self.itemsize is not None and dtype.itemsize != self.itemsize)
                or (self.channels is not None and (not shape or shape[-1] not in self.channels)))


IMAGES = ArraySpec("uint8 images [N, H, W, C] with C in 1, 3", ndims=(4,), kinds="u", itemsize=1, channels=(1, 3))
INTEGERS = ArraySpec("integers [N]", ndims=(1,), kinds="iu")
FEATURES = ArraySpec("finite float features [N, F]", ndims=(2,), kinds="f", finite=True)


def human_bytes(count: int) -> str:
    """1536 -> '1.5 KiB'."""
    size, unit = float(count), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024:
            break
        size /= 1024
    return f"{count} bytes" if unit == "bytes" else f"{size:.1f} {unit}"


class NpzReader:
    """An .npz opened for checked reads: `files` lists its arrays, `load` reads some of them."""

    def __init__(self, path, what: str, max_bytes: int = MAX_ARRAY_BYTES):
        self.path, self.what, self.max_bytes = Path(path), what, max_bytes
        self.archive = self._open()
        self.members = {info.filename[:-4]: info for info in self.archive.infolist() if info.filename.endswith(".npy")}
        self.files = list(self.members)

    def _open(self) -> zipfile.ZipFile:
        with open(self.path, "rb") as handle:  # FileNotFoundError and the like name the file already
            start = handle.read(6)
        if start == b"\x93NUMPY":
            raise ValueError(f"{self.path} is not a .npz file, as {self.what} must be, but a single .npy array")
        if start[:4] not in _ZIP_MAGIC:
            raise ValueError(f"{self.path} is not a .npz file, as {self.what} must be")
        try:
            return zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            raise ValueError(f"{self.path} is not a readable .npz file, as {self.what} must be: {error}") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.archive.close()

    def load(self, names=None, specs: dict | None = None) -> dict[str, np.ndarray]:
        """The named arrays (default: all); every header is checked before any array is read."""
        names = self.files if names is None else list(names)
        missing = [name for name in names if name not in self.members]
        if missing:
            raise ValueError(f"{self.path} is missing the array(s) {', '.join(missing)} of {self.what}; it holds "
                             f"{', '.join(self.files) or 'none'}")
        specs = specs or {}
        declared = sum(self._check_header(name, specs.get(name)) for name in names)
        if declared > self.max_bytes:
            raise ValueError(f"{self.path}: the arrays of {self.what} declare {human_bytes(declared)} together, more "
                             f"than the {human_bytes(self.max_bytes)} one read may take")
        arrays = {name: self._read(name) for name in names}
        for name in names:
            if specs.get(name) is not None and specs[name].finite:
                self._check_finite(name, arrays[name])
        return arrays

    def _refuse(self, name: str, problem: str):
        raise ValueError(f"{self.path}: array {name!r} of {self.what} {problem}")

    def _check_header(self, name: str, spec: ArraySpec | None) -> int:
        """The bytes the array declares, once its member and header pass every check."""
        info = self.members[name]
        limit = human_bytes(self.max_bytes)
        if info.file_size > self.max_bytes + 2**20:  # the .npy header is far below 1 MiB
            self._refuse(name, f"declares {human_bytes(info.file_size)} in the archive, more than the {limit} "
                               f"an array may have")
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > max(EXPANSION_FLOOR,
                                                                            MAX_EXPANSION * info.compress_size):
            self._refuse(name, f"expands {human_bytes(info.compress_size)} to {human_bytes(info.file_size)}, more "
                               f"than {MAX_EXPANSION}x (a zip bomb?)")
        shape, dtype, header_bytes = self._header(name)
        declared = math.prod(shape) * dtype.itemsize
        if declared > self.max_bytes:
            self._refuse(name, f"declares shape {list(shape)} {dtype} ({human_bytes(declared)}), more than the "
                               f"{limit} an array may have")
        if header_bytes + declared > info.file_size:
            self._refuse(name, f"declares shape {list(shape)} {dtype} ({human_bytes(declared)}) but holds only "
                               f"{human_bytes(info.file_size - header_bytes)} (cut short or forged)")
        if spec is not None and spec.problem(shape, dtype):
            self._refuse(name, f"must be {spec.meaning}, got {dtype} {list(shape)}")
        return declared

    def _header(self, name: str) -> tuple[tuple, np.dtype, int]:
        try:
            with self.archive.open(self.members[name]) as member:
                version = npy_format.read_magic(member)
                reader = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}.get(version)
                if reader is None:
                    raise ValueError(f"unsupported .npy format version {version}")
                shape, _, dtype = reader(member)
                header_bytes = member.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            self._refuse(name, f"is not a readable .npy array: {error}")
        if dtype.hasobject:
            self._refuse(name, "holds Python objects, which are never read (they would be unpickled)")
        return tuple(shape), dtype, header_bytes

    def _read(self, name: str) -> np.ndarray:
        try:
            with self.archive.open(self.members[name]) as member:
                return npy_format.read_array(member, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"cannot read {self.path} ({self.what}): {error}") from None

    def _check_finite(self, name: str, array: np.ndarray) -> None:
        bad = ~np.isfinite(array)
        if bad.any():
            first = np.unravel_index(int(np.argmax(bad)), array.shape)
            self._refuse(name, f"holds {int(bad.sum())} NaN or Inf value(s), the first at index "
                               f"{[int(i) for i in first]}; they must all be finite")


def load_npz(path, names=None, what: str = "an .npz file", specs: dict | None = None) -> dict[str, np.ndarray]:
    """The named arrays (default: all) of an .npz, each checked as NpzReader does; a ValueError naming the file
    if it is not such an .npz. `what` says what the file should be, e.g. "a sample shard"."""
    with NpzReader(path, what) as reader:
        return reader.load(names, specs)
