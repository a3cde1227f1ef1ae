"""Expert checkpoints: `<name>.safetensors` (weights) + `<name>.json` (everything else).

The JSON names the family (a name in `registry`), the network and its hyper-parameters, the
family's constants (e.g. sigma_data and the sigma range for EDM; gamma_min/gamma_max for every
family) and free-form training information. `load_expert` rebuilds the network with the family's
builder, loads the weights with safetensors (which cannot execute code) and wraps the network
with the family's adapter.

The JSON records the SHA-256 of the weights file ("weights_sha256"), checked at every load: a
flipped bit or a file cut short is refused, never used. Hashing costs ~2 s/GB (~0.5 s for the
paper's 250 MB experts) per load.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..downloads import ChecksumError, file_checksum
from ..files import atomic_path, write_text
from ..images import PixelScale
from ..noise import gamma_range
from .base import RescaledExpert
from .registry import get_family

FORMAT = "expertmerge-expert"
VERSION = 1
DIGEST = "weights_sha256"  # the JSON field holding the weights file's SHA-256


def family_module(name):
    """The module that implements the family `name` (see `registry`); a clear error for an unknown name."""
    return get_family(name).implementation()


def expert_constants(family: str, gamma_min: float | None = None, gamma_max: float | None = None) -> dict:
    """The JSON fields that fix a family's preconditioning and its valid gamma range (default: its native range)."""
    return family_module(family).constants(gamma_min, gamma_max)


def build_network(meta: dict) -> torch.nn.Module:
    """The module a checkpoint stores, from its JSON's family, "network" (default SmallUNet, which the
    demo's checkpoints predate the field with) and "net"."""
    family = family_module(meta.get("family"))
    network = meta.get("network", "SmallUNet")
    if network not in family.NETWORKS:
        raise ValueError(f"expert meta names network {network!r} for family {meta['family']!r}; "
                         f"known: {', '.join(family.NETWORKS)}")
    net_kwargs = meta.get("net")
    if not isinstance(net_kwargs, dict):
        raise ValueError(f"expert meta needs 'net', a dict of {network} hyper-parameters; got {net_kwargs!r}")
    try:
        return family.NETWORKS[network](meta, net_kwargs)
    except KeyError as error:
        raise ValueError(f"expert meta of family {meta['family']!r} lacks the field {error.args[0]!r}") from error
    except TypeError as error:
        raise ValueError(f"expert meta 'net' has hyper-parameters {network} does not take: {error}") from error


def wrap_network(meta: dict, net: torch.nn.Module):
    """The expert D(x; s) around a module built by `build_network`, in our data coordinates: a network
    trained on another pixel convention (meta "pixels", e.g. NVlabs' k/127.5 - 1) is seen through the
    exact change of variables, and its range ("gamma_min"/"gamma_max", in its own coordinates) with it."""
    expert = family_module(meta.get("family")).expert(meta, net)
    a, b = PixelScale.from_record(meta["pixels"]).from_common() if "pixels" in meta else (1.0, 0.0)
    return expert if (a, b) == (1.0, 0.0) else RescaledExpert(expert, a, b)


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
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
        meta[DIGEST] = file_checksum(tmp)  # of exactly the bytes renamed into place
    write_text(record, json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return weights


def check_weights_digest(weights: Path, record: Path, recorded) -> None:
    """ChecksumError unless the SHA-256 of `weights` is `recorded`, the digest its JSON `record` holds
    (a flipped bit, a file cut short or replaced since it was written)."""
    redo = f"re-create it: delete {weights} and {record}, then re-run the step that wrote them"
    if recorded is None:
        raise ChecksumError(f"{record} records no digest of its weights ({DIGEST!r}; written before checkpoints "
                            f"carried one), so they cannot be checked; {redo}")
    actual = file_checksum(weights)
    if actual != recorded:
        raise ChecksumError(f"{weights} is not the file its checkpoint was written with: its sha256 is {actual}, "
                            f"{record.name} records {recorded}; {redo}")


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
    get_family(meta.get("family"))
    for keys in (("sigma_min", "sigma_max"), ("gamma_min", "gamma_max")):  # a range the expert is evaluated on
        if any(key in meta for key in keys):
            try:
                gamma_range({key: meta.get(key) for key in keys})
            except ValueError as error:
                raise ValueError(f"{str(record)!r}: {error}") from None
    return meta


def load_expert(path, device="cpu"):
    """Rebuild the expert saved at `path` (stem, .safetensors or .json): EMA weights, eval mode, no grads.

    The expert carries `meta` (the JSON) and `image_shape` ((C, H, W) from the JSON, or None).
    """
    meta = load_expert_meta(path)
    weights, record = checkpoint_paths(path)
    net = build_network(meta)
    if not weights.is_file():
        raise FileNotFoundError(f"expert weights {str(weights)!r} do not exist")
    check_weights_digest(weights, record, meta.get(DIGEST))
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
    expert.name = weights.stem  # the checkpoint's file name ("edm"), for messages
    expert.image_shape = tuple(meta["image_shape"]) if "image_shape" in meta else None  # (C, H, W) trained on
    return expert
