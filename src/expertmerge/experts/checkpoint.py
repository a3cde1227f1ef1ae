"""Expert checkpoints: `<name>.safetensors` (weights) + `<name>.json` (everything else).

The JSON names the family ("edm" or "vdm"), the network class and its hyper-parameters, the family's
constants (sigma_data and sigma range for EDM, gamma range for VDM; gamma_min/gamma_max
are recorded for both) and free-form training information. `load_expert` rebuilds the
network from the JSON, loads the weights with safetensors (which cannot execute code) and
wraps the network as an expert. This is the only module that maps families to networks.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..files import atomic_path, write_text
from ..nets import SmallUNet
from ..networks.ddpmpp import SongUNet, VPPrecond
from ..networks.vdm_unet import VDMUNet
from ..noise import (EDM_SIGMA_MAX, EDM_SIGMA_MIN, VDM_GAMMA_MAX, VDM_GAMMA_MIN, gamma_to_noise_level,
                     noise_level_to_gamma)
from .edm import EDMExpert, EDMPrecond
from .vdm import VDMExpert

FAMILIES = ("edm", "vdm")
FORMAT = "expertmerge-expert"
VERSION = 1
VDM_LABEL_RANGE = 1000.0  # VDM feeds (gamma - gamma_min)/(gamma_max - gamma_min) * 1000 to its embedding


def family_constants(family: str, sigma_data: float = 0.5, sigma_min: float = EDM_SIGMA_MIN,
                     sigma_max: float = EDM_SIGMA_MAX, gamma_min: float = VDM_GAMMA_MIN,
                     gamma_max: float = VDM_GAMMA_MAX) -> dict:
    """The JSON fields that fix a family's preconditioning and valid range."""
    check_family(family)
    if family == "edm":
        return dict(family="edm", sigma_data=float(sigma_data), sigma_min=float(sigma_min), sigma_max=float(sigma_max),
                    gamma_min=noise_level_to_gamma(sigma_min), gamma_max=noise_level_to_gamma(sigma_max))
    return dict(family="vdm", gamma_min=float(gamma_min), gamma_max=float(gamma_max))


def expert_constants(family: str, gamma_min: float | None = None, gamma_max: float | None = None) -> dict:
    """The family's constants with its valid gamma range overridden: for VDM the training schedule,
    for EDM the sigma range it is used on (its training noise is log-normal either way)."""
    if family == "edm":
        ends = {key: gamma_to_noise_level(gamma) for key, gamma in (("sigma_min", gamma_min), ("sigma_max", gamma_max))
                if gamma is not None}
        return family_constants("edm", **ends)
    ends = {key: gamma for key, gamma in (("gamma_min", gamma_min), ("gamma_max", gamma_max)) if gamma is not None}
    return family_constants(family, **ends)


def check_family(family) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown expert family {family!r}; known families are {FAMILIES}")
    return family


def _small_unet(meta: dict, net: dict) -> torch.nn.Module:
    if meta["family"] == "edm":
        return EDMPrecond(SmallUNet(**net), sigma_data=float(meta["sigma_data"]))
    gamma_min, gamma_max = float(meta["gamma_min"]), float(meta["gamma_max"])
    if not (math.isfinite(gamma_min) and math.isfinite(gamma_max) and gamma_min < gamma_max):
        raise ValueError(f"VDM gamma range must be finite with gamma_min < gamma_max, got [{gamma_min}, {gamma_max}]")
    return SmallUNet(**net, label_offset=gamma_min, label_scale=VDM_LABEL_RANGE / (gamma_max - gamma_min))


# (family, "network" field) -> builder(meta, net hyper-parameters). The demo's checkpoints predate
# the field and mean SmallUNet; the paper's experts are DDPM++ (NVlabs' VPPrecond, or EDMPrecond
# around SongUNet when we train it) and the VDM re-implementation's U-Net.
NETWORKS = {
    ("edm", "SmallUNet"): _small_unet,
    ("vdm", "SmallUNet"): _small_unet,
    ("edm", "VPPrecond"): lambda meta, net: VPPrecond(**net),
    ("edm", "EDMPrecond(SongUNet)"): lambda meta, net: EDMPrecond(SongUNet(**net), sigma_data=float(meta["sigma_data"])),
    ("vdm", "VDMUNet"): lambda meta, net: VDMUNet(**net),  # net holds the gamma normalisation it was trained with
}


