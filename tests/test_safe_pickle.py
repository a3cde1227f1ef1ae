"""The restricted unpickler both data readers share: only the allow-list's globals, nothing else."""
import io
import os
import pickle
from collections import OrderedDict

import pytest

from expertmerge.safe_pickle import RefusedGlobalError, RefusedStateError, Unpickler


class _OrderedDicts(Unpickler):
    allowed, kind = {("collections", "OrderedDict"): OrderedDict}, "a test pickle"


class _StatelessOrderedDicts(_OrderedDicts):
    stateful = ()


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


def with_attribute() -> bytes:
    """An OrderedDict with an attribute: pickle gives it back through BUILD (state = its __dict__)."""
    data = OrderedDict(a=1)
    data.note = "set by BUILD"
    return pickle.dumps(data)


def test_build_gives_state_only_to_stateful_types():
    assert _OrderedDicts(io.BytesIO(with_attribute())).load().note == "set by BUILD"  # stateful None: any, as pickle
    with pytest.raises(RefusedStateError) as error:
        _StatelessOrderedDicts(io.BytesIO(with_attribute())).load()
    assert isinstance(error.value, pickle.UnpicklingError) and error.value.type_name == "collections.OrderedDict"
    assert str(error.value) == ("refused state (pickle BUILD) for a collections.OrderedDict in a test pickle: "
                                "only these types take state: nothing")


@pytest.mark.parametrize("data", [b"", pickle.dumps([1, 2, 3])[:-3], b"\xff", b"b."])
def test_malformed_bytes_raise_unpickling_error(data):
    with pytest.raises(pickle.UnpicklingError):  # empty, truncated, unknown opcode, BUILD on an empty stack
        _OrderedDicts(io.BytesIO(data)).load()
