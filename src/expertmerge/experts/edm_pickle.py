"""Read NVlabs' EDM network pickles (`network-snapshot-*.pkl`) without executing code from them.

Safety argument. NVlabs pickles `dict(ema=net, loss_fn=..., augment_pipe=..., dataset_kwargs=...)`
where every network class is a `torch_utils.persistence` class: unpickling calls
`_reconstruct_persistent_obj(meta)`, which `exec`s the module source stored in `meta['module_src']`.
A plain `pickle.load` would run that source, and any callable a tampered file names. Here the
unpickler's `find_class` is the only way a pickle can reach a callable, and it answers only the
globals in `ALLOWED_GLOBALS` (the unpickler is an `expertmerge.safe_pickle.Unpickler` with that
allow-list), each mapped to a function of this module or to a data type:

* the persistence hook and `torch.nn.ModuleDict` become `PickledObject` records of the class name
  and the pickled `__dict__`; the module source is dropped unread;
* tensors are rebuilt here from storages that `torch.load(weights_only=True)` decodes (torch's own
  restricted unpickler, which allows the `torch.FloatStorage`-style storage classes of the legacy
  format), as views that must neither overlap themselves nor leave their storage, so a tensor has
  no more elements than its storage holds; `requires_grad` and hooks are dropped;
* `OrderedDict`, `numpy.dtype` (from a string) and numpy scalars of non-object dtypes are data.

Every other global raises `RefusedGlobalError` (of `safe_pickle`). The remaining pickle opcodes
only build lists, dicts, tuples, strings and numbers, or call what `find_class` returned; BUILD
(state) reaches only `PickledObject`s (their `__dict__`) and a numpy dtype's own state, and raises
`RefusedStateError` on anything else, tensors included (`Tensor.__setstate__` calls `set_()`,
which would skip the checks above). So nothing from the file can run.
"""
from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import safe_pickle
from ..downloads import ChecksumError

try:
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar as _np_scalar


class PickledObject:
    """An object as the pickle describes it: its class name and its `__dict__`, never its class or code."""
    class_name = "?"
    state = None

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state

    def __setstate__(self, state):  # pickle's BUILD for objects made by NEWOBJ
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.class_name} state must be a dict, got {type(state).__name__}")
        self.state = state

    def __repr__(self):
        return f"PickledObject({self.class_name})"


class PickledModuleDict(PickledObject):
    class_name = "torch.nn.ModuleDict"


def _persistent_object(meta) -> PickledObject:
    """Stands in for `torch_utils.persistence._reconstruct_persistent_obj`: keeps the state, ignores module_src."""
    if not (isinstance(meta, dict) and isinstance(meta.get("class_name"), str) and isinstance(meta.get("state"), dict)):
        raise pickle.UnpicklingError("persistent object meta must be a dict with a str 'class_name' and a dict 'state'")
    return PickledObject(meta["class_name"], meta["state"])


def _load_storage(data) -> torch.storage.TypedStorage:
    """Stands in for `torch.storage._load_from_bytes`: a legacy torch.save of one storage, read weights-only."""
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"storage payload must be bytes, got {type(data).__name__}")
    storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"storage payload holds a {type(storage).__name__}, not a torch storage")
    return storage


def _naturals(values) -> bool:
    return isinstance(values, tuple) and all(type(v) is int and v >= 0 for v in values)


