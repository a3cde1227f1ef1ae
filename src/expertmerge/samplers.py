"""The samplers by name: each is one function (of `expertmerge.sampling`, or a researcher's own module) plus
one declaration here. The CLI (`expertmerge sample`), the workflow's rules and wildcard, config.yaml's schema
(section sampling.<name>), the tables, the figures and the summary all read the declarations, so adding a
sampler is one function and one `register` call (from a plugin: `expertmerge.plugins`).

A declaration says, without importing torch:
* `name`: the CLI's --sampler value and config.yaml's section sampling.<name>;
* `function`: "module:function", imported on first use and called as
  function(expert, seeds, shape, *, batch_size, device, **options) -> SampleRecord;
* `title`: the name its table columns and figure legends carry ("ODE", "Heun");
* `options`: its settings in command-line order, each a CLI flag, a config key with a JSON schema, and a
  default that is the library function's own (tests/test_samplers.py holds them equal);
* `per`: an option that config.yaml gives as a list, one result per value, named <name><value> (Heun at
  18 steps is "heun18", titled "Heun 18");
* `batch_dependent`: whether an image depends on the batch it was solved in (the adaptive ODE shares one
  step size per batch); the others are tested for batch invariance;
* `paper`: one of the paper's samplers: its config section is required and it is drawn in Fig. 2, in the
  sample grids and in the summary's main table;
* `reference`: the adaptive sampler that a sampler run at several step counts (`per`) is compared with in
  the few-step table and the FID-against-NFE figure.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Callable

from . import limits


@dataclass(frozen=True)
class Option:
    name: str           # the config key; the CLI flag is --<name with dashes>
    schema: dict        # JSON schema of one value (see number/integer/choice/boolean below)
    default: object     # the library function's default, which config.yaml and the CLI fill in
    help: str
    required: bool = False  # config.yaml must give it (the CLI still falls back on the default)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def number(bounds: tuple[float, float]) -> dict:
    return {"type": "number", "minimum": bounds[0], "maximum": bounds[1]}


def integer(low: int, high: int) -> dict:
    return {"type": "integer", "minimum": low, "maximum": high}


def choice(*values: str) -> dict:
    return {"enum": list(values)}


def boolean() -> dict:
    return {"type": "boolean"}


@dataclass(frozen=True)
class Sampler:
    name: str
    function: str | Callable
    title: str
    options: tuple[Option, ...] = field(default=())
    per: str | None = None
    batch_dependent: bool = False
    paper: bool = False
    reference: bool = False
    description: str = ""

    def implementation(self) -> Callable:
        if callable(self.function):
            return self.function
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)

    def option(self, name: str) -> Option:
        return next(option for option in self.options if option.name == name)

    def defaults(self) -> dict:
        return {option.name: option.default for option in self.options}

    def config_schema(self) -> dict:
        """The JSON schema of config.yaml's sampling.<name>."""
        properties = {}
        for option in self.options:
            node = {**option.schema, "description": option.help}
            if option.name == self.per:
                node = {"type": "array", "minItems": 1, "maxItems": 64, "uniqueItems": True, "items": option.schema,
                        "description": f"{option.help}; one result per value, named {self.name}<value>"}
            elif not option.required:
                node["default"] = option.default
            properties[option.name] = node
        required = [option.name for option in self.options if option.required or option.name == self.per]
        return {"type": "object", "additionalProperties": False, "required": required, "properties": properties,
                "description": self.description or f"the {self.title} sampler"}

    def result_names(self, section: dict) -> list[str]:
        """The names of this sampler's results for its config section: one, or one per `per` value."""
        return [self.name] if self.per is None else [f"{self.name}{value}" for value in section[self.per]]

    def result_name(self, options: dict) -> str:
        """The name of the result of one run with `options`: <name>, or <name><value of per>."""
        return self.name if self.per is None else f"{self.name}{options[self.per]}"

    def result_pattern(self) -> str:
        return re.escape(self.name) + (r"\d+" if self.per else "")


