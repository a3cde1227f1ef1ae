"""The rules' command-line arguments (expertmerge.rule_arguments) for the repository's config.yaml, parsed
back by `expertmerge.cli`: every flag a rule passes is one the CLI knows, and it carries the config's value."""
import copy
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from expertmerge.configuration import validate_config

from expertmerge import paths, rule_arguments
from expertmerge.cli import build_parser
from expertmerge.samplers import experiment_results
from expertmerge.pipeline import (IMAGE_SHAPES, auto_switch_path, expert_names, expert_stem, gamma_range, has_analysis,
                                  numeric_etas, shard_ranges, vlb_job_name, vlb_job_runs, training_chunk_stops,
                                  training_state_path)

REPO = Path(__file__).resolve().parents[1]
SPLITS = "results/some/data/splits.npz"


def load_config():
    """config.yaml with the schema's defaults filled in, as the Snakefile's `validate_config` leaves it."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate_config(config, REPO / "workflow/schemas/config.schema.yaml")
    return config


CONFIG = load_config()
ANALYSED = [name for name, spec in CONFIG["experiments"].items() if has_analysis(spec)]
EXPERTS = [(name, expert) for name, spec in CONFIG["experiments"].items() for expert in spec["experts"]]


def experts_with(source):
    return [(name, expert) for name, expert in EXPERTS if source in CONFIG["experiments"][name]["experts"][expert]]


def parse(command, arguments, *extra):
    return build_parser().parse_args([command, *shlex.split(arguments), *extra, "--out", "out"])


def download_path(name):
    return f"{CONFIG['download_dir']}/{name}"


def pinned(config, name):
    checksum = config["downloads"][name]["checksum"]
    return None if checksum == "unpinned" else checksum


def assert_expert_pair(args, name):
    spec = CONFIG["experiments"][name]
    for role, expert in expert_names(spec).items():
        assert getattr(args, role) == expert_stem(name, expert, spec["experts"][expert])


def assert_features(args, name):
    fid = CONFIG["experiments"][name]["fid"]
    assert args.features_kind == fid["features"]
    if fid["features"] == "inception":
        assert (args.features, args.features_checksum) == (download_path(fid["weights"]), pinned(CONFIG, fid["weights"]))
    else:
        assert (args.features, args.features_checksum) == (f"results/{name}/fid/classifier", None)


@pytest.mark.parametrize("download", CONFIG["downloads"])
def test_fetch(download):
    args = parse("fetch", rule_arguments.fetch_arguments(CONFIG, download))
    assert (args.source, args.checksum) == (CONFIG["downloads"][download]["url"], CONFIG["downloads"][download]["checksum"])


@pytest.mark.parametrize("name", CONFIG["experiments"])
def test_dataset(name):
    data = CONFIG["experiments"][name]["data"]
    args = parse("dataset", rule_arguments.dataset_arguments(CONFIG, name))
    assert args.source == data["source"]
    if data["source"] == "sklearn-digits":
        assert (args.seed, args.val_fraction, args.test_fraction) == (data["seed"], data["val_fraction"],
                                                                      data["test_fraction"])
        assert args.file == args.checksum == []
    else:
        assert dict(args.file) == {role: download_path(download) for role, download in data["files"].items()}
        assert dict(args.checksum) == {role: pinned(CONFIG, download) for role, download in data["files"].items()}


@pytest.mark.parametrize("name, expert", experts_with("train"))
def test_train_expert(name, expert):
    spec = CONFIG["experiments"][name]["experts"][expert]
    args = parse("train-expert", rule_arguments.train_expert_arguments(CONFIG, name, expert, SPLITS))
    assert (args.family, args.data, (args.gamma_min, args.gamma_max)) == (spec["family"], SPLITS,
                                                                           gamma_range(spec["noise_range"]))
    for key in ("steps", "batch_size", "lr", "ema_decay", "eval_every", "seed"):
        assert getattr(args, key) == spec["train"][key], key
    assert args.network == spec["train"].get("network", {})


@pytest.mark.parametrize("name, expert", experts_with("recipe"))
def test_train_recipe(name, expert):
    spec = CONFIG["experiments"][name]["experts"][expert]
    recipe = spec["recipe"]
    args = parse("train-recipe", rule_arguments.train_recipe_arguments(CONFIG, name, expert, SPLITS), "--workdir", "w")
    assert (args.recipe, args.family, args.data) == (recipe["name"], spec["family"], SPLITS)
    assert (args.gamma_min, args.gamma_max) == gamma_range(spec["noise_range"])
    assert (args.seed, args.checkpoint_every, args.log_every) == (recipe["seed"], recipe["checkpoint_every"],
                                                                   recipe["log_every"])
    assert (args.max_steps, args.batch_size, args.network) == (recipe.get("max_steps"), recipe.get("batch_size"),
                                                                recipe.get("network"))


@pytest.mark.parametrize("name, expert", experts_with("recipe"))
def test_train_recipe_chain(name, expert):
    """Every job of a training chain but the last stops at its step and hands on its state to the next."""
    stops = training_chunk_stops(CONFIG["experiments"][name]["experts"][expert]["recipe"])
    assert len(stops) > 1 and stops[-1] - stops[-2] <= stops[0] and stops == sorted(set(stops))
    for index, stop in enumerate(stops):
        until = stop if index < len(stops) - 1 else None
        args = parse("train-recipe", rule_arguments.train_recipe_arguments(CONFIG, name, expert, SPLITS, until),
                     "--workdir", "w")
        assert args.until_step == until
        previous = training_state_path(name, expert, stops[index - 1]) if index else None
        assert args.resume_from == previous
    with pytest.raises(ValueError, match="not a step at which a job"):
        rule_arguments.train_recipe_arguments(CONFIG, name, expert, SPLITS, stops[0] + 1)


@pytest.mark.parametrize("name, expert", experts_with("fetch"))
def test_import_expert_from_a_download(name, expert):
    spec = CONFIG["experiments"][name]["experts"][expert]
    args = parse("import-expert", rule_arguments.import_expert_arguments(CONFIG, name, expert))
    download = spec["fetch"]["download"]
    assert (args.input, args.format, args.family) == (download_path(download), spec["fetch"]["format"], spec["family"])
    assert (args.gamma_min, args.gamma_max) == gamma_range(spec["noise_range"])
    assert args.image_shape == list(IMAGE_SHAPES[CONFIG["experiments"][name]["data"]["source"]])
    assert (args.checksum, args.network) == (pinned(CONFIG, download), spec["fetch"].get("network"))


@pytest.mark.parametrize("name", [name for name in ANALYSED if "classifier" in CONFIG["experiments"][name]["fid"]])
def test_train_classifier(name):
    spec = CONFIG["experiments"][name]["fid"]["classifier"]
    args = parse("train-classifier", rule_arguments.train_classifier_arguments(CONFIG, name, SPLITS))
    assert (args.data, args.steps, args.batch_size, args.lr, args.seed) == (SPLITS, spec["steps"], spec["batch_size"],
                                                                             spec["lr"], spec["seed"])


@pytest.mark.parametrize("name", ANALYSED)
def test_reference_statistics(name):
    args = parse("reference-stats", rule_arguments.reference_statistics_arguments(CONFIG, name, SPLITS))
    assert (args.data, args.split) == (SPLITS, "train")
    assert_features(args, name)


@pytest.mark.parametrize("name", ANALYSED)
def test_heun_sample_shards_one_per_step_count(name):
    sampling = CONFIG["experiments"][name]["sampling"]
    names = experiment_results(sampling)
    assert names == ["ode", "ancestral", *(f"heun{steps}" for steps in sampling["heun"]["steps"])]
    for sampler, steps in zip(names[2:], sampling["heun"]["steps"]):
        args = parse("sample", rule_arguments.sample_shard_arguments(CONFIG, name, sampler, "0.5", "0"))
        assert (args.sampler, args.steps, args.schedule) == ("heun", steps, sampling["heun"]["schedule"])
        assert_expert_pair(args, name)
        assert_features(args, name)
    args = parse("figure-fid-vs-nfe", rule_arguments.figure_fid_vs_nfe_arguments(CONFIG, name), "--fid", "f.json")
    assert args.etas == [str(eta) for eta in CONFIG["experiments"][name]["figures"]["fid_vs_nfe"]]


def test_heun_schedules_agree_between_the_declaration_the_cli_and_the_sampler():
    from expertmerge.samplers import get_sampler
    from expertmerge.sampling import HEUN_SCHEDULES

    heun = get_sampler("heun").option("schedule").schema
    cli = next(action for action in build_parser()._subparsers._group_actions[0].choices["sample"]._actions
               if action.dest == "schedule")
    assert tuple(heun["enum"]) == tuple(cli.choices) == HEUN_SCHEDULES


@pytest.mark.parametrize("name", ANALYSED)
@pytest.mark.parametrize("sampler", ["ode", "ancestral"])
def test_sample_shard(name, sampler):
    sampling = CONFIG["experiments"][name]["sampling"]
    shards = shard_ranges(sampling["num_samples"], sampling["shard_size"])
    for shard in {0, len(shards) - 1}:
        args = parse("sample", rule_arguments.sample_shard_arguments(CONFIG, name, sampler, "eta_min", str(shard)))
        assert_expert_pair(args, name)
        assert_features(args, name)
        assert (args.eta, args.sampler, args.seeds) == ("eta_min", sampler, range(*shards[shard]))
        assert args.batch_size == sampling["batch_size"]
        if sampler == "ode":
            assert (args.rtol, args.atol, args.steps) == (sampling["ode"]["rtol"], sampling["ode"]["atol"], None)
            assert args.error_norm == sampling["ode"]["error_norm"]
        else:
            assert (args.steps, args.clip_denoised) == (sampling["ancestral"]["steps"],
                                                        sampling["ancestral"]["clip_denoised"])


@pytest.mark.parametrize("name", ANALYSED)
def test_nll_shard(name):
    nll = CONFIG["experiments"][name]["nll"]
    last = nll["shards"] - 1
    args = parse("nll", rule_arguments.nll_shard_arguments(CONFIG, name, "0.3", str(last), SPLITS))
    assert_expert_pair(args, name)
    assert (args.eta, args.data, args.split, args.shard) == ("0.3", SPLITS, "test", last)
    assert (args.shards, args.images, args.rtol, args.atol) == (nll["shards"], nll.get("images"), nll["rtol"],
                                                                nll["atol"])
    assert (args.dequantization, args.batch_size) == (nll["dequantization"], nll["batch_size"])
    assert args.error_norm == nll["error_norm"]


@pytest.mark.parametrize("name", ANALYSED)
def test_merges_start_from_the_shared_trunk_and_baselines_and_auto_do_not(name):
    """eta 0.3 leaves the sampling trunk at the anchor 0.3 and the NLL trunk at 0.3 (share_grid 10); eta_min's
    sampling anchor is 0.1, its NLL anchor the data (it runs on its own); baselines, auto and Heun share nothing."""
    for sampler, eta, expected in (("ancestral", "0.3", "level0.3"), ("ode", "eta_min", "level0.1"),
                                   ("ancestral", "auto", None), ("ode", expert_names(CONFIG["experiments"][name])[
                                       "quality"], None), ("heun18", "0.3", None)):
        args = parse("sample", rule_arguments.sample_shard_arguments(CONFIG, name, sampler, eta, "0"))
        assert (args.start_state == f"results/{name}/trunks/{sampler}/{expected}/shard0.npz") if expected else (
            args.start_state is None), (sampler, eta, args.start_state)
    for eta, expected in (("0.3", "level0.3"), ("eta_max", "level0.8"), ("eta_min", None)):
        args = parse("nll", rule_arguments.nll_shard_arguments(CONFIG, name, eta, "0", SPLITS))
        assert args.start_state == (expected and f"results/{name}/trunks/nll/{expected}/shard0.npz"), eta


@pytest.mark.parametrize("name", ANALYSED)
def test_trunk_segments_chain_anchor_to_anchor(name):
    """A sampling segment runs eta_min's merge (its quality piece serves every anchor) from the anchor above;
    an NLL segment eta_max's merge from the anchor below; the first starts from the prior or the data."""
    args = parse("sample", rule_arguments.trunk_segment_arguments(CONFIG, name, "ode", "0.5", "0", SPLITS))
    assert (args.eta, args.sampler, args.until_level, args.features) == ("eta_min", "ode", 0.5, None)
    assert args.start_state == f"results/{name}/trunks/ode/level0.6/shard0.npz"
    assert parse("sample", rule_arguments.trunk_segment_arguments(CONFIG, name, "ancestral", "0.9", "0",
                                                                  SPLITS)).start_state is None
    args = parse("nll", rule_arguments.trunk_segment_arguments(CONFIG, name, "nll", "0.5", "0", SPLITS))
    assert (args.eta, args.until_level, args.start_state) == ("eta_max", 0.5, f"results/{name}/trunks/nll/level0.4/shard0.npz")
    assert parse("nll", rule_arguments.trunk_segment_arguments(CONFIG, name, "nll", "0.1", "0",
                                                               SPLITS)).start_state is None
    with pytest.raises(ValueError, match="not an anchor"):
        rule_arguments.trunk_segment_arguments(CONFIG, name, "nll", "0.35", "0", SPLITS)


