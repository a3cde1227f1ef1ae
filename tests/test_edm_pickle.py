"""The EDM pickle reader: loads NVlabs' persistence format, never runs code from the file."""
import collections
import hashlib
import os
import pickle
import pickletools

import numpy as np
import pytest
import torch

from expertmerge.downloads import ChecksumError
from expertmerge.experts.edm_pickle import ALLOWED_GLOBALS, read_edm_pickle, read_edm_snapshot
from expertmerge.safe_pickle import RefusedGlobalError

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
    def __init__(self, storage, size):
        self.storage, self.size = storage, size

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, self.size, (1,), False, collections.OrderedDict())


def test_refuses_tensor_larger_than_its_storage(tmp_path):
    storage = torch.ones(3).untyped_storage()
    typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True)
    path = tmp_path / "overrun.pkl"
    path.write_bytes(pickle.dumps(dict(ema=TensorView(typed, (100,)))))
    with pytest.raises(pickle.UnpicklingError, match="exceeds its storage of 3 elements"):
        read_edm_pickle(path)


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
