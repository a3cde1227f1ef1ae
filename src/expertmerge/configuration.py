"""config.yaml, refused in seconds whatever its shape: a strict YAML reading (no duplicate keys), bounded
size (a "billion laughs" of aliases, a 10 MB string), the schema checked with jsonschema directly (one
line: the error and where), then the checks that relate values to each other (`check_config`).

The Snakefile calls `check_config_files` and `validate_config` before anything is planned.
"""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from . import limits
from .pipeline import (ANALYSIS_SECTIONS, AUTO_LABEL, DATA_SPLITS, RANGE_LABELS, ConfigError, check_recipe, eta_labels,
                       expert_names, experiment_eta_range, has_analysis, named_label, resolve_eta, shard_ranges, split_size)
from .noise import gamma_range

RESERVED_NAMES = (AUTO_LABEL, *RANGE_LABELS)  # eta labels: no expert may be called so


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a mapping holding the same key twice (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` may be overridden on purpose
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"the key {_shown(key)} appears twice in one mapping (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1}); YAML would silently keep the last one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_config_file(path) -> object:
    """A config file's contents, read strictly: duplicate keys and oversized contents are refused."""
    try:
        value = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_StrictLoader)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {_short(str(error), 300)}") from None
    check_config_values(value, where=str(path))
    return value


def check_config_files(paths) -> None:
    """Re-read each config file that Snakemake loaded (its own reading keeps the last of duplicate keys)."""
    for path in paths:
        read_config_file(path)


def check_config_values(value, where: str = "config") -> None:
    """Refuse more than limits.MAX_CONFIG_NODES values with YAML aliases expanded, any string longer than
    limits.MAX_STRING and any NaN or infinity, before anything walks or prints the config (jsonschema's
    messages repr the instance)."""
    stack, count = [("", value)], 0
    while stack:
        path, item = stack.pop()
        count += 1
        if count > limits.MAX_CONFIG_NODES:
            raise ConfigError(f"{where} holds more than {limits.MAX_CONFIG_NODES:,} values with its YAML aliases "
                              f"expanded (at config{path}); a config is a few hundred values")
        if isinstance(item, float) and not math.isfinite(item):  # jsonschema's minimum/maximum let NaN through
            raise ConfigError(f"{where}: config{path} is {item}; every number must be finite")
        if isinstance(item, str) and len(item) > limits.MAX_STRING:
            raise ConfigError(f"{where}: config{path} is a string of {len(item):,} characters; at most "
                              f"{limits.MAX_STRING} are allowed")
        if isinstance(item, dict):
            long_key = next((key for key in item if isinstance(key, str) and len(key) > limits.MAX_STRING), None)
            if long_key is not None:
                raise ConfigError(f"{where}: a key of config{path} has {len(long_key):,} characters; at most "
                                  f"{limits.MAX_STRING} are allowed")
            stack.extend((f"{path}[{_shown(key)}]", child) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((f"{path}[{index}]", child) for index, child in enumerate(item))


def validate_config(config: dict, schema_path) -> None:
    """Check config against the schema, filling in its defaults as Snakemake's `validate` does; one error
    naming what is wrong and where, without the instance or the schema that jsonschema's own message holds."""
    import jsonschema

    check_config_values(config)
    schema = with_samplers(yaml.safe_load(Path(schema_path).read_text(encoding="utf-8")))
    error = jsonschema.exceptions.best_match(_with_defaults(schema).iter_errors(config))
    if error is not None:
        where = "".join(f"[{_shown(part)}]" for part in error.absolute_path)
        where = f"at config{where}" if where else "at the top level of config.yaml"
        raise ConfigError(f"config.yaml: {_short(error.message, 300)} ({where})")


def with_samplers(schema: dict) -> dict:
    """The schema with each registered sampler's section under experiments.<name>.sampling, as declared in
    `expertmerge.samplers` (the paper's samplers required)."""
    from .samplers import SAMPLERS

    sampling = schema["$defs"]["experiment"]["properties"]["sampling"]
    for sampler in SAMPLERS.values():
        sampling["properties"][sampler.name] = sampler.config_schema()
        if sampler.paper and sampler.name not in sampling["required"]:
            sampling["required"].append(sampler.name)
    return schema


def _check_merges(name: str, experiment: dict) -> None:
    """Each named merge: known experts, switches from high noise to low, each expert valid where it serves; and a
    name that is neither an expert's nor an eta label."""
    from .merge_plan import check_config_merge

    ranges = {expert: gamma_range(spec["noise_range"]) for expert, spec in experiment["experts"].items()}
    for merge_name, merge in experiment.get("merges", {}).items():
        if merge_name in ranges or merge_name in RESERVED_NAMES:
            raise ConfigError(f"experiment {name!r}: a merge may not be called {merge_name!r}, the name of an expert "
                              f"or an eta label")
        try:
            check_config_merge(merge, ranges)
        except ValueError as error:
            raise ConfigError(f"experiment {name!r}, merge {merge_name!r}: {error}") from None
        if "auto" in merge and "loss_profile" not in experiment:
            raise ConfigError(f"experiment {name!r}, merge {merge_name!r}: an auto merge is chosen from the experts' "
                              "loss profiles: configure loss_profile")


def check_config(config: dict) -> None:
    """Semantic checks after schema validation; one ConfigError naming the first problem."""
    from .samplers import SAMPLERS

    downloads = config.get("downloads", {})
    demo = config["experiments"].get(config["demo"])
    if demo is None or not has_analysis(demo):
        with_analysis = [name for name, spec in config["experiments"].items() if has_analysis(spec)]
        raise ConfigError(f"demo: {_shown(config['demo'])} must name an experiment with measurements configured "
                          f"(one of {with_analysis})")
    for name, experiment in config["experiments"].items():
        reserved = sorted(set(experiment["experts"]) & set(RESERVED_NAMES))
        if reserved:
            raise ConfigError(f"experiment {name!r}: an expert may not be called {reserved[0]!r}, an eta label; "
                              f"reserved: {', '.join(RESERVED_NAMES)}")
        roles = sorted(spec["role"] for spec in experiment["experts"].values() if "role" in spec)
        if roles != ["likelihood", "quality"]:
            raise ConfigError(f"experiment {name!r}: experts need exactly one 'quality' and one 'likelihood' role "
                              f"(the eta grid's pair; any others have none), got {roles}")
        named = [(f"data.files.{role}", download) for role, download in experiment["data"].get("files", {}).items()]
        named += [(f"experts.{expert}.fetch", spec["fetch"]["download"]) for expert, spec in experiment["experts"].items()
                  if "fetch" in spec]
        if "weights" in experiment.get("fid", {}):
            named.append(("fid.weights", experiment["fid"]["weights"]))
        for where, download in named:
            if download not in downloads:
                raise ConfigError(f"experiment {name!r}: {where} names the download {download!r}, which is not under "
                                  f"downloads (configured: {', '.join(downloads) or 'none'})")
        for expert, spec in experiment["experts"].items():
            if "recipe" in spec:
                try:
                    check_recipe(spec["recipe"]["name"], spec["family"], gamma_range(spec["noise_range"]))
                except ValueError as error:
                    raise ConfigError(f"experiment {name!r}, expert {expert!r}: {error}") from None
        _check_merges(name, experiment)
        splits = DATA_SPLITS[experiment["data"]["source"]]
        if "loss_profile" in experiment and experiment["loss_profile"]["split"] not in splits:
            raise ConfigError(f"experiment {name!r}: loss_profile.split {experiment['loss_profile']['split']!r} is "
                              f"not a split of {experiment['data']['source']} (its splits: {', '.join(splits)})")
        present = [key for key in ANALYSIS_SECTIONS if key in experiment]
        if not present:
            continue
        if len(present) != len(ANALYSIS_SECTIONS):
            raise ConfigError(f"experiment {name!r} configures {present} but not "
                              f"{[key for key in ANALYSIS_SECTIONS if key not in present]}; give all or none of them")
        try:
            eta_min, eta_max = experiment_eta_range(experiment)
            labels = eta_labels(experiment)
            for label in labels:
                if label == AUTO_LABEL and "loss_profile" not in experiment:
                    raise ConfigError("eta 'auto' is chosen from the experts' loss profile: configure loss_profile")
                if not named_label(experiment, label):
                    resolve_eta(label, expert_names(experiment), eta_min, eta_max)
        except ValueError as error:
            raise ConfigError(f"experiment {name!r}: {error}") from None
        if len(set(labels)) != len(labels):
            raise ConfigError(f"experiment {name!r}: etas has duplicates: {labels}")
        drawn = [str(label) for label in experiment["figures"].get("fid_vs_nfe", [])]
        stepped = [sampler.name for sampler in SAMPLERS.values() if sampler.per]
        if drawn and not set(stepped) & set(experiment["sampling"]):
            raise ConfigError(f"experiment {name!r}: figures.fid_vs_nfe draws the FIDs of a sampler run at several "
                              f"step counts: configure sampling.{' or sampling.'.join(stepped)}")
        if set(drawn) - set(labels):
            raise ConfigError(f"experiment {name!r}: figures.fid_vs_nfe names {sorted(set(drawn) - set(labels))}, "
                              f"which are not among its etas {labels}")
        try:
            _check_shards(experiment)
        except ConfigError as error:
            raise ConfigError(f"experiment {name!r}: {error}") from None
        vlb = experiment["vlb"]
        if vlb.get("runs_per_job", 1) > vlb["runs"]:
            raise ConfigError(f"experiment {name!r}: vlb.runs_per_job ({vlb['runs_per_job']}) exceeds vlb.runs "
                              f"({vlb['runs']}); runs_per_job = runs puts every run of an eta in one job")
    for name in config.get("paper", {}):
        if name not in config["experiments"] or not has_analysis(config["experiments"][name]):
            raise ConfigError(f"paper: {name!r} must name an experiment with measurements configured")


def _check_shards(experiment: dict) -> None:
    """Every shard of the NLL and of the loss profile gets at least one image; sample shards are capped."""
    sampling = experiment["sampling"]
    shards = len(shard_ranges(sampling["num_samples"], sampling["shard_size"]))
    if shards > limits.MAX_SHARDS:
        raise ConfigError(f"sampling makes {shards:,} shards per sampler and eta (num_samples / shard_size); at most "
                          f"{limits.MAX_SHARDS:,} are allowed: raise shard_size")
    test = min(experiment["nll"].get("images") or math.inf, split_size(experiment["data"], "test"))
    if experiment["nll"]["shards"] > test:
        raise ConfigError(f"nll.shards ({experiment['nll']['shards']}) exceeds the {test} test images it splits; "
                          f"allowed: 1 to {test}")
    profile = experiment.get("loss_profile")
    if profile:
        held = split_size(experiment["data"], profile["split"])
        images = profile.get("images") or held
        if images > held:
            raise ConfigError(f"loss_profile.images ({images}) exceeds the {held} images of its split {profile['split']!r}")
        if profile.get("shards", 1) > images:
            raise ConfigError(f"loss_profile.shards ({profile['shards']}) exceeds its {images} images; allowed: 1 to {images}")


def _with_defaults(schema: dict):
    """A validator for `schema` that also sets each property's `default` where the config leaves it out."""
    from jsonschema import validators

    base = validators.validator_for(schema)
    check_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, property_schema in properties.items():
                if "default" in property_schema:
                    instance.setdefault(name, property_schema["default"])
        yield from check_properties(validator, properties, instance, subschema)

    return validators.extend(base, {"properties": properties_with_defaults})(schema)


def _shown(value, limit: int = 60) -> str:
    return _short(repr(value), limit)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