def test_sharing_off_runs_every_eta_on_its_own():
    config = copy.deepcopy(CONFIG)
    name = ANALYSED[0]
    config["experiments"][name]["sampling"]["share"] = config["experiments"][name]["nll"]["share"] = False
    assert "--start-state" not in rule_arguments.sample_shard_arguments(config, name, "ancestral", "0.3", "0")
    assert "--start-state" not in rule_arguments.nll_shard_arguments(config, name, "0.3", "0", SPLITS)


@pytest.mark.parametrize("name", ANALYSED)
def test_vlb_run(name):
    for runs in vlb_job_runs(CONFIG["experiments"][name]):
        args = parse("vlb", rule_arguments.vlb_run_arguments(CONFIG, name, "vdm", vlb_job_name(runs), SPLITS))
        assert_expert_pair(args, name)
        assert (args.eta, args.data, args.split, args.runs) == ("vdm", SPLITS, "test", list(runs))


@pytest.mark.parametrize("name", [name for name, spec in CONFIG["experiments"].items() if "loss_profile" in spec])
def test_loss_profile_and_its_figure(name):
    profile = CONFIG["experiments"][name]["loss_profile"]
    for shard in range(profile["shards"]):
        args = parse("loss-profile", rule_arguments.loss_profile_shard_arguments(CONFIG, name, shard, SPLITS))
        assert_expert_pair(args, name)
        spec = CONFIG["experiments"][name]
        candidates = {expert for merge in spec.get("merges", {}).values()
                      for expert in merge.get("auto", [])} - set(expert_names(spec).values())
        assert dict(args.expert) == {expert: expert_stem(name, expert, spec["experts"][expert])
                                     for expert in candidates}  # the others an auto merge chooses among
        assert (args.data, args.split, args.points) == (SPLITS, profile["split"], profile["points"])
        assert (args.images, args.seed, args.batch_size) == (profile.get("images"), profile["seed"], profile["batch_size"])
        assert (args.shard, args.shards) == (shard, profile["shards"])

    args = parse("figure-loss-profile", rule_arguments.figure_loss_profile_arguments(CONFIG, name), "--profile", "p.csv")
    assert args.etas == numeric_etas(CONFIG["experiments"][name])

    args = parse("predict-vlb", rule_arguments.predict_vlb_arguments(CONFIG, name, SPLITS), "--profile", "p.csv")
    assert (args.data, args.split, args.images, args.seed) == (SPLITS, profile["split"], profile.get("images"),
                                                               profile["seed"])
    spec = CONFIG["experiments"][name]
    pair = set(expert_names(spec).values())
    predicted = [str(eta) for eta in spec["etas"] if str(eta) not in spec.get("merges", {})
                 and (str(eta) not in spec["experts"] or str(eta) in pair)]
    assert args.etas == predicted  # the eta grid; experts beyond the pair are not predicted
    merges = {name: merge for name, merge in spec.get("merges", {}).items() if name in map(str, spec["etas"])}
    assert {name: json.loads(text) for name, text in args.merges} == {
        name: merge for name, merge in merges.items() if "auto" not in merge
        and not any(isinstance(value, dict) for value in merge["switches"])}  # hard switches; blends are not
    experiment = name
    assert dict(args.auto_merges) == {merge: paths.AUTO_MERGE.format(experiment=experiment, merge=merge)
                                      for merge in merges if "auto" in merges[merge]}
    assert args.switches == (auto_switch_path(name) if "auto" in args.etas else None)


