"""Experts imported from other code bases: an NVlabs-format pickle of a DDPM++ VPPrecond and a
checkpoint of the VDM re-implementation become expert checkpoints that denoise exactly as the source.
(NVlabs' VEPrecond and EDMPrecond pickles: test_edm_preconditionings.)"""
import hashlib
import json
import os
import pickle

import pytest
import torch

from expertmerge.downloads import ChecksumError
from expertmerge.experts import edm
from expertmerge.experts.checkpoint import load_expert
from expertmerge.experts.imports import import_expert
from expertmerge.experts.vdm import vdm_architecture
from expertmerge.experts.vdm import VDMExpert
from expertmerge.networks.nvlabs_precond import VPPrecond
from expertmerge.networks.vdm_unet import VDMUNet
from expertmerge.experts.registry import get_family

SMALL_DDPMPP = dict(img_resolution=8, img_channels=3, label_dim=0, augment_dim=9, model_channels=16,
                    channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.13, model_type="SongUNet",
                    embedding_type="positional", encoder_type="standard", decoder_type="standard",
                    channel_mult_noise=1, resample_filter=[1, 1])


def randomized(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised layers would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return net.eval().requires_grad_(False)


def nvlabs_pickle(path, net, init_kwargs, reconstruct, marker):
    """Pickle `net` in NVlabs' persistence format: every module but ModuleDict becomes a call of the
    persistence hook with the class name, embedded module source and the module's __dict__."""
    source = f"open({str(marker)!r}, 'w').write('ran')\n"

    class PersistencePickler(pickle.Pickler):
        def reducer_override(self, obj):
            if not isinstance(obj, torch.nn.Module) or isinstance(obj, torch.nn.ModuleDict):
                return NotImplemented
            state = dict(obj.__dict__, **({"_init_kwargs": init_kwargs} if obj is net else {}))
            meta = dict(type="class", version=6, module_src=source, class_name=type(obj).__name__, state=state)
            return reconstruct, (meta,)

    with open(path, "wb") as file:
        PersistencePickler(file, protocol=4).dump(dict(ema=net, loss_fn=None, augment_pipe=None))
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_edm_pickle_becomes_an_expert_that_denoises_as_the_source(tmp_path, persistence):
    net = randomized(VPPrecond(**SMALL_DDPMPP), seed=0)
    checksum = nvlabs_pickle(tmp_path / "edm.pkl", net, dict(SMALL_DDPMPP, use_fp16=False),
                             persistence._reconstruct_persistent_obj, tmp_path / "executed")
    gamma_min, gamma_max = get_family("edm").gamma_range
    meta = import_expert(tmp_path / "edm.pkl", "edm-pickle", tmp_path / "experts" / "edm", family="edm",
                         gamma_min=gamma_min, gamma_max=gamma_max, image_shape=(3, 8, 8), checksum=checksum)
    assert not (tmp_path / "executed").exists()
    assert meta["network"] == "VPPrecond" and meta["imported"]["ignored_kwargs"] == {"use_fp16": False}
    assert meta["imported"]["sha256"] == checksum.split(":")[1]
    assert meta["pixels"] == {"scale": 1 / 127.5, "offset": -1.0}  # NVlabs' k/127.5 - 1
    assert meta["imported"]["native_sigma"] == [net.sigma_min, net.sigma_max]

    loaded = load_expert(tmp_path / "experts" / "edm")
    expert = edm.expert(loaded.meta, loaded.net)  # in the network's own coordinates
    x, sigma = torch.randn(4, 3, 8, 8), torch.tensor([0.002, 0.5, 3.0, 80.0])
    assert torch.equal(expert.denoise(x, sigma), net(x, sigma))
    assert loaded.image_shape == (3, 8, 8) and (expert.gamma_min, expert.gamma_max) == (gamma_min, gamma_max)


def test_edm_pickle_with_wrong_checksum_leaves_nothing(tmp_path, persistence):
    net = randomized(VPPrecond(**SMALL_DDPMPP), seed=0)
    nvlabs_pickle(tmp_path / "edm.pkl", net, SMALL_DDPMPP, persistence._reconstruct_persistent_obj, tmp_path / "x")
    with pytest.raises(ChecksumError, match="sha256 checksum mismatch"):
        import_expert(tmp_path / "edm.pkl", "edm-pickle", tmp_path / "experts" / "edm", family="edm",
                      gamma_min=-12.4, gamma_max=8.7, checksum="sha256:" + "0" * 64)
    assert not (tmp_path / "experts").exists() or not os.listdir(tmp_path / "experts")


def test_edm_pickle_whose_weights_do_not_fit_is_refused(tmp_path, persistence):
    net = randomized(VPPrecond(**SMALL_DDPMPP), seed=0)
    claimed = dict(SMALL_DDPMPP, model_channels=32)  # arguments that disagree with the weights
    nvlabs_pickle(tmp_path / "edm.pkl", net, claimed, persistence._reconstruct_persistent_obj, tmp_path / "x")
    with pytest.raises(ValueError, match="do not fill the network exactly"):
        import_expert(tmp_path / "edm.pkl", "edm-pickle", tmp_path / "out" / "edm", family="edm", gamma_min=-12.4,
                      gamma_max=8.7)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("architecture", [dict(use_fourier_features=True, attention_everywhere=False, n_blocks=2),
                                          dict(use_fourier_features=False, attention_everywhere=True, n_blocks=1)])
def test_vdm_checkpoint_becomes_an_expert_that_denoises_as_the_source(tmp_path, architecture):
    kwargs = dict(embedding_dim=32, norm_groups=8, input_channels=3, **architecture)
    net = randomized(VDMUNet(**kwargs), seed=1)
    state = net.state_dict()
    checkpoint = {"step": 11, "model": {"model." + k: v + 1 for k, v in state.items()},
                  "ema": {"initted": torch.tensor([1.0]), **{"ema_model.model." + k: v for k, v in state.items()}}}
    torch.save(checkpoint, tmp_path / "model.pt")
    checksum = "md5:" + hashlib.md5((tmp_path / "model.pt").read_bytes()).hexdigest()
    assert vdm_architecture(state) == {key: kwargs[key] for key in vdm_architecture(state)}

    meta = import_expert(tmp_path / "model.pt", "vdm-checkpoint", tmp_path / "vdm", family="vdm", gamma_min=-13.3,
                         gamma_max=5.0, image_shape=(3, 8, 8), checksum=checksum, network={"norm_groups": 8})
    assert meta["imported"]["step"] == 11 and meta["network"] == "VDMUNet"
    expert = load_expert(tmp_path / "vdm")
    x, s = torch.randn(3, 3, 8, 8), torch.tensor([0.01, 0.5, 5.0])
    assert torch.equal(expert.denoise(x, s), VDMExpert(net, gamma_min=-13.3, gamma_max=5.0).denoise(x, s))
    assert json.loads((tmp_path / "vdm.json").read_text())["net"]["gamma_min"] == -13.3


def test_our_own_checkpoint_round_trips_and_bad_requests_are_named(tmp_path):
    net = randomized(VDMUNet(embedding_dim=32, norm_groups=8, n_blocks=1), seed=2)
    torch.save({"ema": {"ema_model.model." + k: v for k, v in net.state_dict().items()}}, tmp_path / "model.pt")
    import_expert(tmp_path / "model.pt", "vdm-checkpoint", tmp_path / "a", family="vdm", gamma_min=-13.3, gamma_max=5.0,
                  network={"norm_groups": 8})
    import_expert(tmp_path / "a", "expertmerge", tmp_path / "b", family="vdm", gamma_min=-10.0, gamma_max=4.0)
    a, b = load_expert(tmp_path / "a"), load_expert(tmp_path / "b")
    assert (b.gamma_min, b.gamma_max) == (-10.0, 4.0)
    assert all(torch.equal(p, q) for p, q in zip(a.net.state_dict().values(), b.net.state_dict().values()))
    with pytest.raises(ValueError, match="allowed: edm-pickle, vdm-checkpoint, expertmerge"):
        import_expert(tmp_path / "model.pt", "ckpt", tmp_path / "c", family="vdm", gamma_min=-1, gamma_max=1)
    with pytest.raises(ValueError, match="holds a 'vdm' expert, but the expert's family is 'edm'"):
        import_expert(tmp_path / "model.pt", "vdm-checkpoint", tmp_path / "c", family="edm", gamma_min=-1, gamma_max=1)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        import_expert(tmp_path / "missing.pt", "vdm-checkpoint", tmp_path / "c", family="vdm", gamma_min=-1, gamma_max=1)
    with pytest.raises(ChecksumError):
        import_expert(tmp_path / "model.pt", "vdm-checkpoint", tmp_path / "c", family="vdm", gamma_min=-1, gamma_max=1,
                      checksum="sha256:" + "1" * 64)
    assert not list(tmp_path.glob("c.*"))
