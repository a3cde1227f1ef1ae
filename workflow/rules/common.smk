# Plumbing for the workflow's stages: config lookups, eta labels, shards and input/target file lists.
# The rules' command-line arguments come from expertmerge.rule_arguments (config.yaml -> CLI flags).
import os
import re

from expertmerge import paths, rule_arguments, sharing
from expertmerge.configuration import check_config
from expertmerge.merge_plan import merge_experts
from expertmerge.samplers import experiment_results, paper_samplers
from expertmerge.table_registry import RESULT_FILES, experiment_tables, get_table, numbers_pattern, paper_numbers
from expertmerge.pipeline import (AUTO_LABEL, auto_switch_path, eta_labels, expert_names, expert_stem,
                                  has_analysis, previous_training_state, shard_ranges, training_state_path,
                                  unpinned_downloads, vlb_job_name, vlb_job_runs)

check_config(config)
for unpinned in unpinned_downloads(config):
    logger.warning(f"downloads: {unpinned} is not pinned by a checksum in config.yaml; it is trusted on first use "
                   f"(its SHA-256 is recorded in {config['download_dir']}/checksums.lock and verified at every use)")

SAMPLERS = paper_samplers()  # the paper's: Fig. 2, the sample grids and the summary's main table
DOWNLOAD_DIR = config["download_dir"]
DOWNLOAD_NAMES = "|".join(map(re.escape, config["downloads"])) or "(?!)"  # (?!) matches nothing


def experiment(wildcards):
    return config["experiments"][wildcards.experiment]


def sample_shards(name):
    sampling = config["experiments"][name]["sampling"]
    return range(len(shard_ranges(sampling["num_samples"], sampling["shard_size"])))


def nll_shards(name):
    return range(config["experiments"][name]["nll"]["shards"])


def stem_of(experiment_name, expert_name):
    return expert_stem(experiment_name, expert_name, config["experiments"][experiment_name]["experts"][expert_name])


def checkpoint_files(stem):
    return [f"{stem}.safetensors", f"{stem}.json"]


def expert_files(wildcards):
    """The checkpoints an eta needs: one expert for its baseline, both for a merge, and for "auto" the
    switches chosen from the loss profile."""
    if wildcards.eta in experiment(wildcards)["experts"]:  # a baseline: that expert alone
        return checkpoint_files(stem_of(wildcards.experiment, wildcards.eta))
    merge = experiment(wildcards).get("merges", {}).get(wildcards.eta)
    if merge is not None:  # a named merge: the pair (its command loads them by role), its other experts, its choice
        others = [name for name in merge_experts(merge) if name not in expert_names(experiment(wildcards)).values()]
        chosen = [paths.AUTO_MERGE.format(experiment=wildcards.experiment, merge=wildcards.eta)] if "auto" in merge else []
        return both_expert_files(wildcards) + other_expert_files(wildcards, others) + chosen
    return both_expert_files(wildcards) + ([auto_switch_path(wildcards.experiment)] if wildcards.eta == AUTO_LABEL else [])


def auto_switch_files(wildcards):
    """The auto-switch file in a list when "auto" is one of the experiment's etas, else empty."""
    return [auto_switch_path(wildcards.experiment)] if AUTO_LABEL in eta_labels(experiment(wildcards)) else []


def loss_profile_shards(name):
    return range(config["experiments"][name]["loss_profile"].get("shards", 1))


def other_expert_files(wildcards, names):
    return [path for name in names for path in checkpoint_files(stem_of(wildcards.experiment, name))]


def profiled_expert_files(wildcards):
    """The loss profile's experts: the pair, and the others that an auto merge chooses among."""
    others = rule_arguments.profiled_others(config, wildcards.experiment)
    return both_expert_files(wildcards) + other_expert_files(wildcards, others)


def both_expert_files(wildcards):
    names = expert_names(experiment(wildcards))
    stems = [stem_of(wildcards.experiment, names[role]) for role in ("quality", "likelihood")]
    return [path for stem in stems for path in checkpoint_files(stem)]


def all_expert_files():
    """Every configured expert's checkpoint, of every experiment."""
    return [path for name, spec in config["experiments"].items() for expert in spec["experts"]
            for path in checkpoint_files(stem_of(name, expert))]