@pytest.mark.parametrize("name", ANALYSED)
def test_the_auto_eta_reads_its_switches(name):
    """Every job of eta auto gets the switches chosen from the loss profile; no other eta does."""
    splits, spec = SPLITS, CONFIG["experiments"][name]
    for eta in ("auto", "0.5"):
        expected = auto_switch_path(name) if eta == "auto" else None
        assert parse("nll", rule_arguments.nll_shard_arguments(CONFIG, name, eta, 0, splits)).switches == expected
        assert parse("vlb", rule_arguments.vlb_run_arguments(CONFIG, name, eta, "run1", splits)).switches == expected
        for sampler in ("ode", "ancestral"):
            sample = parse("sample", rule_arguments.sample_shard_arguments(CONFIG, name, sampler, eta, 0))
            assert sample.switches == expected
    assert "auto" not in spec["etas"] or "loss_profile" in spec


@pytest.mark.parametrize("name,merge", [(name, merge) for name, spec in CONFIG["experiments"].items()
                                        for merge, value in spec.get("merges", {}).items() if "auto" in value])
def test_a_named_auto_merge_is_chosen_by_auto_merge_and_run_from_its_choice(name, merge):
    spec = CONFIG["experiments"][name]
    args = parse("auto-merge", rule_arguments.auto_merge_arguments(CONFIG, name, merge), "--profile", "p.csv")
    assert args.experts == spec["merges"][merge]["auto"]
    args = parse("nll", rule_arguments.nll_shard_arguments(CONFIG, name, merge, 0, SPLITS))
    assert_expert_pair(args, name)
    assert args.eta == merge and args.switches == paths.AUTO_MERGE.format(experiment=name, merge=merge)
    others = set(spec["merges"][merge]["auto"]) - set(expert_names(spec).values())
    assert {expert for expert, _ in args.expert} == others and args.merge is None and args.start_state is None


