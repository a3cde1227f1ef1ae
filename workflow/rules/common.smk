# Plumbing shared by the rule files: config lookups, eta labels, shards and target lists.
from expertmerge.pipeline import check_config, eta_labels, expert_names, gamma_range, shard_ranges

check_config(config)

SAMPLERS = ["ode", "ancestral"]
RESULTS = "results/{experiment}"


wildcard_constraints:
    experiment="|".join(config["experiments"]),
    sampler="|".join(SAMPLERS),
    shard=r"\d+",
    run=r"\d+",
    expert=r"[a-z][a-z0-9_-]*",
    eta=r"[a-z0-9_.-]+",


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
