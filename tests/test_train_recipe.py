"""Paper-scale trainer: one step of each full-size recipe, resume identity, safe checkpoints, data order."""
import dataclasses
import json
import math
import time

import pytest
import torch
from safetensors.torch import load_file

from expertmerge.experts.checkpoint import build_network, load_expert
from expertmerge.recipes import RECIPES, get_recipe
from expertmerge.optimization import EMA, make_optimizer, ramped_lr
from expertmerge.train_recipe import CHECKPOINT_NAME, META_NAME, WEIGHTS_NAME, batch_indices, expert_meta, train

TINY = {
    "vdm": dataclasses.replace(RECIPES["vdm-cifar10"], network=dict(embedding_dim=16, n_blocks=1, norm_groups=4),
                               lr_rampup_images=4),
    "edm": dataclasses.replace(RECIPES["edm-imagenet32"], lr_rampup_images=4, ema_halflife_images=8, network=dict(
        img_resolution=8, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], augment_dim=0)),
}


def images(n, size, seed=0):
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_one_step_of_each_full_size_recipe(name, tmp_path):
    torch.set_num_threads(2)
    start = time.perf_counter()
    meta = train(name, images(4, 32), tmp_path, max_steps=1, batch_size=2)
    print(f"{name}: one step at batch 2 with setup and saving: {time.perf_counter() - start:.1f} s")
    weights = load_file(tmp_path / WEIGHTS_NAME)
    recipe = RECIPES[name]
    assert set(weights) == set(build_network(expert_meta(recipe)).state_dict())
    written = json.loads((tmp_path / META_NAME).read_text())
    assert {key: written[key] for key in meta} == json.loads(json.dumps(meta))
    expert = load_expert(tmp_path / WEIGHTS_NAME)  # the EMA weights are an expert checkpoint
    shift = 2 * math.log(256 / 255) if recipe.pixels else 0.0  # EDM trains on NVlabs' k/127.5 - 1, seen in ours
    assert meta.get("pixels") == recipe.pixels and expert.image_shape == (3, 32, 32)
    assert (expert.gamma_min, expert.gamma_max) == pytest.approx((meta["gamma_min"] - shift, meta["gamma_max"] - shift))
    assert meta["family"] == recipe.family and meta["gamma_min"] < meta["gamma_max"]
    assert meta["training"]["steps"] == 1 and all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.parametrize("family", ["vdm", "edm"])
def test_killed_and_resumed_run_ends_bit_identical(family, tmp_path):
    torch.set_num_threads(1)
    data, recipe = images(10, 8), TINY[family]
    train(recipe, data, tmp_path / "whole", max_steps=6, batch_size=4, checkpoint_every=100)
    train(recipe, data, tmp_path / "resumed", max_steps=3, batch_size=4, checkpoint_every=100)  # "killed" at 3
    train(recipe, data, tmp_path / "resumed", max_steps=6, batch_size=4, checkpoint_every=100)
    train(recipe, data, tmp_path / "other-seed", max_steps=6, batch_size=4, checkpoint_every=100, seed=1)
    whole, resumed, other = (load_file(tmp_path / run / WEIGHTS_NAME) for run in ("whole", "resumed", "other-seed"))
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)
    assert not all(torch.equal(whole[key], other[key]) for key in whole)
    states = [torch.load(tmp_path / run / CHECKPOINT_NAME, weights_only=True) for run in ("whole", "resumed")]
    assert states[0]["step"] == states[1]["step"] == 6
    assert all(torch.equal(states[0]["net"][key], states[1]["net"][key]) for key in states[0]["net"])
    copying = recipe.ema_power is not None  # ema-pytorch copies the weights for its first 100 updates
    assert all(torch.equal(whole[key], states[0]["net"][key]) == copying for key in whole if key.endswith("weight"))