def build_network(meta: dict) -> torch.nn.Module:
    """The module a checkpoint stores, from its JSON's family, "network" (default SmallUNet) and "net"."""
    family = check_family(meta.get("family"))
    network = meta.get("network", "SmallUNet")
    if (family, network) not in NETWORKS:
        known = ", ".join(name for fam, name in NETWORKS if fam == family)
        raise ValueError(f"expert meta names network {network!r} for family {family!r}; known: {known}")
    net_kwargs = meta.get("net")
    if not isinstance(net_kwargs, dict):
        raise ValueError(f"expert meta needs 'net', a dict of {network} hyper-parameters; got {net_kwargs!r}")
    try:
        return NETWORKS[family, network](meta, net_kwargs)
    except KeyError as error:
        raise ValueError(f"expert meta of family {family!r} lacks the field {error.args[0]!r}") from error
    except TypeError as error:
        raise ValueError(f"expert meta 'net' has hyper-parameters {network} does not take: {error}") from error


def wrap_network(meta: dict, net: torch.nn.Module):
    """The expert D(x; s) around a module built by `build_network`."""
    if check_family(meta.get("family")) == "edm":
        return EDMExpert(net, sigma_min=float(meta["sigma_min"]), sigma_max=float(meta["sigma_max"]))
    return VDMExpert(net, gamma_min=float(meta["gamma_min"]), gamma_max=float(meta["gamma_max"]))


def checkpoint_paths(path, name: str | None = None) -> tuple[Path, Path]:
    """(weights, json) for a stem, a .safetensors/.json path, or a directory (then `name` names the files)."""
    path = Path(path)
    if path.is_dir():
        if not name:
            raise ValueError(f"{str(path)!r} is a directory; give a file stem such as {str(path / 'edm')!r}")
        path = path / name
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def save_expert(path, net: torch.nn.Module, meta: dict) -> Path:
    """Write `net`'s weights and `meta` (family, net hyper-parameters, ...) as <stem>.safetensors + <stem>.json.

    `meta` must rebuild a module with exactly `net`'s parameter names and shapes (checked
    here, so a checkpoint that saves always loads). Returns the .safetensors path.
    """
    meta = {**meta, "format": FORMAT, "version": VERSION}
    rebuilt = build_network(meta).state_dict()
    state = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in net.state_dict().items()}
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    expected = {key: tuple(value.shape) for key, value in rebuilt.items()}
    if shapes != expected:
        differ = sorted(set(shapes.items()) ^ set(expected.items()))[:4]
        raise ValueError(f"net does not match the network its meta describes (family {meta['family']!r}, "
                         f"net {meta['net']}); first differences (name, shape): {differ}")
    weights, record = checkpoint_paths(path, meta["family"])
    weights.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(meta, indent=1, sort_keys=True) + "\n"

    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    write_text(record, text)
    return weights


def load_expert_meta(path) -> dict:
    """The JSON of a checkpoint; a clear error if it is missing, garbled or of an unknown family."""
    _, record = checkpoint_paths(path)
    if not record.is_file():
        raise FileNotFoundError(f"expert checkpoint JSON {str(record)!r} does not exist")
    try:
        meta = json.loads(record.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"expert checkpoint JSON {str(record)!r} is not valid JSON: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{str(record)!r} is not an expertmerge expert checkpoint (needs \"format\": \"{FORMAT}\")")
    if meta.get("version") != VERSION:
        raise ValueError(f"{str(record)!r} has checkpoint version {meta.get('version')!r}; this code reads version {VERSION}")
    check_family(meta.get("family"))
    return meta


def load_expert(path, device="cpu"):
    """Rebuild the expert saved at `path` (stem, .safetensors or .json): EMA weights, eval mode, no grads.

    The expert carries `meta` (the JSON) and `image_shape` ((C, H, W) from the JSON, or None).
    """
    meta = load_expert_meta(path)
    weights, _ = checkpoint_paths(path)
    net = build_network(meta)
    if not weights.is_file():
        raise FileNotFoundError(f"expert weights {str(weights)!r} do not exist")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"cannot read expert weights {str(weights)!r}: {error}") from error
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"weights in {str(weights)!r} do not fit the network its JSON describes: {error}") from error
    net = net.to(device).eval().requires_grad_(False)
    expert = wrap_network(meta, net)
    expert.meta = meta
    expert.image_shape = tuple(meta["image_shape"]) if "image_shape" in meta else None  # (C, H, W) trained on
    return expert
