"""The command-line arguments of the workflow's rules, built from config.yaml and a job's wildcards.

Every rule of workflow/rules/ whose arguments depend on config.yaml or on its wildcards takes them
from one function here, `<rule>_arguments(config, <wildcard values>, <paths it reads>)`, which returns
the rule's arguments up to its `--threads`/`--out` (file lists that are only the rule's inputs stay in
its shell command). The vocabulary that maps config.yaml onto the CLI's flags thus lives in one place,
and tests/test_rule_arguments.py parses each string back with `expertmerge.cli`. `config` is the
validated config (schema defaults filled), every value is shell-quoted (shlex.quote) and JSON values
are compact. The workflow imports this module while it plans, so it must not import torch.
"""
from __future__ import annotations

import json
import shlex

from . import paths, sharing
from .downloads import UNPINNED
from .merge_plan import describe_merge, merge_experts
from .samplers import parse_result
from .pipeline import (AUTO_LABEL, IMAGE_SHAPES, auto_switch_path, expert_names, expert_stem, gamma_range, numeric_etas,
                       other_expert,
                       previous_training_state, runs_of_vlb_job, shard_ranges)

LITERATURE_KINDS = ("nll", "vlb", "fid")  # a literature table's result kinds, in argument order per data set


def compact_json(value: dict) -> str:
    return json.dumps(value, separators=(",", ":"))


def quote(value) -> str:
    """One shell word: a dict as compact JSON, anything else as its str()."""
    return shlex.quote(compact_json(value) if isinstance(value, dict) else str(value))


def options(**values) -> str:
    """`--flag value` per keyword (underscores become dashes), in order; a list gives one word per item
    and None leaves its flag out."""
    words = []
    for key, value in values.items():
        if value is not None:
            items = value if isinstance(value, (list, tuple, range)) else [value]
            words += [f"--{key.replace('_', '-')}", *map(quote, items)]
    return " ".join(words)


def download_path(config: dict, name: str) -> str:
    """Where a download lands (or is placed by hand)."""
    return f"{config['download_dir']}/{name}"


def pinned_checksum(config: dict, name: str) -> str | None:
    """A download's checksum, or None when config.yaml leaves it unpinned (then nothing is checked)."""
    checksum = config["downloads"][name]["checksum"]
    return None if checksum == UNPINNED else checksum


def expert_pair(config: dict, experiment: str, eta: str | None = None) -> str:
    """--quality/--likelihood naming the checkpoint stems of an experiment's two experts; for a named merge (`eta`
    one of its `merges`) also --merge (its JSON) and --expert NAME=STEM for each of its other experts."""
    spec = config["experiments"][experiment]
    names = expert_names(spec)
    pair = options(**{role: expert_stem(experiment, names[role], spec["experts"][names[role]])
                      for role in ("quality", "likelihood")})
    if other_expert(spec, eta):  # an expert beyond the pair, alone
        return " ".join([pair, options(expert=other_experts(config, experiment, [str(eta)]))])
    merge = spec.get("merges", {}).get(str(eta))
    if merge is None:
        return pair
    others = [name for name in merge_experts(merge) if name not in names.values()]
    chosen = (dict(switches=auto_merge_path(experiment, eta)) if "auto" in merge
              else dict(merge=merge))
    return " ".join([pair, options(**chosen, expert=other_experts(config, experiment, others) or None)])


def other_experts(config: dict, experiment: str, names) -> list[str]:
    """NAME=STEM of experts beyond the pair (--expert)."""
    experts = config["experiments"][experiment]["experts"]
    return [f"{name}={expert_stem(experiment, name, experts[name])}" for name in names]


def profiled_others(config: dict, experiment: str) -> list[str]:
    """The experts beyond the pair, whose loss profiles the experiment's auto merges need."""
    spec = config["experiments"][experiment]
    pair = set(expert_names(spec).values())
    return [name for name in spec["experts"] if name not in pair
            and any(name in merge.get("auto", []) for merge in spec.get("merges", {}).values())]


def eta_options(experiment: str, eta: str, **more) -> str:
    """--eta, and for "auto" the --switches file chosen from the experiment's loss profile."""
    return options(eta=eta, switches=auto_switch_path(experiment) if eta == AUTO_LABEL else None, **more)


def feature_network(config: dict, experiment: str) -> str:
    """The FID feature network: clean-fid's Inception weights, or the demo's digit classifier."""
    fid = config["experiments"][experiment]["fid"]
    if fid["features"] == "inception":
        return options(features_kind="inception", features=download_path(config, fid["weights"]),
                       features_checksum=pinned_checksum(config, fid["weights"]))
    return options(features_kind="digits-classifier", features=paths.CLASSIFIER.format(experiment=experiment))