@pytest.mark.parametrize("family", ["vdm", "edm"])
def test_a_chain_of_jobs_ends_bit_identical_to_one_run(family, tmp_path):
    """Three jobs of two steps each (each resuming from the state the previous one handed on; the second
    one "retried" after a kill in its middle) give the uninterrupted run's weights and EMA, bit for bit."""
    torch.set_num_threads(1)
    data, recipe, common = images(10, 8), TINY[family], dict(max_steps=6, batch_size=4, checkpoint_every=1)
    train(recipe, data, tmp_path / "whole", **common)
    chain = tmp_path / "chain"
    train(recipe, data, chain, stop_step=2, state_out=tmp_path / "state-2.pt", **common)
    train(recipe, data, chain, stop_step=3, state_out=tmp_path / "killed.pt", resume_from=tmp_path / "state-2.pt",
          **common)  # the second job, killed after step 3: its own checkpoint is at step 3
    train(recipe, data, chain, stop_step=4, state_out=tmp_path / "state-4.pt", resume_from=tmp_path / "state-2.pt",
          **common)  # its retry resumes from its own checkpoint (step 3), not from step 2
    (chain / CHECKPOINT_NAME).unlink()  # the last job on another node: only the handed-on state
    train(recipe, data, chain, resume_from=tmp_path / "state-4.pt", **common)
    whole, chained = (load_file(tmp_path / run / WEIGHTS_NAME) for run in ("whole", "chain"))
    assert all(torch.equal(whole[key], chained[key]) for key in whole)
    states = [torch.load(path, weights_only=True) for path in (tmp_path / "whole" / CHECKPOINT_NAME,
                                                                chain / CHECKPOINT_NAME, tmp_path / "state-4.pt")]
    assert [state["step"] for state in states] == [6, 6, 4]
    for part in ("net", "ema"):
        assert all(torch.equal(states[0][part][key], states[1][part][key]) for key in states[0][part])
    assert states[0]["optimizer"]["state"].keys() == states[1]["optimizer"]["state"].keys()
    assert all(torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) for a, b in
               zip(states[0]["optimizer"]["state"].values(), states[1]["optimizer"]["state"].values()))


def test_a_chain_job_needs_the_previous_state_and_a_place_for_its_own(tmp_path):
    with pytest.raises(FileNotFoundError, match="previous chunk"):
        train(TINY["vdm"], images(10, 8), tmp_path, max_steps=4, batch_size=4, stop_step=2,
              state_out=tmp_path / "s.pt", resume_from=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="give state_out"):
        train(TINY["vdm"], images(10, 8), tmp_path, max_steps=4, batch_size=4, stop_step=2)
    with pytest.raises(ValueError, match="past the run's last step"):
        train(TINY["vdm"], images(10, 8), tmp_path, max_steps=4, batch_size=4, stop_step=5, state_out=tmp_path / "s.pt")
    assert not any(tmp_path.iterdir())


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    torch.set_num_threads(1)
    train(TINY["vdm"], images(10, 8), tmp_path, max_steps=1, batch_size=4)
    with pytest.raises(ValueError, match="different run"):
        train(TINY["vdm"], images(10, 8), tmp_path, max_steps=2, batch_size=2)


def test_batches_walk_through_epoch_permutations_whatever_the_split():
    n, batch = 10, 4
    stream = torch.cat([batch_indices(n, batch, step, seed=3) for step in range(5)])
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:20].tolist()) == list(range(10))
    assert torch.equal(stream, torch.cat([batch_indices(n, 2, step, seed=3) for step in range(10)]))
    assert not torch.equal(stream, torch.cat([batch_indices(n, batch, step, seed=4) for step in range(5)]))


def test_unknown_recipe_names_the_known_ones():
    with pytest.raises(ValueError, match="edm-imagenet32, vdm-cifar10, vdm-imagenet32"):
        get_recipe("vdm-cifar100")


def test_vdm_recipes_are_the_reimplementations_trainer():
    """addtt/variational-diffusion-models' Trainer, which the paper trained: plain AdamW over all parameters,
    gradient norm clipped to 1, no warm-up, ema-pytorch 0.1.4's EMA (beta 0.9999, power 3/4, 100 copy steps)."""
    for name in ("vdm-cifar10", "vdm-imagenet32"):
        recipe = RECIPES[name]
        assert (recipe.lr, recipe.betas, recipe.weight_decay, recipe.weight_decay_on) == (2e-4, (0.9, 0.99), 0.01, "all")
        assert recipe.grad_clip == 1.0 and recipe.lr_rampup_images == 0 and recipe.ema_power == 0.75
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.GroupNorm(1, 3))
    groups = make_optimizer(net, RECIPES["vdm-cifar10"]).param_groups
    assert [len(g["params"]) for g in groups] == [4, 0] and groups[0]["weight_decay"] == 0.01
    assert ramped_lr(2e-4, 0, 0) == 2e-4  # no warm-up: the full rate from the first step
    ema = EMA(net, 0.9999, rampup=None, power=0.75)
    assert [ema.beta(step) for step in (0, 100)] == [0.0, 0.0]  # copies while step <= update_after_step
    assert ema.beta(101) == pytest.approx(1 - 2 ** -0.75) and ema.beta(10**9) == 0.9999
    assert ema.beta(10_100) == pytest.approx(1 - 10_001 ** -0.75)  # 0.9990 at 10k steps, as its docs say
