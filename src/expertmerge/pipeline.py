"""Pipeline plumbing shared by the Snakefile and the CLI: eta labels, shards, config checks.

An eta label is one of: the name of an expert (its baseline on its own native range, e.g.
"edm" or "vdm"), "eta_min"/"eta_max" (the ends of the feasible range, Eq. 15), or a number
in [eta_min, eta_max]. Plots place the quality baseline at 0 and the likelihood baseline at 1,
as the paper does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .merge import feasible_etas
from .noise import noise_level_to_gamma

RANGE_LABELS = ("eta_min", "eta_max")


class ConfigError(ValueError):
    """A config.yaml value that the schema cannot catch (it depends on other values)."""


@dataclass(frozen=True)
class EtaChoice:
    label: str
    eta: float | None       # switch level, None for a baseline
    baseline: str | None    # "quality" or "likelihood" for a baseline, else None
    plot_position: float    # where the paper plots it: quality baseline 0, likelihood baseline 1
    gamma_min: float = math.nan  # gamma range of the expert that runs (set once it is built)
    gamma_max: float = math.nan

    def record(self) -> dict:
        """Columns that identify this eta in result files (see expertmerge.tables)."""
        return {"eta_label": self.label, "eta": self.plot_position,
                "switch_eta": self.eta,  # None (JSON null, CSV empty) for a baseline
                "gamma_min": self.gamma_min, "gamma_max": self.gamma_max}


def gamma_range(noise_range: dict) -> tuple[float, float]:
    """A config noise range, {sigma_min, sigma_max} (EDM) or {gamma_min, gamma_max}, as gamma."""
    if "sigma_min" in noise_range:
        return noise_level_to_gamma(noise_range["sigma_min"]), noise_level_to_gamma(noise_range["sigma_max"])
    return float(noise_range["gamma_min"]), float(noise_range["gamma_max"])


def resolve_eta(label, expert_names: dict, eta_min: float, eta_max: float) -> EtaChoice:
    """Turn an eta label into an EtaChoice; `expert_names` maps "quality"/"likelihood" to names."""
    label = str(label)
    for role, name in expert_names.items():
        if label == name:
            return EtaChoice(label, None, role, 0.0 if role == "quality" else 1.0)
    if label in RANGE_LABELS:
        eta = eta_min if label == "eta_min" else eta_max
        return EtaChoice(label, eta, None, eta)
    try:
        eta = float(label)
    except ValueError:
        raise ConfigError(f"eta {label!r} is neither a number, 'eta_min', 'eta_max' nor an expert name "
                          f"({', '.join(expert_names.values())})") from None
    if not (math.isfinite(eta) and eta_min - 1e-12 <= eta <= eta_max + 1e-12):
        raise ConfigError(f"eta {label} is outside the feasible range [{eta_min:.4f}, {eta_max:.4f}] "
                          f"(Eq. 15) of the experts' gamma ranges")
    return EtaChoice(label, eta, None, eta)


def expert_names(experiment: dict) -> dict:
    """{"quality": name, "likelihood": name} from an experiment's `experts` section."""
    return {spec["role"]: name for name, spec in experiment["experts"].items()}


def eta_labels(experiment: dict) -> list[str]:
    return [str(label) for label in experiment["etas"]]


def experiment_eta_range(experiment: dict) -> tuple[float, float]:
    names = expert_names(experiment)
    ranges = {role: gamma_range(experiment["experts"][name]["noise_range"]) for role, name in names.items()}
    return feasible_etas([ranges["likelihood"], ranges["quality"]])[0]


def shard_ranges(count: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard of `count` items in shards of `shard_size`."""
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def check_config(config: dict) -> None:
    """Semantic checks after schema validation; one ConfigError naming the first problem."""
    for name, experiment in config["experiments"].items():
        roles = sorted(spec["role"] for spec in experiment["experts"].values())
        if roles != ["likelihood", "quality"]:
            raise ConfigError(f"experiment {name!r}: experts need exactly one 'quality' and one 'likelihood' role, "
                              f"got {roles}")
        try:
            eta_min, eta_max = experiment_eta_range(experiment)
            labels = eta_labels(experiment)
            for label in labels:
                resolve_eta(label, expert_names(experiment), eta_min, eta_max)
        except ValueError as error:
            raise ConfigError(f"experiment {name!r}: {error}") from None
        if len(set(labels)) != len(labels):
            raise ConfigError(f"experiment {name!r}: etas has duplicates: {labels}")


def build_expert(quality_stem, likelihood_stem, label):
    """Load two expert checkpoints and return (expert for this eta label, EtaChoice, image shape).

    A baseline label (an expert's name, i.e. its checkpoint's file name) gives that expert alone on its
    native range; any other label the hard switch at that eta (Eq. 14).
    """
    from pathlib import Path

    from .experts.checkpoint import load_expert
    from .merge import eta_range, switch

    stems = {"quality": Path(quality_stem), "likelihood": Path(likelihood_stem)}
    names = {role: stem.name for role, stem in stems.items()}
    loaded = {role: load_expert(stem) for role, stem in stems.items()
              if str(label) not in names.values() or names[role] == str(label)}
    shape = tuple(next(iter(loaded.values())).image_shape)
    if len(loaded) == 1:
        (role, expert), = loaded.items()
        choice = resolve_eta(label, names, 0.0, 1.0)
    else:
        choice = resolve_eta(label, names, *eta_range(loaded["quality"], loaded["likelihood"]))
        expert = switch(loaded["quality"], loaded["likelihood"], choice.eta)
    return expert, replace(choice, gamma_min=expert.gamma_min, gamma_max=expert.gamma_max), shape
