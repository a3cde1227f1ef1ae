"""The EDM pickle reader: loads NVlabs' persistence format, never runs code from the file."""
import collections
import hashlib
import io
import os
import pickle
import pickletools
import time

import numpy as np
import pytest
import torch

from expertmerge.downloads import ChecksumError
from expertmerge.experts.edm_pickle import ALLOWED_GLOBALS, _EDMUnpickler, read_edm_pickle, read_edm_snapshot
from expertmerge.safe_pickle import RefusedGlobalError, RefusedStateError

ENV_FLAG = "EXPERTMERGE_TEST_EDM_SOURCE_RAN"


def module_source(marker) -> str:
    """Source whose execution leaves a file and an environment variable behind."""
    return f"import os\nopen({str(marker)!r}, 'w').write('ran')\nos.environ[{ENV_FLAG!r}] = '1'\n"


def persistent_classes(persistence, source):
    """Classes that pickle the way NVlabs' `persistent_class` does: reconstruct call + module source + __dict__."""

    class Persistent:
        def __init__(self, **kwargs):
            super().__init__()
            self._init_args, self._init_kwargs = (), kwargs

        def __reduce__(self):
            state = super().__reduce__()[2]  # the object's __dict__, as object.__reduce__ reports it
            meta = dict(type="class", version=6, module_src=source, class_name=type(self).__name__, state=state)
            return persistence._reconstruct_persistent_obj, (meta,)

    class Conv2d(Persistent, torch.nn.Module):
        def __init__(self, cin, cout, down=False):
            super().__init__(cin=cin, cout=cout, down=down)
            self.weight = torch.nn.Parameter(torch.randn(cout, cin, 3, 3))
            self.bias = torch.nn.Parameter(torch.randn(cout))
            self.register_buffer("resample_filter", torch.full((1, 1, 2, 2), 0.25) if down else None)
            self.register_buffer("scratch", torch.zeros(2), persistent=False)

    class FourierEmbedding(Persistent, torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("freqs", torch.randn(3))

    class SongUNet(Persistent, torch.nn.Module):
        def __init__(self):
            super().__init__(model_channels=4, skip_scale=np.sqrt(0.5))
            self.skip_scale = np.sqrt(0.5)  # a numpy float64, as in NVlabs' UNetBlock
            self.map_noise = FourierEmbedding()
            self.enc = torch.nn.ModuleDict()
            self.enc["32x32_conv"] = Conv2d(3, 4)
            self.enc["16x16_down"] = Conv2d(4, 4, down=True)

    class VPPrecond(Persistent, torch.nn.Module):
        def __init__(self):
            super().__init__(img_resolution=32, model_type="SongUNet")
            self.beta_d = 19.9
            self.model = SongUNet()

    class VPLoss(Persistent):
        def __init__(self):
            super().__init__(beta_d=19.9)
            self.beta_d = 19.9

    return VPPrecond, VPLoss


def edm_pickle(tmp_path, persistence, marker, protocol=pickle.DEFAULT_PROTOCOL):
    """(path, net) of a snapshot pickled as NVlabs' training loop does."""
    torch.manual_seed(0)
    VPPrecond, VPLoss = persistent_classes(persistence, module_source(marker))
    net = VPPrecond().eval().requires_grad_(False)
    data = dict(ema=net, loss_fn=VPLoss(), augment_pipe=None, dataset_kwargs=dict(path="cifar10.zip", xflip=False))
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path, net


def pickle_globals(blob: bytes) -> set:
    """The (module, name) pairs a pickle looks up, read from its opcodes (nothing is loaded)."""
    found, memo, recent = set(), {}, []  # recent: what each opcode pushed, when it is a string
    for opcode, argument, _ in pickletools.genops(blob):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            recent.append(argument)
        elif opcode.name in ("BINGET", "LONG_BINGET", "GET"):
            recent.append(memo.get(argument))
        elif opcode.name == "MEMOIZE":
            memo[len(memo)] = recent[-1]
        elif opcode.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[argument] = recent[-1]
        elif opcode.name == "STACK_GLOBAL":
            found.add(tuple(recent[-2:]))
            recent.append(None)
        elif opcode.name == "GLOBAL":
            found.add(tuple(argument.split(" ", 1)))
            recent.append(None)
        else:
            recent.append(None)
    return found


@pytest.fixture
def clean_environment(monkeypatch):
    monkeypatch.delenv(ENV_FLAG, raising=False)


def test_module_source_side_effect_is_observable(tmp_path, clean_environment):
    """The marker source really leaves its traces when executed, so their absence below means something."""
    marker = tmp_path / "executed"
    exec(module_source(marker), {})
    assert marker.read_text() == "ran" and os.environ.get(ENV_FLAG) == "1"


@pytest.mark.parametrize("protocol", [pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_reads_ema_state_dict_without_running_module_source(tmp_path, persistence, clean_environment, protocol):
    marker = tmp_path / "executed"
    path, net = edm_pickle(tmp_path, persistence, marker, protocol)
    assert pickle_globals(path.read_bytes()) == {  # what this torch pickles; all on the allow list
        ("torch_utils.persistence", "_reconstruct_persistent_obj"), ("torch.nn.modules.container", "ModuleDict"),
        ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
        ("torch.storage", "_load_from_bytes"), ("collections", "OrderedDict"), ("numpy", "dtype"),
        (np.float64(0).__reduce__()[0].__module__, "scalar")} <= set(ALLOWED_GLOBALS)

    state = read_edm_pickle(path)

    expected = net.state_dict()
    assert list(state) == list(expected)  # same names, same order, no None or non-persistent buffers
    assert "model.enc.32x32_conv.weight" in state and "model.enc.16x16_down.resample_filter" in state
    assert not any(name.endswith("scratch") for name in state)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor) and state[name].dtype == tensor.dtype
    assert not marker.exists() and ENV_FLAG not in os.environ


class SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class ExecCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (module_source(self.marker),)


@pytest.mark.parametrize("payload, refused", [
    (SystemCall, f"{os.system.__module__}.system"),
    (ExecCall, "builtins.exec"),
    (lambda marker: torch.nn.Identity(), "torch.nn.modules.linear.Identity"),
])
def test_refuses_other_globals_and_runs_nothing(tmp_path, persistence, clean_environment, payload, refused):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(dict(ema=torch.nn.ModuleDict(), extra=[payload(marker)])))
    with pytest.raises(RefusedGlobalError, match=refused.replace(".", r"\.")) as error:
        read_edm_pickle(path)
    assert isinstance(error.value, pickle.UnpicklingError) and error.value.global_name == refused
    assert not marker.exists() and ENV_FLAG not in os.environ


class StorageFrom:
    """Pickles as the storage loader applied to chosen bytes (a tampered legacy storage blob)."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.payload,)


def test_storage_bytes_are_loaded_weights_only(tmp_path, clean_environment):
    marker = tmp_path / "executed"
    path = tmp_path / "evil-storage.pkl"
    path.write_bytes(pickle.dumps(dict(ema=StorageFrom(pickle.dumps(SystemCall(marker), protocol=2)))))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):  # torch's restricted unpickler
        read_edm_pickle(path)
    assert not marker.exists()


class TensorView:
    """Pickles as `_rebuild_tensor_v2` of a view of `storage`, followed by BUILD with `state` if one is given."""

    def __init__(self, storage, size, stride=(1,), offset=0, state=None):
        self.storage, self.size, self.stride, self.offset, self.state = storage, size, stride, offset, state

    def __reduce__(self):
        args = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args) + ((self.state,) if self.state is not None else ())


class Rebuilt:
    """Pickles as `function(*args)` followed by BUILD with `state`."""

    def __init__(self, function, args, state):
        self.function, self.args, self.state = function, args, state

    def __reduce__(self):
        return self.function, self.args, self.state


def float_storage(n: int) -> torch.storage.TypedStorage:
    """A float32 storage of 0, 1, ..., n - 1, pickled as NVlabs' pickles hold one."""
    return torch.storage.TypedStorage(wrap_storage=torch.arange(n, dtype=torch.float32).untyped_storage(),
                                      dtype=torch.float32, _internal=True)


def unpickle(obj):
    """`obj` pickled and read by the EDM reader, without the copy that `read_edm_pickle` makes of each tensor
    (a check missing here then hands back a view rather than allocating what the view claims)."""
    return _EDMUnpickler(io.BytesIO(pickle.dumps(obj))).load()


def test_refuses_tensor_larger_than_its_storage(tmp_path):
    path = tmp_path / "overrun.pkl"
    path.write_bytes(pickle.dumps(dict(ema=TensorView(float_storage(3), (100,)))))
    with pytest.raises(pickle.UnpicklingError, match="exceeds its storage of 3 elements"):
        read_edm_pickle(path)


@pytest.mark.parametrize("size, stride, offset, refusal", [
    ((10**12,), (0,), 0, r"has 1000000000000 elements: exceeds its storage of 4 elements"),  # 4 TB from 16 bytes
    ((10**6, 10**6), (1, 0), 0, r"has 1000000000000 elements: exceeds its storage of 4 elements"),
    ((2, 2), (0, 1), 0, r"repeats elements \(stride 0 on a dimension of size 2\)"),
    ((2, 2), (1, 1), 0, r"overlaps itself \(stride 1 < 2, the span of its faster dimensions\)"),
    ((2, 2), (2, 1), 1, r"has 4 elements: exceeds its storage of 4 elements"),  # every element but one in bounds
    ((5,), (1,), 0, r"has 5 elements: exceeds its storage of 4 elements"),
    ((2,), (4,), 0, r"reaches element 4: exceeds its storage of 4 elements"),
    ((4,), (-1,), 3, r"malformed tensor: .*stride \(-1,\)"),
    ((2, 2), (2, 1), -1, r"malformed tensor: offset -1"),
])
def test_refuses_views_that_overlap_or_leave_their_storage(size, stride, offset, refusal):
    started = time.perf_counter()
    with pytest.raises(pickle.UnpicklingError, match=refusal) as error:
        unpickle(dict(ema=TensorView(float_storage(4), size, stride, offset)))
    assert not isinstance(error.value, RefusedGlobalError) and time.perf_counter() - started < 5


@pytest.mark.parametrize("tensor", [
    torch.arange(24.0).reshape(2, 3, 4).permute(2, 0, 1),  # permuted: not contiguous, not overlapping
    torch.arange(24.0).reshape(1, 2, 3, 4).contiguous(memory_format=torch.channels_last),
    torch.arange(10.0)[2:8:2],  # offset and a gap between elements
    torch.arange(4.0).as_strided((1, 4), (100, 1)),  # a dimension of size 1 (it never steps) with a stride of 100
    torch.zeros(0, 3),
    torch.nn.Parameter(torch.arange(6.0).reshape(2, 3).t()),
])
def test_loads_dense_views_with_their_layout(tensor):
    loaded = unpickle(dict(ema=tensor))["ema"]
    assert torch.equal(loaded, tensor.detach()) and loaded.stride() == tensor.stride()
    assert loaded.storage_offset() == tensor.storage_offset()


@pytest.mark.parametrize("target, refused", [
    (TensorView(float_storage(4), (4,), state=(float_storage(4), 0, (16,), (1,))), "torch.Tensor"),
    (Rebuilt(torch._utils._rebuild_parameter, (TensorView(float_storage(4), (4,)), False, collections.OrderedDict()),
             (float_storage(4), 0, (16,), (1,))), "torch.Tensor"),
    (Rebuilt(collections.OrderedDict, (), {"items": "set by BUILD"}), "collections.OrderedDict"),
])
def test_refuses_state_on_objects_not_allowed_state(monkeypatch, target, refused):
    """BUILD on a rebuilt tensor would call `Tensor.__setstate__`, whose `set_()` re-points the 4-element
    view at 16 elements, past the storage: refused before any state is applied."""
    monkeypatch.setattr(torch.Tensor, "__setstate__", lambda self, state: pytest.fail("tensor state applied"))
    with pytest.raises(RefusedStateError, match="only these types take state: "
                       r"expertmerge\.experts\.edm_pickle\.PickledObject, numpy\.dtype") as error:
        unpickle(dict(ema=target))
    assert error.value.type_name == refused and str(error.value).startswith(
        f"refused state (pickle BUILD) for a {refused} in an EDM network pickle: ")


def test_refuses_numpy_dtype_state_other_than_its_own():
    """A dtype's state can give it object fields (or any item size): only the state it has is let through."""
    object_fields = (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0x3F)
    with pytest.raises(RefusedStateError, match=r"dtype\('V8'\) may take only its own state"):
        unpickle(dict(ema=Rebuilt(np.dtype, ("V8", False, True), object_fields)))
    assert unpickle(np.float32(1.5)) == np.float32(1.5)  # numpy's own dtype state


def test_refuses_pickle_without_ema_network(tmp_path):
    path = tmp_path / "no-ema.pkl"
    path.write_bytes(pickle.dumps(dict(loss_fn=None)))
    with pytest.raises(ValueError, match="'ema'.*'loss_fn'"):
        read_edm_pickle(path)


def test_snapshot_records_class_arguments_and_digest(tmp_path, persistence, clean_environment):
    path, net = edm_pickle(tmp_path, persistence, tmp_path / "executed")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    snapshot = read_edm_snapshot(path, expected_sha256=digest)
    assert snapshot.sha256 == digest and snapshot.class_name == "VPPrecond"
    assert snapshot.init_kwargs == {"img_resolution": 32, "model_type": "SongUNet"}
    assert all(torch.equal(snapshot.state[name], tensor) for name, tensor in net.state_dict().items())
    assert not (tmp_path / "executed").exists()


def test_wrong_checksum_is_refused_before_unpickling(tmp_path, persistence, monkeypatch):
    path, _ = edm_pickle(tmp_path, persistence, tmp_path / "executed")
    monkeypatch.setattr("expertmerge.experts.edm_pickle._EDMUnpickler.load", lambda self: pytest.fail("unpickled"))
    with pytest.raises(ChecksumError, match="expected 0{64}"):
        read_edm_snapshot(path, expected_sha256="0" * 64)


def test_the_cli_refuses_a_hostile_pickle_in_one_line(tmp_path, persistence, clean_environment):
    """import-expert of a pickle that names os.system: one line naming the refused global, nothing run or written."""
    import subprocess
    import sys
    from pathlib import Path

    marker = tmp_path / "executed"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(dict(ema=torch.nn.ModuleDict(), extra=[SystemCall(marker)])))
    out = tmp_path / "out" / "edm"
    result = subprocess.run([str(Path(sys.executable).parent / "expertmerge"), "import-expert", "--format", "edm-pickle",
                             "--input", str(path), "--family", "edm", "--gamma-min", "-12.43", "--gamma-max", "8.764",
                             "--image-shape", "3", "32", "32", "--out", str(out)],
                            capture_output=True, text=True)
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert result.returncode != 0 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "RefusedGlobalError" in errors[0] and "system" in errors[0]
    assert not marker.exists() and not list((tmp_path / "out").glob("*"))
