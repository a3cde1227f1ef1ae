"""Samplers and tables are declared once (expertmerge.samplers, expertmerge.table_registry).

Every sampler's declaration agrees with its function, the CLI and the config schema; and a sampler
registered by this file alone (a deterministic Euler sampler) goes through `expertmerge sample`, a
config.yaml that names it, `snakemake -n` and Table 2's columns; a table registered here alone (Table 6:
the NFE per eta of every sampler) goes through `expertmerge table`, `snakemake -n` and the demo's targets.
Subprocesses find both through EXPERTMERGE_PLUGINS=test_samplers:register_toy_sampler (and ..._table),
with this folder on PYTHONPATH; nothing outside this file is edited.
"""
import copy
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import make_tiny_experts

from expertmerge import samplers, table_registry
from expertmerge.configuration import ConfigError, validate_config, with_samplers
from expertmerge.images import to_uint8
from expertmerge.samplers import Option, Sampler, integer
from expertmerge.sampling import SampleRecord, heun_noise_levels
from expertmerge.seeding import per_image_generators
from expertmerge.table_registry import Table

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
BIN = Path(sys.executable).parent / "expertmerge"
SHAPE = (1, 2, 2)


# ----------------------------------------------------------------------------
# The toy sampler and the toy table, registered by this file alone.

def sample_euler(expert, seeds, shape, *, steps: int = 12, batch_size: int = 64, device=None) -> SampleRecord:
    """Deterministic Euler steps of the PF-ODE (dx/ds = (x - D(x; s)) / s) on EDM's levels: first order,
    one network evaluation per step; a merge's switch is a step boundary."""
    levels = heun_noise_levels(expert, steps, schedule="inserted")
    seeds, xs = [int(seed) for seed in seeds], []
    for start in range(0, len(seeds), batch_size):
        generators = per_image_generators(seeds[start:start + batch_size])
        x = levels[0] * torch.stack([torch.randn(shape, generator=g) for g in generators]).double()
        for s, s_next in zip(levels[:-1], levels[1:]):
            x = x + (s_next - s) * (x - expert.denoise(x.float(), s).double()) / s
        xs.append(x.float())
    x = torch.cat(xs)
    return SampleRecord(x=x, images=to_uint8(x), nfe=torch.full((len(x),), len(levels) - 1, dtype=torch.int64))


EULER = Sampler("euler", sample_euler, "Euler", description="a toy: Euler steps of the PF-ODE on EDM's levels",
                options=(Option("steps", integer(1, 1000), 12, "Euler steps per image"),))


def nfe_table(records):
    """Table 6: the mean NFE per eta (rows) of every sampler (columns)."""
    wide = records.pivot_table(index="eta_label", columns="sampler", values="nfe_mean", sort=False)
    table = wide.rename(columns=samplers.result_title).reset_index(names="Threshold")
    table.attrs.update(decimals={column: 0 for column in table.columns[1:]}, errors={})
    return table


NFE_TABLE = Table(6, "the mean NFE per eta of every sampler", ("fid",), nfe_table,
                  caption=str(Path(__file__).resolve()))


def register_toy_sampler():
    samplers.register(EULER)


def register_toy_table():
    table_registry.register(NFE_TABLE)


@pytest.fixture
def toy_sampler():
    register_toy_sampler()
    yield EULER
    samplers.unregister("euler")


@pytest.fixture
def toy_table():
    register_toy_table()
    yield NFE_TABLE
    table_registry.unregister(6)


def plugin_environment(*functions):
    return {**os.environ, "EXPERTMERGE_PLUGINS": ",".join(f"test_samplers:{f}" for f in functions),
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(*args, env=None):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, env=env)


# ----------------------------------------------------------------------------
# Every declaration agrees with its function, the schema and the CLI.

@pytest.mark.parametrize("name", samplers.sampler_names())
def test_a_declarations_defaults_are_its_functions_own(name):
    """The library's defaults are the pipeline's: a library user gets the sampler the paper's pipeline runs."""
    declared = samplers.get_sampler(name)
    parameters = inspect.signature(declared.implementation()).parameters
    assert {"batch_size", "device"} <= set(parameters)
    for option in declared.options:
        assert parameters[option.name].default == option.default, option.name


def test_the_schema_file_leaves_the_sampler_sections_to_the_declarations():
    schema = yaml.safe_load(SCHEMA.read_text())
    sampling = schema["$defs"]["experiment"]["properties"]["sampling"]
    assert not set(sampling["properties"]) & set(samplers.sampler_names())  # declared once: in expertmerge.samplers
    filled = with_samplers(copy.deepcopy(schema))["$defs"]["experiment"]["properties"]["sampling"]
    for sampler in samplers.SAMPLERS.values():
        assert filled["properties"][sampler.name] == sampler.config_schema()
    assert set(samplers.paper_samplers()) <= set(filled["required"]) and "heun" not in filled["required"]