SAMPLERS: dict[str, Sampler] = {}


def register(sampler: Sampler) -> Sampler:
    """Add (or replace) a sampler. Its name has no digit and its `per` option is an integer, so that a result
    name (<name> or <name><value>) names one sampler; an option it shares with another sampler by name must be
    of the same kind (one CLI flag serves both)."""
    if not re.fullmatch(r"[a-z][a-z_]*", sampler.name):
        raise ValueError(f"a sampler's name is lower-case letters and _, got {sampler.name!r}")
    names = [option.name for option in sampler.options]
    if len(set(names)) < len(names) or {"batch_size", "device", "seeds"} & set(names):
        raise ValueError(f"sampler {sampler.name!r}: options must be distinct and not batch_size, device or seeds")
    if sampler.per is not None and sampler.option(sampler.per).schema.get("type") != "integer":
        raise ValueError(f"sampler {sampler.name!r}: its per-result option {sampler.per!r} must be an integer")
    for other in SAMPLERS.values():
        if other.name == sampler.name:
            continue
        for option in sampler.options:
            shared = next((o for o in other.options if o.name == option.name), None)
            if shared is not None and _kind(shared.schema) != _kind(option.schema):
                raise ValueError(f"sampler {sampler.name!r}: option {option.name!r} is {_kind(option.schema)} but the "
                                 f"{other.name} sampler's is {_kind(shared.schema)}; one CLI flag serves both")
    SAMPLERS[sampler.name] = sampler
    return sampler


def unregister(name: str) -> None:
    SAMPLERS.pop(name, None)


def _kind(schema: dict) -> str:
    return "a choice" if "enum" in schema else {"integer": "an integer"}.get(schema["type"], f"a {schema['type']}")


def sampler_names() -> tuple[str, ...]:
    return tuple(SAMPLERS)


