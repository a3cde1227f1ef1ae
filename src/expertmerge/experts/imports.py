"""Experts made elsewhere, converted once into our checkpoint format (`save_expert`/`load_expert`).

`import_expert(source, fmt, ...)` reads a format through the importer of the family that owns it
(`registry`: "edm-pickle" is EDM's, "vdm-checkpoint" VDM's; see each family's module), or
"expertmerge", one of our own checkpoints (a stem), loaded and written again. The importer rebuilds
the network; its weights must fill it exactly.

The expert's valid gamma range is the caller's (config.yaml's noise range, in the expert's own data
scale), not the file's. An importer may return `pixels`, the data convention its network was trained
on (`images.PixelScale.record()`); it is stored in the checkpoint's JSON.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import expert_constants, family_module, load_expert, save_expert
from .registry import OWN_FORMAT, format_family


def import_expert(source, fmt: str, out_stem, *, family: str, gamma_min: float, gamma_max: float,
                  image_shape=None, checksum: str | None = None, network: dict | None = None) -> dict:
    """Convert the file at `source` (format `fmt`) into an expert checkpoint at `out_stem` with the
    valid range [gamma_min, gamma_max]; `checksum` ("sha256:..." or "md5:...") is verified first.
    Returns the meta written."""
    owner = format_family(fmt)  # None for our own format
    if owner is not None and owner.name != family:
        raise ValueError(f"format {fmt!r} holds a {owner.name!r} expert, but the expert's family is {family!r}")
    source = Path(source)
    if fmt == OWN_FORMAT:
        if checksum is not None:
            raise ValueError("a checksum verifies one file; an expertmerge checkpoint is a stem of two, checked on load")
        net, provenance = _expertmerge(source)
    else:
        if not source.is_file():
            raise FileNotFoundError(f"expert file {str(source)!r} does not exist")
        importer = family_module(family).IMPORTERS[fmt]
        net, state, provenance = importer(source, checksum=checksum, gamma_min=gamma_min, gamma_max=gamma_max,
                                          network=network)
        _load_exactly(net, state, source)
    meta = dict(expert_constants(family, gamma_min, gamma_max), network=provenance.pop("network"),
                net=provenance.pop("net"))
    meta.update(provenance.pop("constants", {}))  # family constants the file fixes (e.g. EDM's sigma_data)
    if "pixels" in provenance:  # the data convention the file's network was trained on (see images.PixelScale)
        meta["pixels"] = provenance.pop("pixels")
    meta["imported"] = dict(provenance, source=source.name, format=fmt)
    if image_shape is not None:
        meta["image_shape"] = [int(n) for n in image_shape]
    save_expert(out_stem, net, meta)
    return meta


def _expertmerge(stem: Path):
    expert = load_expert(stem)  # checks the JSON and loads the weights strictly
    meta = expert.meta
    kept = {key: meta[key] for key in ("pixels",) if key in meta}
    return expert.net, dict(network=meta.get("network", "SmallUNet"), net=meta["net"],
                            constants=_range_free_constants(meta), **kept)


def _range_free_constants(meta: dict) -> dict:
    """The family constants of a checkpoint that do not follow from its valid range (EDM: sigma_data)."""
    one, other = (expert_constants(meta["family"], *ends) for ends in ((-1.0, 1.0), (-2.0, 2.0)))
    return {key: meta[key] for key in one if key != "family" and one[key] == other[key] and key in meta}


def _load_exactly(net: torch.nn.Module, state: dict, path) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"the weights in {path} do not fill the network exactly: {error}") from error