def test_the_ancestral_sampler_clips_by_default_and_opts_out_on_the_command_line():
    from expertmerge.rule_arguments import switch

    assert samplers.resolve_options(samplers.get_sampler("ancestral"), {"clip_denoised": None})["clip_denoised"]
    assert (switch("--clip-denoised", True), switch("--clip-denoised", False)) == ("--clip-denoised", "--no-clip-denoised")


@pytest.mark.parametrize("name", [name for name, sampler in samplers.SAMPLERS.items() if not sampler.batch_dependent])
def test_samplers_declared_batch_free_do_not_depend_on_the_batch(name, gaussian):
    declared = samplers.get_sampler(name)
    options = {**declared.defaults(), **({"steps": 8} if "steps" in declared.defaults() else {})}
    function = declared.implementation()
    runs = [function(gaussian, range(10, 22), SHAPE, batch_size=size, **options).x for size in (1, 5, 12)]
    for x in runs[1:]:
        torch.testing.assert_close(x, runs[0], rtol=0, atol=1e-5)


def test_register_refuses_what_would_be_ambiguous():
    with pytest.raises(ValueError, match="lower-case letters and _, got 'heun2'"):  # would read as Heun at 2 steps
        samplers.register(Sampler("heun2", "x:y", "H"))
    with pytest.raises(ValueError, match="option 'steps' is a number but the ancestral sampler's is an integer"):
        samplers.register(Sampler("coarse", "x:y", "C", options=(Option("steps", {"type": "number", "minimum": 0,
                                                                                  "maximum": 1}, 0.5, ""),)))
    with pytest.raises(ValueError, match="its per-result option 'schedule' must be an integer"):
        samplers.register(Sampler("staged", "x:y", "S", per="schedule",
                                  options=(Option("schedule", samplers.choice("a"), "a", ""),)))
    assert "heun2" not in samplers.SAMPLERS and "coarse" not in samplers.SAMPLERS and "staged" not in samplers.SAMPLERS


def test_the_cli_holds_each_option_to_its_samplers_range():
    args = ["sample", "--quality", "q", "--likelihood", "l", "--eta", "0.5", "--seeds", "0:2", "--features", "c",
            "--out", "/nonexistent-folder-of-this-test/s.npz"]
    for extra, message in ((["--sampler", "ode", "--steps", "5"],
                            "steps (--steps) is not an option of the ode sampler; its options: --rtol, --atol, --error-norm"),
                           (["--sampler", "heun", "--steps", "1"],
                            "the heun sampler's steps (--steps) must be an integer in [2, 100000000], got 1")):
        result = run(*args, *extra)
        assert result.returncode == 1 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------
