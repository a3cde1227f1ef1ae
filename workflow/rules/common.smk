# Plumbing for the workflow's stages: config lookups, eta labels, shards and target lists.
from expertmerge.pipeline import check_config, eta_labels, expert_names, gamma_range, shard_ranges

check_config(config)

SAMPLERS = ["ode", "ancestral"]


def experiment(wildcards):
    return config["experiments"][wildcards.experiment]


def sample_shards(name):
    sampling = config["experiments"][name]["sampling"]
    return range(len(shard_ranges(sampling["num_samples"], sampling["shard_size"])))


def nll_shards(name):
    return range(config["experiments"][name]["nll"]["shards"])


def expert_files(wildcards):
    """The checkpoints an eta needs: one expert for its baseline, both for a merge."""
    names = expert_names(experiment(wildcards))
    needed = [wildcards.eta] if wildcards.eta in names.values() else [names["quality"], names["likelihood"]]
    stem = f"results/{wildcards.experiment}/experts/"
    return [stem + name + ext for name in needed for ext in (".safetensors", ".json")]


def experts_argument(wildcards):
    """--quality/--likelihood arguments naming the checkpoint stems."""
    names = expert_names(experiment(wildcards))
    stem = f"results/{wildcards.experiment}/experts/"
    return f"--quality {stem}{names['quality']} --likelihood {stem}{names['likelihood']}"


def experiment_targets(name):
    base = f"results/{name}"
    tables = [f"{base}/tables/table{k}.{ext}" for k in (1, 2, 4) for ext in ("csv", "md", "tex")]
    figures = [f"{base}/figures/fig{k}.{ext}" for k in (2, 3, 6, 7) for ext in ("png", "pdf")]
    return tables + figures


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


def vlb_files(wildcards):
    return expand(
        "results/{experiment}/vlb/{eta}/run{run}.json",
        experiment=wildcards.experiment,
        eta=eta_labels(experiment(wildcards)),
        run=range(1, experiment(wildcards)["vlb"]["runs"] + 1),
    )


SAMPLE_FIGURES = {"6": "ode", "7": "ancestral"}


def sample_panels(wildcards):
    """Shard 0 of every eta for the sampler that figure `number` shows."""
    return expand(
        "results/{experiment}/samples/{sampler}/{eta}/shard0.npz",
        experiment=wildcards.experiment,
        sampler=SAMPLE_FIGURES[wildcards.number],
        eta=eta_labels(experiment(wildcards)),
    )


def fourier_argument(train):
    """--fourier-exponents only when the config sets them (else the family's default)."""
    if "fourier_exponents" not in train:
        return ""
    return " ".join(["--fourier-exponents", *map(str, train["fourier_exponents"])])