def file_list(files) -> list:
    """Files given as a list, or as one path (a string)."""
    return [files] if isinstance(files, str) else list(files)


# -- one function per rule ------------------------------------------------------------------------

def fetch_arguments(config: dict, download: str) -> str:
    spec = config["downloads"][download]
    return options(source=spec["url"], checksum=spec["checksum"])


def dataset_arguments(config: dict, experiment: str) -> str:
    data = config["experiments"][experiment]["data"]
    if data["source"] == "sklearn-digits":
        return options(source=data["source"], seed=data["seed"], val_fraction=data["val_fraction"],
                       test_fraction=data["test_fraction"])
    files = []
    for role, name in data["files"].items():
        checksum = pinned_checksum(config, name)
        files.append(options(file=f"{role}={download_path(config, name)}",
                             checksum=checksum and f"{role}={checksum}"))
    return " ".join([options(source=data["source"]), *files])


def train_expert_arguments(config: dict, experiment: str, expert: str, splits: str) -> str:
    spec = config["experiments"][experiment]["experts"][expert]
    train = spec["train"]
    low, high = gamma_range(spec["noise_range"])
    return options(family=spec["family"], data=splits, gamma_min=low, gamma_max=high, steps=train["steps"],
                   batch_size=train["batch_size"], lr=train["lr"], ema_decay=train["ema_decay"],
                   eval_every=train["eval_every"], seed=train["seed"], network=train.get("network"))


def train_recipe_arguments(config: dict, experiment: str, expert: str, splits: str, until_step=None) -> str:
    """One job of a training chain: up to `until_step` (a chunk, which writes a training state), or the
    last job (None, which writes the expert); each after the first resumes from the previous one's state."""
    spec = config["experiments"][experiment]["experts"][expert]
    recipe = spec["recipe"]
    low, high = gamma_range(spec["noise_range"])
    return options(recipe=recipe["name"], family=spec["family"], gamma_min=low, gamma_max=high, seed=recipe["seed"],
                   checkpoint_every=recipe["checkpoint_every"], log_every=recipe["log_every"],
                   max_steps=recipe.get("max_steps"), batch_size=recipe.get("batch_size"),
                   network=recipe.get("network"), data=splits, until_step=until_step,
                   resume_from=previous_training_state(experiment, expert, recipe, until_step))


def import_expert_arguments(config: dict, experiment: str, expert: str) -> str:
    """An expert made elsewhere: a download (`fetch`) or a given file (`path`)."""
    spec = config["experiments"][experiment]["experts"][expert]
    if "fetch" in spec:
        source = spec["fetch"]
        path, checksum = download_path(config, source["download"]), pinned_checksum(config, source["download"])
    else:
        source = spec["path"]
        path, checksum = source["path"], source.get("checksum")
    low, high = gamma_range(spec["noise_range"])
    image_shape = IMAGE_SHAPES[config["experiments"][experiment]["data"]["source"]]
    return options(input=path, format=source["format"], family=spec["family"], gamma_min=low, gamma_max=high,
                   image_shape=image_shape, checksum=checksum, network=source.get("network"))


def train_classifier_arguments(config: dict, experiment: str, splits: str) -> str:
    spec = config["experiments"][experiment]["fid"]["classifier"]
    return options(data=splits, steps=spec["steps"], batch_size=spec["batch_size"], lr=spec["lr"], seed=spec["seed"])


def reference_statistics_arguments(config: dict, experiment: str, splits: str) -> str:
    return " ".join([options(data=splits, split="train"), feature_network(config, experiment)])


def sample_shard_arguments(config: dict, experiment: str, sampler: str, eta: str, shard) -> str:
    """Images start:stop of the shard (image i uses seed i), their FID features stored with them; the sampler's
    options from its section sampling.<name> (`expertmerge.samplers`), the one its result name fixes (Heun's
    step count) from the name; a merge that leaves the sweep's shared trunk starts from its anchor's state."""
    return " ".join([sample_arguments(config, experiment, sampler, eta, shard), feature_network(config, experiment),
                     options(start_state=trunk_start(config, experiment, sampler, eta, shard))])


def sample_arguments(config: dict, experiment: str, sampler: str, eta: str, shard) -> str:
    sampling = config["experiments"][experiment]["sampling"]
    start, stop = shard_ranges(sampling["num_samples"], sampling["shard_size"])[int(shard)]
    declared, fixed = parse_result(sampler)
    section = {**sampling[declared.name], **fixed}
    values = {option.name: section.get(option.name, option.default) for option in declared.options}
    solver = " ".join([options(sampler=declared.name), *(switch(option.flag, value) if isinstance(value, bool)
                                                          else options(**{option.name: value})
                                                          for option, value in zip(declared.options, values.values()))])
    return " ".join([expert_pair(config, experiment, eta), eta_options(experiment, eta), solver,
                     options(seeds=f"{start}:{stop}", batch_size=sampling["batch_size"])])


