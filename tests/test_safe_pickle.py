"""The restricted unpickler both data readers share: only the allow-list's globals, nothing else."""
import io
import os
import pickle
from collections import OrderedDict

import pytest

from expertmerge.safe_pickle import RefusedGlobalError, Unpickler


class _OrderedDicts(Unpickler):
    allowed, kind = {("collections", "OrderedDict"): OrderedDict}, "a test pickle"


class _SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_allowed_globals_are_answered_from_the_allow_list():
    data = pickle.dumps(OrderedDict(a=[1, 2.5, "x"]))
    assert _OrderedDicts(io.BytesIO(data)).load() == OrderedDict(a=[1, 2.5, "x"])


@pytest.mark.parametrize("unpickler", [Unpickler, _OrderedDicts])
def test_other_globals_are_refused_naming_the_kind_and_the_allow_list(unpickler, tmp_path):
    data = pickle.dumps(_SystemCall(tmp_path / "ran"))
    with pytest.raises(RefusedGlobalError) as error:
        unpickler(io.BytesIO(data)).load()
    refused = f"{os.system.__module__}.system"
    assert isinstance(error.value, pickle.UnpicklingError) and error.value.global_name == refused
    allowed = "collections.OrderedDict" if unpickler is _OrderedDicts else ""
    assert str(error.value) == f"refused global {refused!r} in {unpickler.kind}; allowed are: {allowed}"
    assert not (tmp_path / "ran").exists()
