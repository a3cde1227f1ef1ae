# Plumbing for the workflow's stages: config lookups, eta labels, shards and target lists.
import re

from expertmerge.downloads import UNPINNED
from expertmerge.pipeline import (check_config, eta_labels, expert_names, expert_stem, gamma_range, has_analysis,
                                  numeric_etas, runs_of_vlb_job, shard_ranges, unpinned_downloads, vlb_job_name,
                                  vlb_job_runs)

check_config(config)
for unpinned in unpinned_downloads(config):
    logger.warning(f"downloads: {unpinned} is not pinned by a checksum in config.yaml; its fetch log gives its SHA-256")

SAMPLERS = ["ode", "ancestral"]
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
    """The checkpoints an eta needs: one expert for its baseline, both for a merge."""
    if wildcards.eta in expert_names(experiment(wildcards)).values():
        return checkpoint_files(stem_of(wildcards.experiment, wildcards.eta))
    return both_expert_files(wildcards)


def both_expert_files(wildcards):
    names = expert_names(experiment(wildcards))
    stems = [stem_of(wildcards.experiment, names[role]) for role in ("quality", "likelihood")]
    return [path for stem in stems for path in checkpoint_files(stem)]


def experts_argument(wildcards):
    """--quality/--likelihood arguments naming the checkpoint stems."""
    names = expert_names(experiment(wildcards))
    stems = {role: stem_of(wildcards.experiment, name) for role, name in names.items()}
    return f"--quality {stems['quality']} --likelihood {stems['likelihood']}"


def all_expert_files():
    """Every configured expert's checkpoint, of every experiment."""
    return [path for name, spec in config["experiments"].items() for expert in spec["experts"]
            for path in checkpoint_files(stem_of(name, expert))]


def expert_spec(wildcards):
    return experiment(wildcards)["experts"][wildcards.expert]


def download_path(name):
    return f"{DOWNLOAD_DIR}/{name}"


def pinned_checksum(name):
    """A download's checksum, or None when config.yaml leaves it unpinned (then nothing is checked)."""
    checksum = config["downloads"][name]["checksum"]
    return None if checksum == UNPINNED else checksum


def data_files(wildcards):
    """{role: path} of the downloads a data set is read from (none for scikit-learn's digits)."""
    return {role: download_path(name) for role, name in experiment(wildcards)["data"].get("files", {}).items()}


def dataset_arguments(wildcards, input):
    data = experiment(wildcards)["data"]
    if data["source"] == "sklearn-digits":
        return (f"--seed {data['seed']} --val-fraction {data['val_fraction']}"
                f" --test-fraction {data['test_fraction']}")
    checksums = {role: pinned_checksum(name) for role, name in data["files"].items()}
    return " ".join(f"--file {role}={input[role]}" + (f" --checksum {role}={checksums[role]}" if checksums[role] else "")
                    for role in data["files"])


def imported_file(wildcards):
    """The file an imported expert is converted from: a download, or a given path (a stem's two files)."""
    spec = expert_spec(wildcards)
    if "fetch" in spec:
        return [download_path(spec["fetch"]["download"])]
    if spec["path"]["format"] == "expertmerge":
        return checkpoint_files(spec["path"]["path"])
    return [spec["path"]["path"]]


def import_arguments(wildcards):
    spec = expert_spec(wildcards)
    source = spec.get("fetch") or spec["path"]
    checksum = pinned_checksum(source["download"]) if "fetch" in spec else source.get("checksum")
    low, high = gamma_range(spec["noise_range"])
    image_shape = " ".join(map(str, IMAGE_SHAPES[experiment(wildcards)["data"]["source"]]))
    arguments = [f"--input {spec['path']['path'] if 'path' in spec else download_path(source['download'])}",
                 f"--format {source['format']} --family {spec['family']} --gamma-min {low} --gamma-max {high}",
                 f"--image-shape {image_shape}"]
    if checksum:
        arguments.append(f"--checksum {checksum}")
    if "network" in source:
        arguments.append(f"--network {shell_json(source['network'])}")
    return " ".join(arguments)


def recipe_arguments(wildcards):
    spec = expert_spec(wildcards)
    recipe = spec["recipe"]
    low, high = gamma_range(spec["noise_range"])
    arguments = [f"--recipe {recipe['name']} --family {spec['family']} --gamma-min {low} --gamma-max {high}",
                 f"--seed {recipe['seed']} --checkpoint-every {recipe['checkpoint_every']}",
                 f"--log-every {recipe['log_every']}"]
    arguments += [f"--{key.replace('_', '-')} {recipe[key]}" for key in ("max_steps", "batch_size") if key in recipe]
    if "network" in recipe:
        arguments.append(f"--network {shell_json(recipe['network'])}")
    return " ".join(arguments)


def shell_json(value):
    import json

    return shell_quote(json.dumps(value, separators=(",", ":")))


IMAGE_SHAPES = {"sklearn-digits": (1, 8, 8), "cifar10": (3, 32, 32), "imagenet32": (3, 32, 32)}


def loss_profile_csv(name):
    """An experiment's loss-profile CSV in a list, empty if it configures none."""
    return [f"results/{name}/diagnostics/loss_profile.csv"] if "loss_profile" in config["experiments"][name] else []


def loss_profile_files(wildcards):
    return loss_profile_csv(wildcards.experiment)