def trunk_start(config: dict, experiment: str, path: str, eta: str, shard) -> str | None:
    """The trunk state a merge's job for `path` (a sampler's result name, or "nll") starts from, or None."""
    anchor = sharing.tail_anchor(config["experiments"][experiment], path, eta)
    if anchor is None:
        return None
    _, grid = sharing.share_settings(config["experiments"][experiment], path)
    return sharing.trunk_state_path(experiment, path, anchor, grid, shard)


# The merge whose trunk expert serves every anchor of a path: eta_min's top piece covers [gamma_eta_min, gamma_1]
# for sampling, eta_max's bottom piece [gamma_0, gamma_eta_max] for the NLL, and anchors lie between.
TRUNK_MERGE = {"down": "eta_min", "up": "eta_max"}


def trunk_segment_arguments(config: dict, experiment: str, path: str, level: str, shard, splits: str) -> str:
    """One segment of a path's shared trunk: from the previous anchor's state (or the prior / the data) to `level`."""
    spec = config["experiments"][experiment]
    eta = TRUNK_MERGE[sharing.DIRECTIONS[path]]
    measure = (nll_arguments(config, experiment, eta, shard, splits) if path == "nll"
               else sample_arguments(config, experiment, path, eta, shard))
    return " ".join([measure, options(until_level=level, start_state=sharing.previous_trunk_state(
        spec, experiment, path, level, shard))])


def switch(flag: str, on: bool) -> str:
    """A boolean option as its flag or its --no- form."""
    return flag if on else "--no-" + flag[2:]


def nll_arguments(config: dict, experiment: str, eta: str, shard, splits: str) -> str:
    nll = config["experiments"][experiment]["nll"]
    return " ".join([expert_pair(config, experiment, eta),
                     eta_options(experiment, eta, data=splits, split="test", shard=shard, shards=nll["shards"],
                                 images=nll.get("images"), rtol=nll["rtol"], atol=nll["atol"],
                                 dequantization=nll["dequantization"], error_norm=nll.get("error_norm", "batch-rms"),
                                 batch_size=nll["batch_size"])])


def nll_shard_arguments(config: dict, experiment: str, eta: str, shard, splits: str) -> str:
    """An eta's NLL shard; a merge that leaves the sweep's shared trunk starts from its anchor's state."""
    return " ".join([nll_arguments(config, experiment, eta, shard, splits),
                     options(start_state=trunk_start(config, experiment, "nll", eta, shard))])


def vlb_run_arguments(config: dict, experiment: str, eta: str, runs: str, splits: str) -> str:
    """`runs` is the job's file stem, run<k> or runs<first>-<last>."""
    return " ".join([expert_pair(config, experiment, eta),
                     eta_options(experiment, eta, data=splits, split="test", runs=runs_of_vlb_job(runs))])


def profile_selection(config: dict, experiment: str) -> str:
    """The images a loss profile is measured on: its split, or a fixed choice of `images` of it."""
    profile = config["experiments"][experiment]["loss_profile"]
    return options(split=profile["split"], images=profile.get("images"), seed=profile.get("seed", 0))


def loss_profile_shard_arguments(config: dict, experiment: str, shard, splits: str) -> str:
    profile = config["experiments"][experiment]["loss_profile"]
    others = other_experts(config, experiment, profiled_others(config, experiment)) or None
    return " ".join([expert_pair(config, experiment), options(expert=others, data=splits),
                     profile_selection(config, experiment),
                     options(points=profile["points"], batch_size=profile["batch_size"], shard=shard,
                             shards=profile.get("shards", 1))])


def figure_loss_profile_arguments(config: dict, experiment: str) -> str:
    """The switch levels the figure marks and the auto merges it draws (its --profile and --switches are the rule's
    inputs)."""
    return options(etas=numeric_etas(config["experiments"][experiment]),
                   merges=[f"{name}={auto_merge_path(experiment, name)}"
                           for name in auto_merges(config, experiment)] or None)


def auto_merges(config: dict, experiment: str) -> list[str]:
    """The experiment's named auto merges."""
    return [name for name, merge in config["experiments"][experiment].get("merges", {}).items() if "auto" in merge]


def auto_merge_path(experiment: str, merge: str) -> str:
    return paths.AUTO_MERGE.format(experiment=experiment, merge=merge)