@pytest.mark.parametrize("name", ANALYSED)
def test_figure_grids(name):
    figures = CONFIG["experiments"][name]["figures"]
    args = parse("figure-grid", rule_arguments.figure_fixed_noise_arguments(CONFIG, name), "--shards", "s.npz")
    assert (args.kind, args.count) == ("fixed-noise", figures["fixed_noise_rows"])
    args = parse("figure-grid", rule_arguments.figure_samples_arguments(CONFIG, name, "ancestral"), "--shards", "s.npz")
    assert (args.kind, args.count, args.title) == ("samples", figures["grid_samples"], "ancestral sampler")


def recommend_budget(name):
    return CONFIG["experiments"][name].get("recommend", {}).get("fid_budget", 0.05)


@pytest.mark.parametrize("name", ANALYSED)
@pytest.mark.parametrize("profile, expected", [([], None), (["p.csv"], "p.csv"), ("p.csv", "p.csv")])
def test_summary_and_table4(name, profile, expected):
    files = ["--nll", "n.csv", "--vlb", "v.json", "--fid", "f.json"]
    args = parse("summary", rule_arguments.summary_arguments(CONFIG, name, profile, profile), *files)
    assert args.profile == args.predicted == expected
    assert args.recommend_fid_budget == recommend_budget(name) and args.fid_budget == 0.1  # the claim's own budget
    args = parse("table", rule_arguments.table_arguments({"predicted": profile}), "--table", "4", "--inputs", "v.json")
    assert args.predicted == expected