def get_sampler(name) -> Sampler:
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known samplers are {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def paper_samplers() -> list[str]:
    """The paper's samplers (Fig. 2, the sample grids, the summary's main table), in declaration order."""
    return [sampler.name for sampler in SAMPLERS.values() if sampler.paper]


def reference_sampler() -> str:
    return next(sampler.name for sampler in SAMPLERS.values() if sampler.reference)


def result_pattern() -> str:
    """The regular expression of every sampler's result names (the workflow's {sampler} wildcard)."""
    return "|".join(sampler.result_pattern() for sampler in SAMPLERS.values())


def parse_result(result: str) -> tuple[Sampler, dict]:
    """The sampler of a result name and the option its name fixes: "heun18" -> (heun, {"steps": 18})."""
    for sampler in SAMPLERS.values():
        if re.fullmatch(sampler.result_pattern(), result):
            return sampler, ({} if sampler.per is None else {sampler.per: int(result[len(sampler.name):])})
    raise ValueError(f"{result!r} names no sampler's results; known: {result_pattern()}")


def result_title(result: str) -> str:
    """A result's display name: "ODE", "ancestral", "Heun 18"; a name no sampler claims is shown as given."""
    try:
        sampler, fixed = parse_result(result)
    except ValueError:
        return result
    return " ".join([sampler.title, *map(str, fixed.values())])


def stepped_sampler(result: str) -> str | None:
    """The sampler of a result if it is run at several step counts (`per`: compared with the reference), else None."""
    try:
        sampler = parse_result(result)[0]
    except ValueError:
        return None
    return sampler.name if sampler.per is not None else None


NO_STEPPED_RECORDS = ("no FID records of a sampler run at several step counts (Heun's: sampler heun<steps>): "
                      "configure sampling.heun")


def experiment_results(sampling: dict) -> list[str]:
    """The sampler results an experiment measures: every sampler whose section config.yaml's `sampling` holds,
    in declaration order ("ode", "ancestral", "heun18", ...)."""
    return [result for sampler in SAMPLERS.values() if sampler.name in sampling
            for result in sampler.result_names(sampling[sampler.name])]


def given_options(args) -> dict:
    """{option name: value or None} of every declared sampler option, read from parsed CLI arguments."""
    return {option.name: getattr(args, option.name, None) for sampler in SAMPLERS.values()
            for option in sampler.options}


def resolve_options(sampler: Sampler, given: dict) -> dict:
    """The sampler's options from `given` (None: not given, so the default), in declaration order, each checked
    against its own schema; an option given that the sampler does not take is refused."""
    stray = [name for name, value in given.items() if value is not None and name not in sampler.defaults()]
    if stray:
        flags = ", ".join(option.flag for option in sampler.options) or "none"
        raise ValueError(f"{stray[0]} (--{stray[0].replace('_', '-')}) is not an option of the {sampler.name} "
                         f"sampler; its options: {flags}")
    values = {}
    for option in sampler.options:
        value = option.default if given.get(option.name) is None else given[option.name]
        problem = _outside(option.schema, value)
        if problem:
            raise ValueError(f"the {sampler.name} sampler's {option.name} (--{option.name.replace('_', '-')}) must be "
                             f"{problem}, got {value!r}")
        values[option.name] = value
    return values


def _outside(schema: dict, value) -> str | None:
    """What `value` should be, if `schema` refuses it; None if it is allowed."""
    if "enum" in schema:
        return None if value in schema["enum"] else "one of " + ", ".join(map(str, schema["enum"]))
    if schema["type"] == "boolean":
        return None if isinstance(value, bool) else "true or false"
    kind = int if schema["type"] == "integer" else (int, float)
    fits = isinstance(value, kind) and not isinstance(value, bool) and schema["minimum"] <= value <= schema["maximum"]
    return None if fits else f"{'an integer' if kind is int else 'a number'} in [{schema['minimum']}, {schema['maximum']}]"


# The paper's samplers and EDM's fast one. Defaults are the authors' conventions (the paper's tolerances,
# VDM's 256 steps with clipping, EDM's 18 steps); what differs from the paper is opt-in.
register(Sampler(
    "ode", "expertmerge.sampling:sample_ode", "ODE", paper=True, reference=True, batch_dependent=True,
    description="the PF-ODE with the adaptive Dormand-Prince solver (RK45), NFE counted",
    options=(
        Option("rtol", number(limits.TOLERANCE), 1e-5, "the solver's relative tolerance", required=True),
        Option("atol", number(limits.TOLERANCE), 1e-5, "the solver's absolute tolerance", required=True),
        Option("error_norm", choice("batch-rms", "image-max"), "batch-rms",
               "how a batch's solver error is measured: batch-rms, the RMS over the whole batch's state "
               "(score_sde's solve_ivp, whose NFE the paper reports); image-max, each image's RMS, the worst "
               "image's (every image meets the tolerance)"),
    )))
register(Sampler(
    "ancestral", "expertmerge.sampling:sample_ancestral", "ancestral", paper=True,
    description="VDM's ancestral sampler on a linear gamma grid",
    options=(
        Option("steps", integer(1, limits.MAX_STEPS), 256, "steps (network evaluations) per image", required=True),
        Option("clip_denoised", boolean(), True,
               "clip D to [-1, 1] at each step, as the VDM re-implementation's sampler does (clip_samples)"),
    )))
register(Sampler(
    "heun", "expertmerge.sampling:sample_heun", "Heun", per="steps",
    description="EDM's deterministic Heun sampler (Algorithm 1, rho = 7), one FID per step count and eta",
    options=(
        Option("steps", integer(2, limits.MAX_STEPS), 18,
               "step counts (a single expert spends 2 steps - 1 NFE; EDM's own is 18, i.e. 35 NFE)"),
        Option("schedule", choice("inserted", "split"), "split",
               "where a merge's switch goes: added to EDM's levels (inserted, 2 more NFE), or taking the place of "
               "the level nearest to it, each side spaced as EDM's schedule (split, 2 steps - 1 NFE)"),
    )))
