"""A restricted unpickler: a pickle reaches only the globals its reader allows, so no code runs.

`pickle.Unpickler.find_class` is the one way a pickle can name a class or function (GLOBAL,
STACK_GLOBAL and the copyreg extension opcodes all go through it); everything else a pickle does
is building lists, dicts, tuples, strings and numbers, calling what `find_class` returned, or
BUILD, which gives state to an object (its `__setstate__`, else its `__dict__`).
`Unpickler` answers `find_class` only from its `allowed` dict ((module, name) -> object) and
raises `RefusedGlobalError` for anything else, so a file can call only what the dict maps to.
BUILD reaches only objects of the reader's `stateful` types (`check_state` may narrow it further)
and raises `RefusedStateError` for any other: a torch tensor's `__setstate__`, for one, re-points
it at any range of memory. Persistent ids are refused too (pickle's default when no
`persistent_load` is given).
A reader subclasses it, setting `allowed`, `stateful` and `kind` (what kind of file it reads, for
messages). Readers: the CIFAR-10 batches (`expertmerge.datasets`) and NVlabs' EDM network pickles
(`expertmerge.experts.edm_pickle`).
"""
from __future__ import annotations

import pickle
import struct
from types import MappingProxyType


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle names a global (class or function) that the kind of file being read does not need."""

    def __init__(self, module: str, name: str, kind: str, allowed):
        self.global_name, self.kind = f"{module}.{name}", kind
        names = ", ".join(sorted(f"{m}.{n}" for m, n in allowed))
        super().__init__(f"refused global {self.global_name!r} in {kind}; allowed are: {names}")


class RefusedStateError(pickle.UnpicklingError):
    """A pickle gives state (BUILD, i.e. `__setstate__`) to an object that the kind of file being read lets take none."""

    def __init__(self, obj, kind: str, why: str):
        self.type_name, self.kind = _type_name(type(obj)), kind
        super().__init__(f"refused state (pickle BUILD) for a {self.type_name} in {kind}: {why}")


class Unpickler(pickle._Unpickler):  # the pure-Python unpickler: the C one's BUILD cannot be overridden
    """`pickle.Unpickler` whose `find_class` answers only `allowed`: (module, name) -> the object to use,
    and whose BUILD gives state only to objects of the `stateful` types (None: any, as pickle does)."""

    allowed = MappingProxyType({})
    stateful: tuple | None = None
    kind = "a pickle"

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise RefusedGlobalError(module, name, self.kind, self.allowed) from None

    def check_state(self, obj, state):
        """Raise `RefusedStateError` unless BUILD may give `obj` this `state`; readers may narrow it further."""
        if self.stateful is not None and not isinstance(obj, self.stateful):
            names = ", ".join(sorted(map(_type_name, self.stateful))) or "nothing"
            raise RefusedStateError(obj, self.kind, f"only these types take state: {names}")

    def _load_build(self):
        self.check_state(self.stack[-2], self.stack[-1])  # BUILD's operands: the object, then its state
        pickle._Unpickler.load_build(self)

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: _load_build}

    def load(self):
        try:
            return super().load()
        except (EOFError, IndexError, KeyError, struct.error) as error:  # how the pure-Python unpickler fails on bad bytes
            raise pickle.UnpicklingError(f"{self.kind} is malformed or truncated ({error!r})") from error