@pytest.mark.parametrize("name", ANALYSED)
def test_figure_tradeoff(name):
    files = ["--nll", "n.csv", "--vlb", "v.json", "--fid", "f.json"]
    args = parse("figure-tradeoff", rule_arguments.figure_tradeoff_arguments(CONFIG, name), *files)
    assert args.recommend_fid_budget == recommend_budget(name)


def test_recommend_budget_is_configured_per_analysed_experiment_and_defaults_to_5_percent():
    assert all("recommend" in CONFIG["experiments"][name] for name in ANALYSED)
    config = copy.deepcopy(CONFIG)
    del config["experiments"]["cifar10"]["recommend"]
    validate_config(config, REPO / "workflow/schemas/config.schema.yaml")
    assert rule_arguments.recommend_fid_budget(config, "cifar10") == 0.05
    config["experiments"]["cifar10"]["recommend"] = {"fid_budget": 0.2}
    args = parse("figure-tradeoff", rule_arguments.figure_tradeoff_arguments(config, "cifar10"), "--nll", "n",
                 "--vlb", "v", "--fid", "f")
    assert args.recommend_fid_budget == 0.2


@pytest.mark.parametrize("number", [1, 2, 4])
def test_paper_table(number):
    files = {name: [f"results/{name}/r{k}.csv" for k in range(3)] for name in CONFIG["paper"]}
    args = parse("paper-table", rule_arguments.paper_table_arguments(CONFIG, str(number), files))
    assert args.table == number
    assert args.dataset == [[title, *files[name]] for name, title in CONFIG["paper"].items()]


