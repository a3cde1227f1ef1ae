"""The family registry: every registered family implements the protocol, the workflow's schema names the
same families and formats, and a family added by a test alone trains, imports, merges and samples
through the pipeline's own functions."""
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from expertmerge import cli
from expertmerge.datasets import load_digits_splits, save_splits
from expertmerge.experts import Expert
from expertmerge.experts.checkpoint import build_network, expert_constants, load_expert
from expertmerge.experts.registry import (FAMILIES, Family, family_names, get_family, import_formats, register,
                                          unregister)
from expertmerge.networks.small_unet import SmallUNet
from expertmerge.pipeline import build_expert
from expertmerge.sampling import sample_heun

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def enums(node, key):
    """Every enum under a property named `key` in the schema."""
    found = []
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key and isinstance(value, dict) and "enum" in value:
                found.append(value["enum"])
            found += enums(value, key)
    elif isinstance(node, list):
        for value in node:
            found += enums(value, key)
    return found


def test_the_schema_names_the_registered_families_and_formats():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert enums(schema, "family") == [list(family_names())]
    builtin = [fmt for name in family_names() for fmt in get_family(name).formats]
    assert sorted(map(tuple, enums(schema, "format"))) == [tuple(builtin), tuple(import_formats())]


def test_the_schema_names_every_recipe():
    from expertmerge.recipes import RECIPES

    schema = yaml.safe_load(SCHEMA.read_text())
    assert enums(schema["$defs"]["expert"]["properties"]["recipe"], "name") == [list(RECIPES)]
    assert {recipe.family for recipe in RECIPES.values()} <= set(family_names())


@pytest.mark.parametrize("name", family_names())
def test_each_family_module_implements_the_protocol(name):
    family = get_family(name)
    module = family.implementation()
    constants = module.constants()
    assert constants["family"] == name
    assert (constants["gamma_min"], constants["gamma_max"]) == family.gamma_range  # native range, to the bit
    assert set(module.IMPORTERS) == set(family.formats)
    assert module.NETWORKS and isinstance(module.LOSS, str) and isinstance(module.TRAINING, dict)
    narrowed = expert_constants(name, -5.0, 3.0)
    assert narrowed["gamma_min"] == pytest.approx(-5.0, abs=1e-12) and narrowed["gamma_max"] == pytest.approx(3.0)


def test_unknown_families_and_formats_are_named():
    with pytest.raises(ValueError, match=rf"unknown expert family 'ddpm'; known families are {re.escape(str(family_names()))}"):
        get_family("ddpm")
    with pytest.raises(ValueError, match="already 'edm'"):
        register(Family("other", "x", {"gamma_min": -1, "gamma_max": 1}, ("edm-pickle",)))


# ---------------------------------------------------------------------------------------------
# A toy family, defined here and nowhere else: x0-prediction by a SmallUNet fed x/sqrt(1 + s^2) and
# log(s), trained on the mean squared error at log-uniform noise levels; its foreign format is an .npz
# of weights. This test module is the family's module.

LOSS = "toy x0 loss"
TRAINING = dict(lr=2e-3, warmup_steps=0)


class X0Precond(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, s):
        s = torch.as_tensor(s, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        return self.model(x / (1 + s**2).sqrt(), s.log().flatten())


class ToyExpert(Expert):
    def _denoise(self, x, s):
        return self.net(x, s.to(x.dtype)).to(x.dtype)


def constants(gamma_min=None, gamma_max=None):
    return dict(family="toy", gamma_min=float(-9.0 if gamma_min is None else gamma_min),
                gamma_max=float(7.0 if gamma_max is None else gamma_max))


def expert(meta, net):
    return ToyExpert(net, meta["gamma_min"], meta["gamma_max"])


def loss(meta):
    def toy_loss(net, x0, generator):
        u = torch.rand(x0.shape[0], generator=generator, dtype=torch.float64)
        s = (meta["gamma_min"] + u * (meta["gamma_max"] - meta["gamma_min"])).mul(0.5).exp().to(x0.dtype)
        noisy = x0 + s.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=generator)
        return (net(noisy, s) - x0).square().flatten(1).mean(1)
    return toy_loss


