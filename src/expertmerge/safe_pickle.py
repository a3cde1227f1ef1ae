"""A restricted unpickler: a pickle reaches only the globals its reader allows, so no code runs.

`pickle.Unpickler.find_class` is the one way a pickle can name a class or function (GLOBAL,
STACK_GLOBAL and the copyreg extension opcodes all go through it); everything else a pickle does
is building lists, dicts, tuples, strings and numbers, or calling what `find_class` returned.
`Unpickler` answers `find_class` only from its `allowed` dict ((module, name) -> object) and
raises `RefusedGlobalError` for anything else, so a file can call only what the dict maps to (and,
through BUILD, `__setstate__` of the objects those return). Persistent ids are refused too
(pickle's default when no `persistent_load` is given).
A reader subclasses it, setting `allowed` and `kind` (what kind of file it reads, for messages).
Readers: the CIFAR-10 batches (`expertmerge.datasets`) and NVlabs' EDM network pickles
(`expertmerge.experts.edm_pickle`).
"""
from __future__ import annotations

import pickle
from types import MappingProxyType


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle names a global (class or function) that the kind of file being read does not need."""

    def __init__(self, module: str, name: str, kind: str, allowed):
        self.global_name, self.kind = f"{module}.{name}", kind
        names = ", ".join(sorted(f"{m}.{n}" for m, n in allowed))
        super().__init__(f"refused global {self.global_name!r} in {kind}; allowed are: {names}")


class Unpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose `find_class` answers only `allowed`: (module, name) -> the object to use."""

    allowed = MappingProxyType({})
    kind = "a pickle"

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise RefusedGlobalError(module, name, self.kind, self.allowed) from None