def auto_merge_files(config: dict, experiment: str) -> list[str]:
    """Every named auto merge's choice (the inputs of the L(gamma) figure and of predict-vlb)."""
    return [auto_merge_path(experiment, name) for name in auto_merges(config, experiment)]


def figure_fid_vs_nfe_arguments(config: dict, experiment: str) -> str:
    """The etas the FID-against-NFE figure draws (its --fid files are the rule's inputs)."""
    return options(etas=[str(eta) for eta in config["experiments"][experiment]["figures"]["fid_vs_nfe"]])


def figure_fixed_noise_arguments(config: dict, experiment: str) -> str:
    return options(kind="fixed-noise", count=config["experiments"][experiment]["figures"]["fixed_noise_rows"])


def figure_samples_arguments(config: dict, experiment: str, sampler: str) -> str:
    return options(kind="samples", title=f"{sampler} sampler",
                   count=config["experiments"][experiment]["figures"]["grid_samples"])


RECOMMEND_FID_BUDGET = 0.05  # the schema's default of recommend.fid_budget (validate fills none inside $defs)


def recommend_fid_budget(config: dict, experiment: str) -> float:
    """The FID budget of an experiment's recommended eta: ODE FID <= (1 + budget) x the quality expert's."""
    return config["experiments"][experiment].get("recommend", {}).get("fid_budget", RECOMMEND_FID_BUDGET)


def figure_tradeoff_arguments(config: dict, experiment: str) -> str:
    return options(recommend_fid_budget=recommend_fid_budget(config, experiment))


def summary_arguments(config: dict, experiment: str, profile, predicted=()) -> str:
    """The recommendation's FID budget; --profile and --predicted only when the experiment has a loss profile
    (each: its CSV, or nothing)."""
    profile, predicted = file_list(profile), file_list(predicted)
    named = [f"{name}={describe_merge(merge)}" for name, merge in config["experiments"][experiment].get("merges", {}).items()]
    return options(recommend_fid_budget=recommend_fid_budget(config, experiment),
                   profile=profile[0] if profile else None, predicted=predicted[0] if predicted else None,
                   named=named or None)


def table_arguments(optional: dict) -> str:
    """A table's optional inputs, {kind: its files}: --predicted only when the experiment has a loss profile
    (the predict-vlb CSV, or nothing)."""
    return options(**{kind: file_list(files)[0] for kind, files in optional.items() if file_list(files)})


def predict_vlb_arguments(config: dict, experiment: str, splits: str) -> str:
    """Every configured eta, from the loss profile measured on the profile's images."""
    spec = config["experiments"][experiment]
    switches = auto_switch_path(experiment) if AUTO_LABEL in spec["etas"] else None
    # named merges are predicted apart (blends are not: no curve holds a mixed prediction's loss); experts beyond
    # the pair are profiled only when an auto merge chooses among them
    merges = {name: merge for name, merge in spec.get("merges", {}).items() if str(name) in map(str, spec["etas"])}
    etas = [str(eta) for eta in spec["etas"] if str(eta) not in merges and not other_expert(spec, eta)]
    hard = [f"{name}={compact_json(merge)}" for name, merge in merges.items()
            if "auto" not in merge and not any(isinstance(value, dict) for value in merge["switches"])]
    auto = [f"{name}={auto_merge_path(experiment, name)}" for name in merges if "auto" in merges[name]]
    return " ".join([options(data=splits), profile_selection(config, experiment),
                     options(etas=etas, switches=switches, merges=hard or None, auto_merges=auto or None)])



def paper_table_arguments(config: dict, number, files) -> str:
    """`files` maps each experiment of config.yaml's `paper` to its result files for the table."""
    return " ".join([options(table=number), *(options(dataset=[title, *file_list(files[name])])
                                              for name, title in config["paper"].items())])


def literature_table_arguments(config: dict, number, files) -> str:
    """`files` maps "<kind>_<experiment>" (kind: one of LITERATURE_KINDS) to that experiment's result files;
    each experiment's recommendation budget follows as <experiment>=<budget>."""
    budgets = [f"{name}={recommend_fid_budget(config, name)}" for name in config["paper"]]
    return " ".join([options(table=number), *(options(**{kind: [name, *file_list(files[f"{kind}_{name}"])]})
                                              for name in config["paper"] for kind in LITERATURE_KINDS),
                     options(recommend_fid_budget=budgets)])


def auto_merge_arguments(config: dict, experiment: str, merge: str) -> str:
    """The candidate experts of a named auto merge (its --profile is the rule's input)."""
    return options(experts=merge_experts(config["experiments"][experiment]["merges"][merge]))