def _check_view(storage, offset, size, stride):
    """Refuse a view that overlaps itself or leaves `storage`: the copy made later allocates every element."""
    what = f"tensor of size {size}, stride {stride}, offset {offset}"
    numel = storage._untyped_storage.nbytes() // storage.dtype.itemsize
    if math.prod(size) > numel - offset:  # more elements than the storage holds can only be repeats or overruns
        raise pickle.UnpicklingError(f"{what} has {math.prod(size)} elements: exceeds its storage of {numel} elements")
    if not all(size):  # empty: reads nothing
        return
    reach = 1  # how many elements the dimensions of smaller stride span
    for s, n in sorted((s, n) for n, s in zip(size, stride) if n > 1):  # dimensions of size 1 never step
        if s == 0:  # would repeat one element: a few stored bytes could claim terabytes
            raise pickle.UnpicklingError(f"{what} repeats elements (stride 0 on a dimension of size {n})")
        if s < reach:  # a step inside the faster dimensions' span lands on elements already in the view
            raise pickle.UnpicklingError(f"{what} overlaps itself (stride {s} < {reach}, the span of its faster dimensions)")
        reach += (n - 1) * s
    if offset + reach > numel:  # the last element must lie inside the storage
        raise pickle.UnpicklingError(f"{what} reaches element {offset + reach - 1}: exceeds its storage of {numel} elements")


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """Stands in for `torch._utils._rebuild_tensor_v2`: a view of `storage`, checked to lie inside it."""
    if not (isinstance(storage, torch.storage.TypedStorage) and type(offset) is int and offset >= 0
            and _naturals(size) and _naturals(stride) and len(size) == len(stride)):
        raise pickle.UnpicklingError(f"malformed tensor: offset {offset!r}, size {size!r}, stride {stride!r} "
                                     "(a storage and non-negative ints, one stride per dimension)")
    if metadata:
        raise pickle.UnpicklingError(f"tensor metadata {metadata!r} is not supported (plain CPU tensors only)")
    _check_view(storage, offset, size, stride)
    return torch.tensor([], dtype=storage.dtype).set_(storage._untyped_storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> torch.Tensor:
    """Stands in for `torch._utils._rebuild_parameter`: a state dict holds the data only."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"parameter data must be a tensor, got {type(data).__name__}")
    return data


def _numpy_dtype(spec, align=False, copy=False) -> np.dtype:
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"numpy dtype must be given by a string, got {type(spec).__name__}")
    return np.dtype(spec, align=bool(align), copy=bool(copy))


def _numpy_scalar(dtype, data=None):
    if not (isinstance(dtype, np.dtype) and not dtype.hasobject and isinstance(data, bytes)):
        raise pickle.UnpicklingError(f"only numpy scalars of plain dtypes from bytes are allowed, got {dtype!r}")
    return _np_scalar(dtype, data)


ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
    ("torch.nn.modules.container", "ModuleDict"): PickledModuleDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


class _EDMUnpickler(safe_pickle.Unpickler):
    allowed, kind = ALLOWED_GLOBALS, "an EDM network pickle"
    stateful = (PickledObject, np.dtype)  # modules get their __dict__; numpy pickles a dtype with its state

    def check_state(self, obj, state):
        super().check_state(obj, state)
        own = obj.__reduce__()[2] if isinstance(obj, np.dtype) else None
        # other state could turn a dtype into one with object fields, any offsets or any item size
        if own is not None and not (type(state) is tuple and len(state) == len(own)
                                    and all(type(a) is type(b) and a == b for a, b in zip(state, own))):
            raise safe_pickle.RefusedStateError(obj, self.kind, f"{obj!r} may take only its own state {own!r}")


def _load(file) -> dict:
    data = _EDMUnpickler(file).load()
    if not isinstance(data, dict) or not isinstance(data.get("ema"), PickledObject):
        keys = sorted(map(repr, data)) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"not an EDM network pickle: expected a dict with an 'ema' network, got {keys}")
    return data


def _state_items(module: PickledObject, prefix: str = "", path: tuple = ()):
    """(name, tensor) in `Module.state_dict()` order: own parameters, persistent buffers, then submodules."""
    state = module.state if isinstance(module, PickledObject) else None
    if not isinstance(state, dict) or not all(isinstance(state.get(k), dict) for k in ("_parameters", "_buffers", "_modules")):
        raise ValueError(f"{prefix or 'ema'} is not a torch module (needs dicts _parameters, _buffers, _modules): {module!r}")
    if id(module) in path:
        raise ValueError(f"module {prefix!r} contains itself")
    non_persistent = state.get("_non_persistent_buffers_set", set())
    for group, skip in (("_parameters", ()), ("_buffers", non_persistent)):
        for name, tensor in state[group].items():
            if tensor is not None and name not in skip:
                if not isinstance(tensor, torch.Tensor):
                    raise ValueError(f"{prefix}{name} is a {type(tensor).__name__}, not a tensor")
                yield prefix + name, tensor.detach().clone(memory_format=torch.contiguous_format)
    for name, child in state["_modules"].items():
        if child is not None:
            yield from _state_items(child, f"{prefix}{name}.", path + (id(module),))


@dataclass(frozen=True)
class EDMSnapshot:
    """What an NVlabs pickle holds for the `ema` network, as data."""
    state: dict            # name -> tensor, as `net.state_dict()` names them
    class_name: str        # e.g. "VPPrecond"
    init_kwargs: dict      # the constructor's keyword arguments, as the persistence wrapper recorded them
    sha256: str            # of the file's bytes


def read_edm_snapshot(path, expected_sha256: str | None = None) -> EDMSnapshot:
    """Read the `ema` network of an NVlabs EDM pickle. With `expected_sha256` a file whose digest
    differs raises ChecksumError before anything is unpickled (the same bytes are hashed and read)."""
    blob = Path(path).read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ChecksumError(f"sha256 checksum mismatch for {path}: expected {expected_sha256.lower()}, got {digest}")
    ema = _load(io.BytesIO(blob))["ema"]
    init_kwargs = ema.state.get("_init_kwargs") or {}
    if not isinstance(init_kwargs, dict):
        raise ValueError(f"{path}: the ema network's _init_kwargs is a {type(init_kwargs).__name__}, not a dict")
    return EDMSnapshot(dict(_state_items(ema)), ema.class_name, dict(init_kwargs), digest)


def read_edm_pickle(path) -> dict[str, torch.Tensor]:
    """The `ema` network's state dict (names as `net.state_dict()` gives them) from an NVlabs EDM pickle."""
    return read_edm_snapshot(path).state