def splits_file(wildcards):
    """The experiment's splits .npz (the dataset rule's output). Rules hand it to rule_arguments from here:
    a params function that reads `input` would be left out of Snakemake's params rerun trigger."""
    return expand(rules.dataset.output.splits, experiment=wildcards.experiment)[0]


def expert_spec(wildcards):
    return experiment(wildcards)["experts"][wildcards.expert]


def previous_training_states(wildcards):
    """The training state the previous job of a training chain hands on; none for the chain's first job."""
    state = previous_training_state(wildcards.experiment, wildcards.expert, expert_spec(wildcards)["recipe"],
                                    wildcards.get("step"))
    return [state] if state else []


def download_path(name):
    return rule_arguments.download_path(config, name)


def data_files(wildcards):
    """{role: path} of the downloads a data set is read from (none for scikit-learn's digits)."""
    return {role: download_path(name) for role, name in experiment(wildcards)["data"].get("files", {}).items()}


def imported_file(wildcards):
    """The file an imported expert is converted from: a download, or a given path (a stem's two files)."""
    spec = expert_spec(wildcards)
    if "fetch" in spec:
        return [download_path(spec["fetch"]["download"])]
    if spec["path"]["format"] == "expertmerge":
        return checkpoint_files(spec["path"]["path"])
    return [spec["path"]["path"]]


def loss_profile_csv(name):
    """An experiment's loss-profile CSV in a list, empty if it configures none."""
    return [paths.LOSS_PROFILE.format(experiment=name)] if "loss_profile" in config["experiments"][name] else []


def loss_profile_files(wildcards):
    return loss_profile_csv(wildcards.experiment)


def predicted_vlb_files(wildcards):
    """The VLB predicted from the loss profile, in a list, empty if the experiment configures no profile."""
    return [paths.PREDICTED_VLB.format(experiment=wildcards.experiment)] if loss_profile_files(wildcards) else []


def experiment_targets(name):
    if not has_analysis(config["experiments"][name]):
        raise ValueError(f"experiment {name!r} configures no measurements (fid, etas, sampling, nll, vlb, figures)")
    tables = [paths.TABLE.format(experiment=name, number=table.number) + suffix for table in experiment_tables()
              for suffix in paths.TABLE_SUFFIXES]
    names = ["tradeoff", "fixed_noise", *(f"samples_{sampler}" for sampler in SAMPLERS)]
    diagnostics = loss_profile_csv(name) + ([auto_switch_path(name)] if loss_profile_csv(name) else [])
    if diagnostics:
        names += ["loss_profile", "predicted_vlb"]
    if "fid_vs_nfe" in config["experiments"][name]["figures"]:
        names.append("fid_vs_nfe")
    figures = [paths.FIGURE.format(experiment=name, figure=figure) + suffix for figure in names
               for suffix in paths.FIGURE_SUFFIXES]
    summary = [paths.SUMMARY.format(experiment=name) + suffix for suffix in (".md", ".csv")]
    return tables + summary + figures + diagnostics


def feature_network_files(wildcards):
    """What FID features are computed with: the demo's digit classifier or the Inception weights."""
    fid = experiment(wildcards)["fid"]
    if fid["features"] == "inception":
        return [download_path(fid["weights"])]
    return checkpoint_files(paths.CLASSIFIER.format(experiment=wildcards.experiment))


def per_eta(pattern, **extra):
    """Files of `pattern` for every configured eta, in config order (and for `extra` wildcards)."""

    def files(wildcards):
        return expand(pattern, experiment=wildcards.experiment, eta=eta_labels(experiment(wildcards)), **extra)

    return files


def sampler_results(spec):
    """The sampler results an experiment measures ('ode', 'ancestral', 'heun18', ...)."""
    return experiment_results(spec["sampling"])


def fid_files(wildcards):
    """Every FID of an experiment: each of its samplers (Heun at each step count too) at each eta."""
    return expand(paths.FID, experiment=wildcards.experiment,
                  sampler=sampler_results(experiment(wildcards)), eta=eta_labels(experiment(wildcards)))


