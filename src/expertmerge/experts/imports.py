"""Experts made elsewhere, converted once into our checkpoint format (`save_expert`/`load_expert`).

Formats (`import_expert(source, fmt, ...)`):

* "edm-pickle": an NVlabs EDM network pickle, e.g. `edm-cifar10-32x32-uncond-vp.pkl`. Read by the
  restricted unpickler (no code from the file runs); the network is rebuilt as our VPPrecond from the
  constructor arguments the pickle records, and its weights must fill it exactly.
* "vdm-checkpoint": a `model.pt` of the PyTorch VDM re-implementation (or a bare U-Net state
  dict), read with `torch.load(weights_only=True)`. Its U-Net's size (channels, blocks, input
  channels, Fourier features, attention everywhere) is read off the weight shapes; the heads and
  groups that shapes cannot show are the re-implementation's defaults unless `network` says otherwise.
* "expertmerge": one of our own checkpoints (a stem), loaded and written again.

The expert's valid gamma range is the caller's (config.yaml's noise range), not the file's.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..downloads import verify_file
from ..networks.ddpmpp import VPPrecond
from ..networks.vdm_unet import VDMUNet, load_vdm_checkpoint_state
from .checkpoint import expert_constants, load_expert, save_expert
from .edm_pickle import read_edm_snapshot

FORMATS = ("edm-pickle", "vdm-checkpoint", "expertmerge")
FORMAT_FAMILIES = {"edm-pickle": "edm", "vdm-checkpoint": "vdm"}
# NVlabs' constructor arguments that change nothing once the weights are in float32.
EDM_IGNORED_KWARGS = ("use_fp16",)


def import_expert(source, fmt: str, out_stem, *, family: str, gamma_min: float, gamma_max: float,
                  image_shape=None, checksum: str | None = None, network: dict | None = None) -> dict:
    """Convert the file at `source` (format `fmt`) into an expert checkpoint at `out_stem` with the
    valid range [gamma_min, gamma_max]; `checksum` ("sha256:..." or "md5:...") is verified first.
    Returns the meta written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown expert format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if FORMAT_FAMILIES.get(fmt, family) != family:
        raise ValueError(f"format {fmt!r} holds a {FORMAT_FAMILIES[fmt]!r} expert, but the expert's family is {family!r}")
    source = Path(source)
    if fmt != "expertmerge" and not source.is_file():
        raise FileNotFoundError(f"expert file {str(source)!r} does not exist")
    if checksum is not None and fmt != "edm-pickle":  # the pickle reader hashes the bytes it unpickles
        verify_file(source, checksum)
    if fmt == "edm-pickle":
        net, provenance = _edm_pickle(source, checksum)
    elif fmt == "vdm-checkpoint":
        net, provenance = _vdm_checkpoint(source, gamma_min, gamma_max, network or {})
    else:
        net, provenance = _expertmerge(source)
    meta = dict(expert_constants(family, gamma_min, gamma_max), network=provenance.pop("network"),
                net=provenance.pop("net"), imported=dict(provenance, source=source.name, format=fmt))
    if image_shape is not None:
        meta["image_shape"] = [int(n) for n in image_shape]
    save_expert(out_stem, net, meta)
    return meta


def _edm_pickle(path: Path, checksum: str | None):
    sha256 = None
    if checksum is not None:
        algorithm, _, sha256 = checksum.partition(":")
        if algorithm.lower() != "sha256":
            raise ValueError(f"an EDM pickle is checked by its sha256; got a {algorithm!r} checksum")
    snapshot = read_edm_snapshot(path, expected_sha256=sha256)
    if snapshot.class_name != "VPPrecond":
        raise ValueError(f"{path} holds a {snapshot.class_name!r} network; only VPPrecond (the paper's "
                         "edm-cifar10-32x32-uncond-vp) is supported")
    kwargs = {key: value for key, value in snapshot.init_kwargs.items() if key not in EDM_IGNORED_KWARGS}
    try:
        net = VPPrecond(**kwargs)
    except TypeError as error:
        raise ValueError(f"{path}: our VPPrecond does not take the pickle's constructor arguments: {error}") from error
    _load_exactly(net, snapshot.state, path)
    return net, dict(network="VPPrecond", net=kwargs, sha256=snapshot.sha256, class_name=snapshot.class_name,
                     ignored_kwargs={k: snapshot.init_kwargs[k] for k in EDM_IGNORED_KWARGS if k in snapshot.init_kwargs})


def vdm_architecture(state: dict) -> dict:
    """VDMUNet hyper-parameters that the weight shapes fix."""
    try:
        conv_in, conv_out = state["conv_in.weight"], state["conv_out.2.weight"]
    except KeyError as error:
        raise ValueError(f"VDM state dict lacks {error.args[0]!r}") from None
    blocks = {int(match[1]) for key in state if (match := re.match(r"down_blocks\.(\d+)\.", key))}
    input_channels = conv_out.shape[0]
    return dict(embedding_dim=conv_in.shape[0], n_blocks=len(blocks), input_channels=input_channels,
                use_fourier_features=conv_in.shape[1] != input_channels,
                attention_everywhere=any(key.startswith("down_blocks.0.attention_block.") for key in state))


def _vdm_checkpoint(path: Path, gamma_min: float, gamma_max: float, network: dict):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # tensors and containers only
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a VDM checkpoint dict")
    state = load_vdm_checkpoint_state(checkpoint)
    kwargs = {**vdm_architecture(state), **network, "gamma_min": float(gamma_min), "gamma_max": float(gamma_max)}
    net = VDMUNet(**kwargs)
    _load_exactly(net, state, path)
    return net, dict(network="VDMUNet", net=kwargs, step=int(checkpoint.get("step", -1)))


def _expertmerge(stem: Path):
    expert = load_expert(stem)  # checks the JSON and loads the weights strictly
    return expert.net, dict(network=expert.meta.get("network", "SmallUNet"), net=expert.meta["net"])


def _load_exactly(net: torch.nn.Module, state: dict, path) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"the weights in {path} do not fill the network exactly: {error}") from error