def experiment_targets(name):
    if not has_analysis(config["experiments"][name]):
        raise ValueError(f"experiment {name!r} configures no measurements (fid, etas, sampling, nll, vlb, figures)")
    base = f"results/{name}"
    tables = [f"{base}/tables/table{k}.{ext}" for k in (1, 2, 4) for ext in ("csv", "md", "tex")]
    names = ["tradeoff", "fixed_noise", *(f"samples_{sampler}" for sampler in SAMPLERS)]
    diagnostics = loss_profile_csv(name)
    if diagnostics:
        names.append("loss_profile")
    figures = [f"{base}/figures/{name}.{ext}" for name in names for ext in ("png", "pdf")]
    summary = [f"{base}/tables/summary.md", f"{base}/tables/summary.csv"]
    return tables + summary + figures + diagnostics


def feature_network_files(wildcards):
    """What FID features are computed with: the demo's digit classifier or the Inception weights."""
    fid = experiment(wildcards)["fid"]
    if fid["features"] == "inception":
        return [download_path(fid["weights"])]
    return checkpoint_files(f"results/{wildcards.experiment}/fid/classifier")


def feature_arguments(wildcards):
    fid = experiment(wildcards)["fid"]
    if fid["features"] == "inception":
        checksum = pinned_checksum(fid["weights"])
        pinned = f" --features-checksum {checksum}" if checksum else ""
        return f"--features-kind inception --features {download_path(fid['weights'])}{pinned}"
    return f"--features-kind digits-classifier --features results/{wildcards.experiment}/fid/classifier"


def sampler_options(wildcards):
    sampling = experiment(wildcards)["sampling"]
    if wildcards.sampler == "ode":
        return f"--rtol {sampling['ode']['rtol']} --atol {sampling['ode']['atol']}"
    return f"--steps {sampling['ancestral']['steps']}"


def shard_seeds(wildcards):
    sampling = experiment(wildcards)["sampling"]
    start, stop = shard_ranges(sampling["num_samples"], sampling["shard_size"])[int(wildcards.shard)]
    return f"{start}:{stop}"


def per_eta(pattern, **extra):
    """Files of `pattern` for every configured eta, in config order (and for `extra` wildcards)."""

    def files(wildcards):
        return expand(pattern, experiment=wildcards.experiment, eta=eta_labels(experiment(wildcards)), **extra)

    return files


def nll_files(wildcards):
    return expand(
        "results/{experiment}/nll/{eta}/shard{shard}.csv",
        experiment=wildcards.experiment,
        eta=eta_labels(experiment(wildcards)),
        shard=nll_shards(wildcards.experiment),
    )


def vlb_jobs(name):
    """File stems of an experiment's VLB jobs per eta: run{k}, or runs{first}-{last} for grouped runs."""
    return [vlb_job_name(runs) for runs in vlb_job_runs(config["experiments"][name])]


def vlb_files(wildcards):
    return expand(
        "results/{experiment}/vlb/{eta}/{runs}.json",
        experiment=wildcards.experiment,
        eta=eta_labels(experiment(wildcards)),
        runs=vlb_jobs(wildcards.experiment),
    )


def vlb_run_seeds(wildcards):
    return " ".join(map(str, runs_of_vlb_job(wildcards.runs)))


def sample_panels(wildcards):
    """Shard 0 of every eta for the sampler that the figure shows."""
    return expand(
        "results/{experiment}/samples/{sampler}/{eta}/shard0.npz",
        experiment=wildcards.experiment,
        sampler=wildcards.sampler,
        eta=eta_labels(experiment(wildcards)),
    )


def network_argument(train):
    """--network only when the config sets network hyper-parameters (else the family's defaults)."""
    return f"--network {shell_json(train['network'])}" if "network" in train else ""


PAPER_TABLE_RESULTS = {
    "1": "results/{experiment}/nll/{eta}/shard{shard}.csv",
    "2": "results/{experiment}/fid/{sampler}/{eta}.json",
    "4": "results/{experiment}/vlb/{eta}/{runs}.json",
}


def result_files(kind, name):
    """One experiment's result files of a kind: "1" (NLL shards), "2" (FID per sampler) or "4" (VLB runs)."""
    spec = config["experiments"][name]
    return expand(PAPER_TABLE_RESULTS[kind], experiment=name, eta=eta_labels(spec), shard=nll_shards(name),
                  sampler=SAMPLERS, runs=vlb_jobs(name))


def paper_table_files(wildcards):
    return [path for name in config["paper"] for path in result_files(wildcards.number, name)]


def paper_table_arguments(wildcards):
    return " ".join(f"--dataset {shell_quote(title)} " + " ".join(result_files(wildcards.number, name))
                    for name, title in config["paper"].items())


def literature_table_files(wildcards):
    return {f"{kind}_{name}": result_files(number, name) for name in config["paper"]
            for kind, number in (("nll", "1"), ("vlb", "4"), ("fid", "2"))}


def literature_table_arguments(wildcards):
    return " ".join(f"--{kind} {name} " + " ".join(result_files(number, name)) for name in config["paper"]
                    for kind, number in (("nll", "1"), ("vlb", "4"), ("fid", "2")))


def shell_quote(text):
    import shlex

    return shlex.quote(str(text))