def nll_files(wildcards):
    return expand(
        paths.NLL_SHARD,
        experiment=wildcards.experiment,
        eta=eta_labels(experiment(wildcards)),
        shard=nll_shards(wildcards.experiment),
    )


def vlb_jobs(name):
    """File stems of an experiment's VLB jobs per eta: run{k}, or runs{first}-{last} for grouped runs."""
    return [vlb_job_name(runs) for runs in vlb_job_runs(config["experiments"][name])]


def vlb_files(wildcards):
    return expand(
        paths.VLB_JOB,
        experiment=wildcards.experiment,
        eta=eta_labels(experiment(wildcards)),
        runs=vlb_jobs(wildcards.experiment),
    )


# An experiment's result files of each kind (table_registry.RESULT_FILES), as its tables and summary read them.
EXPERIMENT_RESULTS = {"nll": nll_files, "fid": fid_files, "vlb": vlb_files, "predicted": predicted_vlb_files}


def sample_panels(wildcards):
    """Shard 0 of every eta for the sampler that the figure shows."""
    return expand(
        paths.fill(paths.SAMPLE_SHARD, shard=0),
        experiment=wildcards.experiment,
        sampler=wildcards.sampler,
        eta=eta_labels(experiment(wildcards)),
    )


def result_files(kind, name):
    """One experiment's result files of a kind (table_registry.RESULT_FILES): its NLL shards, FIDs of every
    sampler, VLB jobs, or its predicted VLB (none where it configures no loss profile)."""
    spec = config["experiments"][name]
    if kind == "predicted":
        return [paths.PREDICTED_VLB.format(experiment=name)] if loss_profile_csv(name) else []
    return expand(RESULT_FILES[kind], experiment=name, eta=eta_labels(spec), shard=nll_shards(name),
                  sampler=sampler_results(spec), runs=vlb_jobs(name))


def figure_file(figure, suffix):
    """One of an experiment's figures (its .png or .pdf); `figure` may hold wildcards ("samples_{sampler}")."""
    return f"{paths.fill(paths.FIGURE, figure=figure)}{suffix}"


def table_path(table, suffix):
    return paths.fill(paths.TABLE, number=table.number) + suffix


def table_caption(table):
    """A table's report caption: a file of workflow/report/ (this file's ../report/), or an absolute path."""
    return table.caption if os.path.isabs(table.caption) else f"../report/{table.caption}"


def table_input_files(table):
    """{"inputs": the files of the kinds the table reads, in order; each optional kind: its files}."""

    def files(wildcards):
        inputs = [path for kind in table.reads for path in EXPERIMENT_RESULTS[kind](wildcards)]
        return {"inputs": inputs, **{kind: EXPERIMENT_RESULTS[kind](wildcards) for kind in table.optional}}

    return files


def table_arguments(table):
    """The table's optional inputs as flags (--predicted), from config and wildcards."""
    return lambda wildcards: rule_arguments.table_arguments(
        {kind: EXPERIMENT_RESULTS[kind](wildcards) for kind in table.optional})


def paper_table_files(wildcards):
    """{experiment: its result files} for each data set of the paper's table."""
    table = get_table(wildcards.number)
    return {name: [path for kind in table.reads for path in result_files(kind, name)] for name in config["paper"]}


def literature_table_files(wildcards):
    """{"<kind>_<experiment>": result files}, the names that rule_arguments.literature_table_arguments reads."""
    return {f"{kind}_{name}": result_files(kind, name) for name in config["paper"]
            for kind in get_table(wildcards.number).reads}


# -- the shared trunks of an eta sweep (trunks.smk) --

def trunk_output(pattern):
    return pattern if config.get("keep_trunk_states", False) else temp(pattern)


def previous_trunk_files(wildcards, path):
    """The state a trunk segment starts from (none for the first, which starts from the prior or the data)."""
    previous = sharing.previous_trunk_state(experiment(wildcards), wildcards.experiment, path, wildcards.level,
                                            wildcards.shard)
    return [] if previous is None else [previous]


def trunk_start_files(wildcards, path):
    """The trunk state a merge's sample or NLL shard starts from (none when it runs on its own)."""
    start = rule_arguments.trunk_start(config, wildcards.experiment, path, wildcards.eta, wildcards.shard)
    return [] if start is None else [start]