# The toy sampler and table, end to end.

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Barely trained experts and classifier, and the reference statistics: enough to run the commands."""
    root = make_tiny_experts(tmp_path_factory.mktemp("samplers"))
    made = run("reference-stats", "--data", root / "splits.npz", "--features", root / "classifier",
               "--out", root / "reference.npz")
    assert made.returncode == 0, made.stderr
    return root


def sample_and_measure(root, sampler, eta, env, *options):
    shard, fid = root / f"{sampler}-{eta}.npz", root / f"{sampler}-{eta}.json"
    made = run("sample", "--quality", root / "edm", "--likelihood", root / "vdm", "--eta", eta, "--sampler", sampler,
               *options, "--seeds", "0:8", "--batch-size", 4, "--features", root / "classifier", "--out", shard, env=env)
    assert made.returncode == 0, made.stderr
    made = run("fid", "--reference", root / "reference.npz", "--shards", shard, "--seed-groups", 2, "--out", fid, env=env)
    assert made.returncode == 0, made.stderr
    return shard, fid


def test_a_sampler_registered_by_a_test_samples_and_fills_table_2(tiny, toy_sampler, gaussian):
    # The library: Euler on a Gaussian expert converges to the ODE's samples at first order.
    exact = samplers.get_sampler("ode").implementation()(gaussian, range(64), SHAPE, rtol=1e-7, atol=1e-7).x
    errors = [(sample_euler(gaussian, range(64), SHAPE, steps=n).x - exact).pow(2).mean().sqrt() for n in (40, 80)]
    assert 1.6 < errors[0] / errors[1] < 2.5, errors  # halving the step halves the error

    env = plugin_environment("register_toy_sampler")
    assert run("sample", "--help").stdout.count("euler") == 0 and "euler" in run("sample", "--help", env=env).stdout
    files = []
    for eta in ("edm", "0.5"):
        shard, fid = sample_and_measure(tiny, "euler", eta, env, "--steps", 6)
        with np.load(shard) as held:
            record = json.loads(str(held["record"]))
            assert record["sampler"] == "euler" and record["steps"] == 6 and set(held["nfe"]) == {6 + (eta == "0.5")}
        files.append(fid)
    files.append(sample_and_measure(tiny, "ode", "0.5", env, "--rtol", 1e-3, "--atol", 1e-3)[1])
    made = run("table", "--table", 2, "--inputs", *files, "--out", tiny / "table2.csv", env=env)
    assert made.returncode == 0, made.stderr
    table = pd.read_csv(tiny / "table2.csv")
    assert {"FID (Euler)", "NFE (Euler)", "FID (ODE)"} <= set(table.columns)
    assert table["NFE (Euler)"].tolist() == [6, 7]  # the merge's switch is a step boundary: one more step


def demo_config(tmp_path, **euler):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["experiments"][config["demo"]]["sampling"].update(euler)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return config["demo"]


def dry_run(workdir, env):
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "-n", "-p"]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def test_a_config_naming_the_test_sampler_plans_its_shards_fids_and_table_2(tmp_path):
    demo = demo_config(tmp_path, euler={"steps": 6})
    refused = dry_run(tmp_path, {**os.environ, "EXPERTMERGE_PLUGINS": ""})
    assert refused.returncode != 0 and "'euler' was unexpected" in refused.stdout + refused.stderr
    planned = dry_run(tmp_path, plugin_environment("register_toy_sampler"))
    assert planned.returncode == 0, planned.stdout[-3000:] + planned.stderr[-3000:]
    shards = re.findall(rf"expertmerge sample .*--sampler euler --steps 6 .*--out results/{demo}/samples/euler/(\S+)/shard0.npz",
                        planned.stdout)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert sorted(shards) == sorted(map(str, config["experiments"][demo]["etas"]))
    assert f"--out results/{demo}/fid/euler/auto.json" in planned.stdout
    table2 = next(line for line in planned.stdout.splitlines() if "expertmerge table --table 2" in line)
    assert f"results/{demo}/fid/euler/0.5.json" in table2


def test_a_table_registered_by_a_test_is_built_and_planned(tiny, toy_table, tmp_path):
    env = plugin_environment("register_toy_sampler", "register_toy_table")
    assert run("table", "--table", 6, "--inputs", "x.json", "--out", tmp_path / "t.csv").returncode == 2  # no plugin
    files = [sample_and_measure(tiny, "euler", "edm", env, "--steps", 4)[1],
             sample_and_measure(tiny, "heun", "edm", env, "--steps", 3)[1]]
    made = run("table", "--table", 6, "--inputs", *files, "--out", tmp_path / "table6.csv", env=env)
    assert made.returncode == 0, made.stderr
    table = pd.read_csv(tmp_path / "table6.csv")
    assert table.columns.tolist() == ["Threshold", "Euler", "Heun 3"] and table["Euler"].tolist() == [4]
    assert re.search(r"\| Threshold +\| +Euler \| +Heun 3 \|", (tmp_path / "table6.md").read_text())

    demo = demo_config(tmp_path)
    planned = dry_run(tmp_path, plugin_environment("register_toy_table"))
    assert planned.returncode == 0, planned.stdout[-3000:] + planned.stderr[-3000:]
    command = next(line for line in planned.stdout.splitlines() if "expertmerge table --table 6" in line)
    assert f"--out results/{demo}/tables/table6.csv" in command and f"results/{demo}/fid/heun18/vdm.json" in command
    assert re.search(r"^(local)?rule table6:", planned.stdout, flags=re.M)


def test_the_library_loads_plugins_once_and_names_a_missing_one():
    from expertmerge.plugins import load_plugins

    with pytest.raises(ValueError, match="EXPERTMERGE_PLUGINS: cannot import plugin 'no_such_plugin_module'"):
        load_plugins("no_such_plugin_module")
    with pytest.raises(ValueError, match="has no function 'absent'"):
        load_plugins("test_samplers:absent")
    result = run("sample", "--help", env={**os.environ, "EXPERTMERGE_PLUGINS": "no_such_plugin_module"})
    assert result.returncode == 2 and "cannot import plugin 'no_such_plugin_module'" in result.stderr


def test_validate_config_refuses_a_section_of_no_declared_sampler():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["experiments"][config["demo"]]["sampling"]["dpm"] = {"steps": 10}
    with pytest.raises(ConfigError, match="'dpm' was unexpected"):
        validate_config(config, SCHEMA)


def test_a_generated_table_rule_runs_its_own_table(tmp_path):
    """The table rules are generated in a loop; each job must run its own table's command (Snakemake formats a
    shell command when the job runs, and a dry run shows the rule-time string, so only a real run shows it)."""
    demo = demo_config(tmp_path)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())["experiments"][demo]
    for k, label in enumerate(map(str, config["etas"])):
        for shard in range(config["nll"]["shards"]):
            folder = tmp_path / "results" / demo / "nll" / label
            folder.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"eta_label": label, "eta": k / 20, "image": [3 * shard + i for i in range(3)],
                          "bpd": [1.0 + k, 1.1 + k, 1.2 + k], "nfe": 100}).to_csv(folder / f"shard{shard}.csv", index=False)
    command = [sys.executable, "-m", "snakemake", f"results/{demo}/tables/table1.csv", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(tmp_path), "--cores", "1", "--allowed-rules", "table1"]  # the NLL files as given
    made = subprocess.run(command, capture_output=True, text=True, env=plugin_environment())
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    assert pd.read_csv(tmp_path / "results" / demo / "tables" / "table1.csv")["NLL (bpd)"].tolist()[0] == pytest.approx(1.1)