@pytest.mark.parametrize("number", [3, 5])
def test_literature_table(number):
    kinds = ("nll", "vlb", "fid")
    files = {f"{kind}_{name}": [f"results/{name}/{kind}{k}" for k in range(2)] for name in CONFIG["paper"]
             for kind in kinds}
    args = parse("literature-table", rule_arguments.literature_table_arguments(CONFIG, str(number), files))
    assert args.table == number
    for kind in kinds:
        assert getattr(args, kind) == [[name, *files[f"{kind}_{name}"]] for name in CONFIG["paper"]]
    assert [(name, float(budget)) for name, budget in args.recommend_fid_budget] == [
        (name, recommend_budget(name)) for name in CONFIG["paper"]]


AWKWARD = "it's a \"quoted\" $HOME `x` value;"  # a space, both quotes and what a shell would expand


def shell_words(arguments):
    """The words a real shell makes of `arguments` (as a rule's shell command passes them)."""
    script = f"{shlex.quote(sys.executable)} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' {arguments}"
    return json.loads(subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout)


def test_awkward_config_values_round_trip_through_the_shell():
    config = copy.deepcopy(CONFIG)
    config["download_dir"] = f"downloads/{AWKWARD}"
    config["downloads"]["cifar-10-python.tar.gz"]["url"] = f"file:///data/{AWKWARD}.tar.gz"
    config["paper"]["cifar10"] = AWKWARD
    vdm = config["experiments"]["cifar10"]["experts"]["vdm"]
    vdm["recipe"]["network"] = {"note": AWKWARD, "channels": [8, 16]}
    edm = config["experiments"]["cifar10"]["experts"]["edm"]
    edm["path"] = {"path": f"/data/{AWKWARD}.pkl", "format": "edm-pickle", "network": {"note": AWKWARD}}
    del edm["fetch"]

    cases = [
        ("fetch", rule_arguments.fetch_arguments(config, "cifar-10-python.tar.gz"), ("source",)),
        ("dataset", rule_arguments.dataset_arguments(config, "cifar10"), ("file",)),
        ("train-recipe", rule_arguments.train_recipe_arguments(config, "cifar10", "vdm", SPLITS) + " --workdir w",
         ("network",)),
        ("import-expert", rule_arguments.import_expert_arguments(config, "cifar10", "edm"), ("input", "network")),
        ("paper-table", rule_arguments.paper_table_arguments(config, "1", {"cifar10": ["a"], "imagenet32": ["b"]}),
         ("dataset",)),
    ]
    for command, arguments, keys in cases:
        words = shell_words(arguments)
        assert words == shlex.split(arguments), command
        args = build_parser().parse_args([command, *words, "--out", "out"])
        values = {key: getattr(args, key) for key in keys}
        assert values == {
            "fetch": {"source": f"file:///data/{AWKWARD}.tar.gz"},
            "dataset": {"file": [("archive", f"downloads/{AWKWARD}/cifar-10-python.tar.gz")]},
            "train-recipe": {"network": {"note": AWKWARD, "channels": [8, 16]}},
            "import-expert": {"input": f"/data/{AWKWARD}.pkl", "network": {"note": AWKWARD}},
            "paper-table": {"dataset": [[AWKWARD, "a"], ["ImageNet32", "b"]]},
        }[command]


def test_importing_the_module_does_not_import_torch():
    subprocess.run([sys.executable, "-c", "import expertmerge.rule_arguments, sys; assert 'torch' not in sys.modules"],
                   check=True)
