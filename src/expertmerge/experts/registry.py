"""The expert families by name: each is one module of this package plus one line here.

A line records what the workflow must know without importing torch: the family's name, its
native noise range (its experts' default valid range, in the form config.yaml writes it) and the
foreign checkpoint formats it imports. Everything else is in the family's module, which must define

* `constants(gamma_min=None, gamma_max=None) -> dict`: the checkpoint JSON fields that fix its
  preconditioning and valid range (always including gamma_min and gamma_max);
* `NETWORKS`: {network name: builder(meta, net hyper-parameters) -> torch module};
* `expert(meta, net) -> Expert`: the adapter to D(x; s) around a built network;
* `loss(meta) -> loss_fn(net, x0, generator)`: the per-image training loss of that network, and
  `LOSS`, its one-line description;
* `TRAINING`: the demo trainer's hyper-parameters that differ from `expertmerge.train_expert.DEFAULTS`;
* `IMPORTERS`: {format: importer(path, *, checksum, gamma_min, gamma_max, network) -> (net, state dict,
  provenance)}, provenance holding "network", "net" and optionally "pixels" (its data convention) and
  "constants" (checkpoint fields the file fixes, e.g. EDM's sigma_data, written over `constants()`'s);
* `recipe_network(recipe, img_channels) -> {"network": name, "net": hyper-parameters}` for the
  paper-scale trainer (optional: a family without it has no recipes).

`register` adds a family at run time (a test's toy family, a researcher's own).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from ..noise import gamma_range


@dataclass(frozen=True)
class Family:
    name: str
    module: str | ModuleType          # the module that implements it (a dotted name is imported on first use)
    noise_range: dict                 # native range: {sigma_min, sigma_max} or {gamma_min, gamma_max}
    formats: tuple[str, ...] = field(default=())  # the foreign checkpoint formats it imports

    @property
    def gamma_range(self) -> tuple[float, float]:
        return gamma_range(self.noise_range)

    def implementation(self) -> ModuleType:
        return importlib.import_module(self.module) if isinstance(self.module, str) else self.module


FAMILIES: dict[str, Family] = {}
OWN_FORMAT = "expertmerge"  # our own checkpoints, of any family


def register(family: Family) -> Family:
    """Add (or replace) a family; its formats must not belong to another family."""
    for fmt in family.formats:
        owner = format_family(fmt, missing_ok=True)
        if fmt == OWN_FORMAT or (owner is not None and owner.name != family.name):
            raise ValueError(f"format {fmt!r} of family {family.name!r} is already {owner.name if owner else 'ours'!r}")
    FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    FAMILIES.pop(name, None)


def family_names() -> tuple[str, ...]:
    return tuple(FAMILIES)


def get_family(name) -> Family:
    if not isinstance(name, str) or name not in FAMILIES:
        raise ValueError(f"unknown expert family {name!r}; known families are {family_names()}")
    return FAMILIES[name]


def import_formats() -> tuple[str, ...]:
    """Every format `expertmerge import-expert` reads: each family's, then our own."""
    return tuple(fmt for family in FAMILIES.values() for fmt in family.formats) + (OWN_FORMAT,)


def format_family(fmt: str, missing_ok: bool = False) -> Family | None:
    for family in FAMILIES.values():
        if fmt in family.formats:
            return family
    if missing_ok or fmt == OWN_FORMAT:
        return None
    raise ValueError(f"unknown expert format {fmt!r}; allowed: {', '.join(import_formats())}")


# EDM (Karras et al. 2022, Table 1: sigma in [0.002, 80]); VDM's fixed linear schedule (Kingma et al. 2021).
register(Family("edm", "expertmerge.experts.edm", {"sigma_min": 0.002, "sigma_max": 80.0}, ("edm-pickle",)))
register(Family("vdm", "expertmerge.experts.vdm", {"gamma_min": -13.3, "gamma_max": 5.0}, ("vdm-checkpoint",)))
# Rectified flow / flow matching on x_t = (1 - t) x + t eps, trained on t in [0.001, 0.99]: s = t / (1 - t).
register(Family("flow", "expertmerge.experts.flow", {"sigma_min": 0.001 / 0.999, "sigma_max": 0.99 / 0.01}))
