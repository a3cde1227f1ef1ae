"""config.yaml is refused in seconds whatever its shape, in one message that says what and where: duplicate
keys, a "billion laughs", oversized strings and lists, non-finite or absurd numbers, reserved expert names;
and every rule's parameters come from config and wildcards only (Snakemake's params trigger sees them)."""
import math
import re
import time

import pytest
import yaml

from expertmerge import limits
from expertmerge.configuration import check_config, check_config_values, read_config_file, validate_config
from expertmerge.pipeline import ConfigError
from test_pipeline import REPO, reduced_config, snakemake, write_config

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def validated(config):
    validate_config(config, SCHEMA)
    check_config(config)
    return config


def billion_laughs(levels=9) -> str:
    """Ten references per level: 10**levels strings once the aliases are expanded, in a few hundred bytes."""
    lines = ["bomb:", "  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# --- Reading the file: duplicate keys and aliases -------------------------------------------------------------

def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("demo: digits\nexperiments: {}\ndemo: cifar10\n")
    with pytest.raises(ConfigError, match=r"'demo' appears twice.*lines 1 and 3"):
        read_config_file(path)


def test_duplicate_keys_in_a_nested_mapping_are_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("experiments:\n  digits:\n    etas: [edm]\n    etas: [vdm]\n")
    with pytest.raises(ConfigError, match="'etas' appears twice"):
        read_config_file(path)


def test_a_merge_key_may_be_overridden(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("base: &base {a: 1, b: 2}\nother:\n  <<: *base\n  b: 3\n")
    assert read_config_file(path)["other"] == {"a": 1, "b": 3}


def test_an_alias_bomb_is_refused_in_well_under_a_second(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(billion_laughs())
    start = time.monotonic()
    with pytest.raises(ConfigError, match="more than 100,000 values with its YAML aliases expanded"):
        read_config_file(path)
    assert time.monotonic() - start < 1


def test_a_huge_string_is_refused_without_echoing_it():
    config = reduced_config()
    config["demo"] = "x" * 10_000_000
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA)
    assert "config['demo'] is a string of 10,000,000 characters" in str(error.value)
    assert len(str(error.value)) < 300


def test_the_real_config_is_small():
    check_config_values(yaml.safe_load((REPO / "config.yaml").read_text()))
    assert read_config_file(REPO / "config.yaml")["demo"] == "digits"


@pytest.mark.parametrize("text, expected", [
    ("demo: digits\ndemo: cifar10\n", "appears twice"),
    (billion_laughs(), "YAML aliases expanded"),
])
def test_snakemake_refuses_the_file_in_seconds(tmp_path, text, expected):
    """Before: a duplicate key planned the last one's experiment; the bomb ran for more than 5 minutes in
    Snakemake's `validate`, which prints the whole instance."""
    write_config(tmp_path, reduced_config())
    with open(tmp_path / "config.yaml", "a") as file:
        file.write(text)
    start = time.monotonic()
    result = snakemake(tmp_path, "-n", check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and expected in text, text[-3000:]
    assert time.monotonic() - start < 60
    assert len(text.splitlines()) < 30, text


# --- The schema: every number finite and within its range ------------------------------------------------------

def numeric_schemas(node, where="schema"):
    """(where, subschema) for every subschema that types a number or an integer."""
    if isinstance(node, dict):
        if node.get("type") in ("number", "integer"):
            yield where, node
        for key, child in node.items():
            yield from numeric_schemas(child, f"{where}.{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from numeric_schemas(child, f"{where}[{index}]")


def test_every_number_in_the_schema_has_a_finite_range():
    schema = yaml.safe_load(SCHEMA.read_text())
    found = list(numeric_schemas(schema))
    assert len(found) > 20
    for where, node in found:
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        assert low is not None and high is not None and math.isfinite(low) and math.isfinite(high), where


def test_the_schema_ranges_are_the_limits():
    defs = yaml.safe_load(SCHEMA.read_text())["$defs"]
    for name, bounds in [("tolerance", limits.TOLERANCE), ("learning_rate", limits.LEARNING_RATE),
                         ("sigma", limits.SIGMA), ("gamma", limits.GAMMA)]:
        assert (defs[name]["minimum"], defs[name]["maximum"]) == bounds, name
    for name, high in [("positive_int", limits.MAX_COUNT), ("seed", limits.MAX_SEED), ("batch_size", limits.MAX_BATCH),
                       ("steps", limits.MAX_STEPS), ("shards", limits.MAX_SHARDS), ("images", limits.MAX_SAMPLES)]:
        assert defs[name]["maximum"] == high, name
    experiment = defs["experiment"]["properties"]
    assert experiment["etas"]["maxItems"] == limits.MAX_ETAS
    assert experiment["loss_profile"]["properties"]["points"]["maximum"] == limits.MAX_POINTS
    assert experiment["vlb"]["properties"]["runs"]["maximum"] == limits.MAX_RUNS
    assert experiment["recommend"]["properties"]["fid_budget"]["maximum"] == limits.FID_BUDGET[1]
    assert defs["expert"]["properties"]["recipe"]["properties"]["gpus"]["maximum"] == limits.MAX_GPUS
    assert yaml.safe_load(SCHEMA.read_text())["properties"]["experiments"]["maxProperties"] == limits.MAX_EXPERIMENTS


def set_value(config, path, value):
    node = config["experiments"]["digits"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


@pytest.mark.parametrize("path, value, expected", [
    (("sampling", "ode", "rtol"), math.inf, r"\['sampling'\]\['ode'\]\['rtol'\]"),
    (("sampling", "ode", "atol"), math.nan, r"\['sampling'\]\['ode'\]\['atol'\]"),
    (("nll", "rtol"), 1e-300, r"\['nll'\]\['rtol'\]"),
    (("experts", "edm", "train", "lr"), 100, r"\['lr'\]"),
    (("experts", "vdm", "noise_range", "gamma_min"), -math.inf, r"\['noise_range'\]"),
    (("recommend", "fid_budget"), math.inf, r"\['fid_budget'\]"),
    (("sampling", "num_samples"), 10**12, r"\['num_samples'\]"),
    (("etas",), [round(i / 10_000, 4) for i in range(10_000)], r"\['etas'\]"),
    (("loss_profile", "points"), 10**9, r"\['points'\]"),
])
def test_non_finite_or_absurd_numbers_are_refused_where_they_are(path, value, expected):
    config = reduced_config()
    set_value(config, path, value)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=expected) as error:
        validated(config)
    assert time.monotonic() - start < 5 and "\n" not in str(error.value) and len(str(error.value)) < 400


def test_too_many_sample_shards_are_refused():
    config = reduced_config()
    set_value(config, ("sampling",), {**config["experiments"]["digits"]["sampling"], "num_samples": 10**6,
                                      "shard_size": 1})
    with pytest.raises(ConfigError, match="1,000,000 shards .* at most 10,000"):
        validated(config)


def test_the_shipped_config_passes_with_its_defaults_filled_in():
    config = validated(yaml.safe_load((REPO / "config.yaml").read_text()))
    assert config["download_dir"] == "resources/downloads"
    assert config["experiments"]["digits"]["sampling"]["ancestral"]["clip_denoised"] is True


# --- Reserved names ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["auto", "eta_min", "eta_max"])
def test_an_expert_may_not_take_an_eta_label(name):
    """Before: an expert named `auto` passed the schema, the check and the dry run, trained, then failed in the
    sampler with a misleading message."""
    config = reduced_config()
    experts = config["experiments"]["digits"]["experts"]
    experts[name] = experts.pop("edm")
    with pytest.raises(ConfigError, match=name):
        validated(config)


def test_check_config_names_the_reserved_words_itself():
    """The schema refuses them too; check_config is the library's own guard (configs checked without it)."""
    config = validated(reduced_config())
    experts = config["experiments"]["digits"]["experts"]
    experts["auto"] = experts.pop("edm")
    with pytest.raises(ConfigError, match="may not be called 'auto'.*reserved: auto, eta_min, eta_max"):
        check_config(config)


# --- Rule parameters come from config and wildcards only --------------------------------------------------------

def params_blocks(text):
    """The `params:` blocks of a rule file: the indented lines after each `params:`."""
    return re.findall(r"^( +)params:\n((?:\1 .*\n|\s*\n)+)", text, flags=re.M)


def test_no_rule_parameter_reads_input():
    """Snakemake leaves a params function that takes `input` out of its params rerun trigger: a changed
    recommend.fid_budget re-ran the figure but left summary.md stale (the summary's params read `input`)."""
    found = 0
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for _, block in params_blocks(path.read_text()):
            for arguments in re.findall(r"lambda\s*([^:]*):", block):
                found += 1
                assert set(re.split(r"\s*,\s*", arguments.strip())) <= {"w", "wildcards"}, (path.name, arguments)
    assert found > 20