NETWORKS = {"SmallUNet": lambda meta, net: X0Precond(SmallUNet(**net))}


def import_toy_npz(path, *, checksum, gamma_min, gamma_max, network):
    with np.load(path) as arrays:
        state = {key: torch.from_numpy(arrays[key]) for key in arrays.files}
    return NETWORKS["SmallUNet"]({}, network), state, dict(network="SmallUNet", net=network)


IMPORTERS = {"toy-npz": import_toy_npz}


@pytest.fixture
def toy_family():
    family = register(Family("toy", sys.modules[__name__], {"gamma_min": -9.0, "gamma_max": 7.0}, ("toy-npz",)))
    yield family
    unregister("toy")
    assert "toy" not in FAMILIES


def test_a_family_registered_by_a_test_trains_imports_merges_and_samples(toy_family, tmp_path):
    splits = save_splits(tmp_path / "splits.npz", load_digits_splits(seed=0))
    net = {"patch": 2, "channels": [8, 16], "emb_channels": 32}
    common = ["--threads", "1", "--steps", "3", "--batch-size", "16", "--lr", "0.002", "--ema-decay", "0.9",
              "--eval-every", "3", "--seed", "0", "--network", json.dumps(net)]
    assert cli.main(["train-expert", "--family", "toy", "--data", str(splits), "--gamma-min", "-9", "--gamma-max",
                     "4", "--out", str(tmp_path / "likelihood"), *common]) == 0
    trained = load_expert(tmp_path / "likelihood")
    assert isinstance(trained, ToyExpert) and (trained.gamma_min, trained.gamma_max) == (-9.0, 4.0)
    assert trained.meta["training"]["loss"] == LOSS and trained.meta["training"]["lr"] == 0.002

    # Import: the trained weights as the toy's foreign format, valid on another range.
    np.savez(tmp_path / "quality.npz", **{key: value.numpy() for key, value in trained.net.state_dict().items()})
    network = json.dumps(dict(net, img_channels=1))
    assert cli.main(["import-expert", "--input", str(tmp_path / "quality.npz"), "--format", "toy-npz", "--family",
                     "toy", "--gamma-min", "-6", "--gamma-max", "7", "--image-shape", "1", "8", "8", "--network",
                     network, "--out", str(tmp_path / "quality")]) == 0
    imported = load_expert(tmp_path / "quality")
    x, s = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 2.0], dtype=torch.float64)
    assert torch.equal(imported.denoise(x, s), trained.denoise(x, s))  # the same weights, another range
    assert set(build_network(imported.meta).state_dict()) == set(trained.net.state_dict())

    # Merge and sample through the pipeline's functions.
    merged, choice, shape = build_expert(tmp_path / "quality", tmp_path / "likelihood", "0.5")
    assert (merged.gamma_min, merged.gamma_max) == (-9.0, 7.0) and shape == (1, 8, 8)
    assert math.isclose(choice.eta, 0.5)
    record = sample_heun(merged, range(3), shape, steps=4, batch_size=2)
    assert record.images.shape == (3, 8, 8, 1) and record.images.dtype == torch.uint8  # NHWC levels
    assert cli.main(["nll", "--quality", str(tmp_path / "quality"), "--likelihood", str(tmp_path / "likelihood"),
                     "--eta", "0.5", "--data", str(splits), "--images", "2", "--rtol", "1e-3", "--atol", "1e-3",
                     "--threads", "1", "--out", str(tmp_path / "nll.csv")]) == 0
    nll = pd.read_csv(tmp_path / "nll.csv")
    assert len(nll) == 2 and np.isfinite(nll["bpd"]).all()
