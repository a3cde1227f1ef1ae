"""Pipeline plumbing shared by the Snakefile and the CLI: eta labels, shards, config checks.

An eta label is one of: the name of an expert (its baseline on its own native range, e.g.
"edm" or "vdm"), "eta_min"/"eta_max" (the ends of the feasible range, Eq. 15), a number
in [eta_min, eta_max], or "auto": the VLB-optimal merge chosen from the experts' loss profile
(`expertmerge auto-switch`, one or more switches; an experiment with `loss_profile` only), or the name of one
of the experiment's `merges` (any number of experts; `expertmerge.merge_plan`). Plots place the quality
baseline at 0 and the likelihood baseline at 1, as the paper does, and "auto" at its first switch; named
merges and experts beyond the pair are off that axis (eta empty).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from . import paths
from .experts.registry import get_family
from .noise import feasible_etas, gamma_range

RANGE_LABELS = ("eta_min", "eta_max")
AUTO_LABEL = "auto"


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
    switch_etas: tuple = ()  # every switch of a multi-switch merge ("auto"), low to high noise

    def record(self) -> dict:
        """Columns that identify this eta in result files (see expertmerge.tables)."""
        record = {"eta_label": self.label, "eta": self.plot_position,
                  "switch_eta": self.eta,  # None (JSON null, CSV empty) for a baseline
                  "gamma_min": self.gamma_min, "gamma_max": self.gamma_max}
        if self.switch_etas:
            record["switch_etas"] = " ".join(f"{eta:.6g}" for eta in self.switch_etas)
        return record


def resolve_eta(label, expert_names: dict, eta_min: float, eta_max: float, switch_etas=None) -> EtaChoice:
    """Turn an eta label into an EtaChoice; `expert_names` maps "quality"/"likelihood" to names.
    "auto" needs its `switch_etas` (an auto-switch file's); it is recorded with its first switch."""
    label = str(label)
    if label == AUTO_LABEL:
        if not switch_etas:
            raise ConfigError("eta 'auto' needs the switches chosen from the loss profile (an auto-switch .json)")
        return EtaChoice(label, float(switch_etas[0]), None, float(switch_etas[0]),
                         switch_etas=tuple(map(float, switch_etas)))
    for role, name in expert_names.items():
        if label == name:
            return EtaChoice(label, None, role, 0.0 if role == "quality" else 1.0)
    if label in RANGE_LABELS:
        eta = eta_min if label == "eta_min" else eta_max
        return EtaChoice(label, eta, None, eta)
    try:
        eta = float(label)
    except ValueError:
        raise ConfigError(f"eta {label!r} is neither a number, 'eta_min', 'eta_max', 'auto' nor an expert name "
                          f"({', '.join(expert_names.values())})") from None
    if not (math.isfinite(eta) and eta_min - 1e-12 <= eta <= eta_max + 1e-12):
        raise ConfigError(f"eta {label} is outside the feasible range [{eta_min:.4f}, {eta_max:.4f}] "
                          f"(Eq. 15) of the experts' gamma ranges")
    return EtaChoice(label, eta, None, eta)


def auto_switch_path(experiment_name: str) -> str:
    """Where the pipeline writes an experiment's VLB-optimal switches (the "auto" eta)."""
    return paths.AUTO_SWITCH.format(experiment=experiment_name)


def load_switches(path, names=None, ranges=None) -> tuple[list[str], list[float]]:
    """(roles serving each piece from low to high noise, switch etas) from an auto-switch .json, checked
    against the experts' `names` and gamma `ranges` where given (`profile_files.read_switches`)."""
    from .profile_files import read_switches

    return read_switches(path, names, ranges)


def expert_names(experiment: dict) -> dict:
    """{"quality": name, "likelihood": name} from an experiment's `experts` section (the eta grid's pair; experts
    without a role serve in named merges only)."""
    return {spec["role"]: name for name, spec in experiment["experts"].items() if "role" in spec}


def eta_labels(experiment: dict) -> list[str]:
    return [str(label) for label in experiment["etas"]]


def experiment_eta_range(experiment: dict) -> tuple[float, float]:
    names = expert_names(experiment)
    ranges = {role: gamma_range(experiment["experts"][name]["noise_range"]) for role, name in names.items()}
    return feasible_etas([ranges["likelihood"], ranges["quality"]])[0]


EXPERT_SOURCES = ("train", "recipe", "fetch", "path")  # how config.yaml says an expert is made


def expert_source(spec: dict) -> str:
    """Which of EXPERT_SOURCES an expert's config uses (the schema allows exactly one)."""
    found = [key for key in EXPERT_SOURCES if key in spec]
    if len(found) != 1:
        raise ConfigError(f"an expert needs exactly one of {', '.join(EXPERT_SOURCES)}; got {found or 'none'}")
    return found[0]


def expert_stem(experiment_name: str, expert_name: str, spec: dict) -> str:
    """Where the pipeline writes an expert's checkpoint (stem of .safetensors + .json)."""
    return paths.EXPERT.format(experiment=experiment_name, source=expert_source(spec), expert=expert_name)


def check_recipe(recipe: str, family: str, expert_range) -> None:
    """A training recipe must exist, be of the expert's family and train on the expert's gamma range."""
    from .recipes import get_recipe

    recipe_family = get_recipe(recipe).family
    if recipe_family != family:
        raise ConfigError(f"recipe {recipe!r} trains a {recipe_family!r} expert, but the expert's family is {family!r}")
    expected = get_family(family).gamma_range  # the family's native range, which the trainer uses
    if any(abs(a - b) > 1e-9 for a, b in zip(expert_range, expected)):
        raise ConfigError(f"recipe {recipe!r} trains on gamma [{expected[0]:.6g}, {expected[1]:.6g}] (the family's "
                          f"default range); the expert's noise_range gives [{expert_range[0]:.6g}, {expert_range[1]:.6g}]")


def recipe_steps(recipe_spec: dict) -> int:
    """The training length of an expert's `recipe:` config: its max_steps, else the recipe's at its batch."""
    from .recipes import get_recipe

    return recipe_spec.get("max_steps") or get_recipe(recipe_spec["name"]).steps(recipe_spec.get("batch_size"))


def training_chunk_stops(recipe_spec: dict) -> list[int]:
    """The steps at which the jobs of a training chain stop, the last one the run's length: one SLURM job
    per `steps_per_job` steps (all in one job without it), each resuming from the previous one's state."""
    steps = recipe_steps(recipe_spec)
    per_job = recipe_spec.get("steps_per_job") or steps
    return [*range(per_job, steps, per_job), steps]


def training_state_path(experiment_name: str, expert_name: str, step: int) -> str:
    """The training state a chunk of a chain hands to the next (removed once the next has run)."""
    return paths.TRAINING_STATE.format(experiment=experiment_name, expert=expert_name, step=step)


def previous_training_state(experiment_name: str, expert_name: str, recipe_spec: dict, until_step=None) -> str | None:
    """The state the job of a training chain that stops at `until_step` (None: the chain's last job) resumes
    from; None for the chain's first job. Refuses a step at which no job of the chain stops."""
    stops = training_chunk_stops(recipe_spec)
    if until_step is not None and int(until_step) not in stops[:-1]:
        raise ValueError(f"{until_step} is not a step at which a job of {expert_name}'s training chain stops: "
                         f"{stops[:-1]}")
    stop = stops[-1] if until_step is None else int(until_step)
    earlier = [step for step in stops if step < stop]
    return training_state_path(experiment_name, expert_name, earlier[-1]) if earlier else None


def shard_ranges(count: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard of `count` items in shards of `shard_size`."""
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def vlb_job_runs(experiment: dict) -> list[range]:
    """The runs (seeds 1..runs) of each VLB job: runs_per_job consecutive runs, the last group possibly shorter."""
    vlb = experiment["vlb"]
    return [range(start + 1, stop + 1) for start, stop in shard_ranges(vlb["runs"], vlb.get("runs_per_job", 1))]


def vlb_job_name(runs: range) -> str:
    """A VLB job's file stem: run{k} for one run, runs{first}-{last} for a group."""
    return f"run{runs[0]}" if len(runs) == 1 else f"runs{runs[0]}-{runs[-1]}"


def runs_of_vlb_job(name: str) -> range:
    """The runs a VLB job's file stem names (inverse of vlb_job_name)."""
    match = re.fullmatch(r"run(\d+)|runs(\d+)-(\d+)", name)
    if not match:
        raise ValueError(f"{name!r} is not a VLB job name (run<k> or runs<first>-<last>)")
    first, last = (int(match[1]), int(match[1])) if match[1] else (int(match[2]), int(match[3]))
    if last < first:
        raise ValueError(f"VLB job {name!r} names no runs (last < first)")
    return range(first, last + 1)


def named_label(experiment: dict, label) -> bool:
    """Whether an eta label is a name rather than a switch level: "auto", any expert's, a named merge's."""
    return str(label) in {AUTO_LABEL, *experiment["experts"], *experiment.get("merges", {})}


def other_expert(experiment: dict, label) -> bool:
    """Whether an eta label is an expert beyond the eta grid's pair (its baseline, run alone)."""
    return str(label) in experiment["experts"] and str(label) not in expert_names(experiment).values()


def numeric_etas(experiment: dict) -> list[float]:
    """The configured switch levels given as numbers (not eta_min/eta_max, not a baseline, not a named merge)."""
    return [float(label) for label in eta_labels(experiment) if label not in RANGE_LABELS
            and not named_label(experiment, label)]


def unpinned_downloads(config: dict) -> list[str]:
    """Downloads that config.yaml does not pin by a checksum (each run warns about them)."""
    from .downloads import UNPINNED

    return [name for name, spec in config.get("downloads", {}).items() if spec["checksum"] == UNPINNED]


def has_analysis(experiment: dict) -> bool:
    """Whether an experiment configures the measurements (etas, sampling, ...) or only its experts."""
    return all(key in experiment for key in ANALYSIS_SECTIONS)


ANALYSIS_SECTIONS = ("fid", "etas", "sampling", "nll", "vlb", "figures")
# What each data source (config.yaml's data.source) holds: its splits, and the shape (C, H, W) of its images.
DATA_SPLITS = {"sklearn-digits": ("train", "val", "test"), "cifar10": ("train", "test"), "imagenet32": ("train", "test")}
IMAGE_SHAPES = {"sklearn-digits": (1, 8, 8), "cifar10": (3, 32, 32), "imagenet32": (3, 32, 32)}
# Images per split of the fixed data sets (the digits' splits follow data.val_fraction/test_fraction of 1797)
SPLIT_SIZES = {"cifar10": {"train": 50_000, "test": 10_000}, "imagenet32": {"train": 1_281_167, "test": 49_999}}
DIGITS_IMAGES = 1797


def split_size(data: dict, split: str) -> int:
    """How many images a split of an experiment's data holds (as datasets.split_indices rounds them)."""
    if data["source"] != "sklearn-digits":
        return SPLIT_SIZES[data["source"]][split]
    held = {name: round(DIGITS_IMAGES * data.get(f"{name}_fraction", default))
            for name, default in (("val", 0.1), ("test", 0.15))}
    return held.get(split, DIGITS_IMAGES - sum(held.values()))


def build_expert(quality_stem, likelihood_stem, label, device="cpu", switches=None, merge=None, extra_stems=None):
    """Load two expert checkpoints and return (expert for this eta label, EtaChoice, image shape).

    A baseline label (an expert's name, i.e. its checkpoint's file name) gives that expert alone on its
    native range; "auto" the experts switching where its auto-switch file (`switches`) says; any other
    label the hard switch at that eta (Eq. 14).
    """
    from pathlib import Path

    from .experts.checkpoint import load_expert
    from .merge import eta_range, switch, switch_many

    stems = {"quality": Path(quality_stem), "likelihood": Path(likelihood_stem)}
    names = {role: stem.name for role, stem in stems.items()}
    if str(label) in (extra_stems or {}) and merge is None and switches is None:  # an expert beyond the pair, alone
        expert = load_expert(Path(extra_stems[str(label)]), device)
        choice = EtaChoice(str(label), None, None, math.nan, gamma_min=expert.gamma_min, gamma_max=expert.gamma_max)
        return expert, choice, tuple(expert.image_shape)
    if merge is not None or (switches is not None and str(label) != AUTO_LABEL):  # a named merge, or one chosen
        by_name = {stem.name: stem for stem in stems.values()} | {name: Path(s) for name, s in (extra_stems or {}).items()}
        return build_named_merge(by_name, label, merge, device, chosen=switches)
    loaded = {role: load_expert(stem, device) for role, stem in stems.items()
              if str(label) not in names.values() or names[role] == str(label)}
    shapes = {role: getattr(expert, "image_shape", None) for role, expert in loaded.items()}
    if any(shape is None for shape in shapes.values()):
        raise ValueError(f"the checkpoint of the {[role for role, s in shapes.items() if s is None][0]} expert records "
                         "no image_shape (C, H, W); re-import it with --image-shape")
    shape = tuple(next(iter(shapes.values())))
    if len(loaded) == 1:
        (role, expert), = loaded.items()
        choice = resolve_eta(label, names, 0.0, 1.0)
    elif str(label) == AUTO_LABEL:
        if switches is None:
            raise ValueError("eta 'auto' needs --switches: the auto-switch .json chosen from the loss profile")
        roles, etas = load_switches(switches, names, {role: (e.gamma_min, e.gamma_max) for role, e in loaded.items()})
        expert = switch_many([loaded[role] for role in roles], etas)
        choice = resolve_eta(label, names, 0.0, 1.0, etas)
    else:
        choice = resolve_eta(label, names, *eta_range(loaded["quality"], loaded["likelihood"]))
        expert = switch(loaded["quality"], loaded["likelihood"], choice.eta)
    return expert, replace(choice, gamma_min=expert.gamma_min, gamma_max=expert.gamma_max), shape


def build_named_merge(stems: dict, label, merge: dict | None, device="cpu", chosen=None):
    """A named merge (config.yaml's merges.<label>: experts from high noise to low and the switches between them;
    or one that `expertmerge auto-merge` `chosen`, its .json), its experts loaded from `stems` ({name: checkpoint
    stem}); returns (expert, EtaChoice, image shape). It is off the eta axis of the pair's merges (eta NaN; its
    lowest switch level is its switch_eta); an auto merge that chose one expert alone is that expert."""
    from .experts.checkpoint import load_expert
    from .merge_plan import parse_switch
    from .merge_specs import build_merge
    from .profile_files import read_auto_merge

    names = [str(name) for name in (merge or _chosen_experts(chosen)).get("experts", [])]
    missing = [name for name in names if name not in stems]
    if missing:
        raise ValueError(f"merge {label!r} names the expert {missing[0]!r}: give its checkpoint with --expert "
                         f"{missing[0]}=STEM (known: {', '.join(stems)})")
    loaded = {name: load_expert(stems[name], device) for name in dict.fromkeys(names)}  # an auto merge may repeat one
    experts = [loaded[name] for name in names]
    if merge is None:
        merge = read_auto_merge(chosen, {name: (e.gamma_min, e.gamma_max) for name, e in zip(names, experts)})
    switches = [parse_switch(value) for value in merge.get("switches", [])]
    if len(experts) == 1 and not switches:
        expert, choice = experts[0], EtaChoice(str(label), None, None, math.nan)
        return expert, replace(choice, gamma_min=expert.gamma_min, gamma_max=expert.gamma_max), tuple(expert.image_shape)
    expert = build_merge(experts, switches, names)
    levels = sorted({level for switch in switches for level in (switch.low, switch.high)})
    choice = EtaChoice(str(label), levels[0], None, math.nan, switch_etas=tuple(levels))  # off the pair's eta axis
    return expert, replace(choice, gamma_min=expert.gamma_min, gamma_max=expert.gamma_max), tuple(expert.image_shape)


def _chosen_experts(path) -> dict:
    """The experts an auto-merge .json names (read in full, and checked, once they are loaded)."""
    import json

    try:
        return {"experts": list(json.loads(Path(path).read_text())["merge"]["experts"])}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not an auto-merge JSON file: {error!r}") from None
