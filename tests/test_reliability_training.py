"""Issue 21: a training that diverged or never improved saves nothing, and a checkpoint whose weights
changed since they were written (one flipped bit, mtime kept) is refused at load, in one line."""
import dataclasses
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch

from expertmerge import cli
from expertmerge import features as F
from expertmerge.datasets import load_digits_splits, save_splits
from expertmerge.downloads import ChecksumError
from expertmerge.experts.checkpoint import build_network, expert_constants, family_module, load_expert, save_expert
from expertmerge.experts.imports import import_expert
from expertmerge.optimization import TrainingDiverged
from expertmerge.recipes import RECIPES
from expertmerge.train_expert import train_expert
from expertmerge.train_recipe import CHECKPOINT_NAME, _checked_losses, train

TINY_NET = dict(channels=(8, 16), emb_channels=16)
TINY_VDM_RECIPE = dataclasses.replace(RECIPES["vdm-cifar10"], network=dict(embedding_dim=16, n_blocks=1, norm_groups=4))
TINY_EDM_RECIPE = dataclasses.replace(RECIPES["edm-imagenet32"], lr_rampup_images=4, ema_halflife_images=8, network=dict(
    img_resolution=8, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], augment_dim=0))


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits(seed=0, val_fraction=0.1, test_fraction=0.2)


def demo_training(digits, out_stem, family="edm", **settings):
    settings = dict(dict(steps=20, batch_size=16, eval_every=5, val_repeats=2, net=TINY_NET, seed=0), **settings)
    return train_expert(family, digits["train"][:96], digits["val"][:32], out_stem=out_stem,
                        progress=lambda record: None, **settings)


def random_images(n, size=8):
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def poison_loss(monkeypatch, family, *, from_call, training):
    """Make the family's loss NaN from its `from_call`-th call (1-based) on a net in training mode
    (`training`) or in eval mode (the EMA net being validated); other calls are untouched."""
    module, calls = family_module(family), []
    original = module.loss

    def loss(meta):
        inner = original(meta)

        def poisoned(net, x, generator):
            value = inner(net, x, generator)
            if net.training == training:
                calls.append(1)
                if len(calls) >= from_call:
                    return value * float("nan")
            return value
        return poisoned
    monkeypatch.setattr(module, "loss", loss)


def written(folder):
    return sorted(path.name for path in folder.rglob("*")) if folder.exists() else []


# ----------------------------------------------------------------------------
# The demo trainer


@pytest.mark.parametrize("family", ["edm", "vdm"])
def test_a_huge_learning_rate_saves_nothing(digits, tmp_path, family):
    with pytest.raises(TrainingDiverged, match=r"never improved on the untrained network's validation loss .* lr 100\)"
                                               r"; nothing was saved") as error:
        demo_training(digits, tmp_path / "out" / family, family, lr=100.0)
    assert "\n" not in str(error.value) and written(tmp_path / "out") == []


def test_a_nan_training_loss_stops_at_its_step(digits, tmp_path, monkeypatch):
    poison_loss(monkeypatch, "edm", from_call=7, training=True)
    with pytest.raises(TrainingDiverged, match=r"^training diverged: loss nan at step 7 \(lr 0.001\); nothing was saved"):
        demo_training(digits, tmp_path / "out" / "edm", lr=1e-3)
    assert written(tmp_path / "out") == []


def test_a_nan_validation_loss_stops_at_its_evaluation(digits, tmp_path, monkeypatch):
    poison_loss(monkeypatch, "vdm", from_call=3, training=False)  # 2 repeats at step 0 pass, the one at step 5 not
    with pytest.raises(TrainingDiverged, match=r"^training diverged: validation loss nan at step 5 "):
        demo_training(digits, tmp_path / "out" / "vdm", "vdm", lr=1e-3)
    assert written(tmp_path / "out") == []


def test_a_training_that_improves_is_saved_with_its_best_step(digits, tmp_path):
    meta = demo_training(digits, tmp_path / "edm", lr=2e-3)
    assert meta["training"]["best_step"] > 0 and load_expert(meta["path"]).meta["training"]["best_step"] > 0


# ----------------------------------------------------------------------------
# The paper recipes (chunked and resumable)


def test_a_recipe_whose_loss_turns_nan_saves_neither_state_nor_expert(tmp_path, monkeypatch):
    torch.set_num_threads(2)
    poison_loss(monkeypatch, "vdm", from_call=3, training=True)
    with pytest.raises(TrainingDiverged, match=r"^training diverged: loss nan at step 3 \(lr 0.0002\); the training "
                                               r"state and the expert were not saved after it"):
        train(TINY_VDM_RECIPE, random_images(10), tmp_path / "run", max_steps=6, batch_size=4, checkpoint_every=2)
    assert written(tmp_path / "run") == [CHECKPOINT_NAME]  # the state of step 2, before the NaN
    assert torch.load(tmp_path / "run" / CHECKPOINT_NAME, weights_only=True)["step"] == 2


def test_a_diverging_recipe_chunk_hands_no_state_on(tmp_path):
    torch.set_num_threads(2)
    recipe = dataclasses.replace(TINY_EDM_RECIPE, lr=100.0)  # the loss goes to 1e10, then NaN
    with pytest.raises(TrainingDiverged, match=r"^training diverged: loss nan at step \d+ \(lr 100\)"):
        train(recipe, random_images(10), tmp_path / "work", max_steps=30, batch_size=4, checkpoint_every=100,
              stop_step=20, state_out=tmp_path / "chunk.pt")
    assert not (tmp_path / "chunk.pt").exists() and written(tmp_path / "work") == []


def _check_on_rank(rank, world, rendezvous, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    losses = [torch.tensor(1.0)] * 4  # steps 5..8
    if rank == 1:
        losses[2] = torch.tensor(float("inf"))  # step 7
    try:
        _checked_losses(losses, 8, 1e-3, rank, world)
        message = "no error"
    except TrainingDiverged as error:
        message = str(error)
    finally:
        torch.distributed.destroy_process_group()
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as file:
        file.write(message)


def test_every_rank_stops_when_one_rank_diverges(tmp_path):
    context = multiprocessing.get_context("spawn")
    ranks = [context.Process(target=_check_on_rank, args=(rank, 2, tmp_path / "rendezvous", tmp_path)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=120)
    assert not any(process.is_alive() for process in ranks), "a rank hangs waiting for the other"
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text().startswith("training diverged: loss of rank 1 inf at step 7 ")


# ----------------------------------------------------------------------------
# The FID digit classifier


def test_a_classifier_that_never_improves_is_refused(digits):
    with pytest.raises(TrainingDiverged, match=r"^the digit classifier never improved: validation accuracy .* commonest class "
                                               r"\(lr 100\); nothing was saved"):
        F.train_classifier(digits["train"], digits["train_labels"], digits["val"], digits["val_labels"], steps=30, lr=100.0)


def test_a_nan_classifier_loss_stops_at_its_step(digits, monkeypatch):
    original, calls = torch.nn.functional.cross_entropy, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs) * (float("nan") if len(calls) >= 4 else 1.0)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    with pytest.raises(TrainingDiverged, match=r"^training diverged: loss nan at step 4 \(lr 0.002\)"):
        F.train_classifier(digits["train"], digits["train_labels"], steps=10)


# ----------------------------------------------------------------------------
# The command line: one line, exit status 1, nothing at --out


def test_train_expert_command_that_never_improves_prints_one_line(digits, tmp_path):
    save_splits(tmp_path / "splits.npz", digits, {})
    out = tmp_path / "out" / "vdm"
    result = subprocess.run(
        [sys.executable, "-m", "expertmerge", "train-expert", "--family", "vdm", "--data", tmp_path / "splits.npz",
         "--gamma-min", "-13.3", "--gamma-max", "5", "--steps", "20", "--batch-size", "16", "--lr", "1.0",
         "--ema-decay", "0.999", "--eval-every", "5", "--seed", "0", "--network", json.dumps(TINY_NET), "--out", out],
        capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "TrainingDiverged: training never improved" in errors[0] and "nothing was saved" in errors[0]
    assert "Traceback" not in result.stderr and written(tmp_path / "out") == []


def test_train_classifier_command_with_a_nan_loss_prints_one_line(digits, tmp_path, monkeypatch, caplog):
    save_splits(tmp_path / "splits.npz", digits, {})
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *args, **kwargs: torch.tensor(float("nan")))
    status = cli.main(["train-classifier", "--data", str(tmp_path / "splits.npz"), "--steps", "5", "--batch-size", "16",
                       "--lr", "0.002", "--seed", "0", "--out", str(tmp_path / "out" / "classifier")])
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert status == 1 and errors == ["TrainingDiverged: training diverged: loss nan at step 1 (lr 0.002); nothing "
                                      "was saved; lower the learning rate or check the data"]
    assert written(tmp_path / "out") == []


# ----------------------------------------------------------------------------
# Weights digests: bit rot in our own checkpoints


def flip_one_bit(path, offset=-5):
    """Flip the lowest bit of one byte of the file, keeping its access and modification times."""
    times = os.stat(path)
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == times.st_mtime_ns


@pytest.fixture
def expert(tmp_path):
    meta = dict(expert_constants("edm"), net=TINY_NET, image_shape=[1, 8, 8])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return save_expert(tmp_path / "edm", build_network(meta), meta)


def test_the_checkpoint_records_the_digest_of_its_weights(expert):
    recorded = json.loads(expert.with_suffix(".json").read_text())["weights_sha256"]
    assert recorded == hashlib.sha256(expert.read_bytes()).hexdigest()
    x, sigma = torch.zeros(2, 1, 8, 8), torch.full((2,), 0.5)
    assert torch.isfinite(load_expert(expert).denoise(x, sigma)).all()  # an untouched checkpoint loads


def test_a_flipped_bit_is_refused_in_one_line_naming_the_file_and_both_digests(expert):
    recorded = hashlib.sha256(expert.read_bytes()).hexdigest()
    flip_one_bit(expert)
    actual = hashlib.sha256(expert.read_bytes()).hexdigest()
    with pytest.raises(ChecksumError) as error:
        load_expert(expert)
    message = str(error.value)
    assert "\n" not in message and str(expert) in message and recorded in message and actual in message
    assert "re-create it: delete" in message and str(expert.with_suffix(".json")) in message


def test_a_checkpoint_without_a_digest_is_refused(expert):
    record = expert.with_suffix(".json")
    meta = json.loads(record.read_text())
    del meta["weights_sha256"]
    record.write_text(json.dumps(meta))
    with pytest.raises(ChecksumError, match=r"edm.json records no digest of its weights .* re-create it"):
        load_expert(expert)


def test_importing_a_rotten_checkpoint_writes_nothing(expert, tmp_path, caplog):
    flip_one_bit(expert, offset=len(expert.read_bytes()) // 2)
    with pytest.raises(ChecksumError, match="is not the file its checkpoint was written with"):
        import_expert(expert.with_suffix(""), "expertmerge", tmp_path / "copy" / "edm", family="edm", gamma_min=-6.0,
                      gamma_max=4.0)
    status = cli.main(["import-expert", "--input", str(expert.with_suffix("")), "--format", "expertmerge", "--family",
                       "edm", "--gamma-min", "-6", "--gamma-max", "4", "--out", str(tmp_path / "copy" / "edm")])
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert status == 1 and len(errors) == 1 and errors[0].startswith(f"ChecksumError: {expert} is not the file")
    assert written(tmp_path / "copy") == []


def test_a_flipped_bit_in_the_classifier_is_refused(digits, tmp_path):
    F.save_classifier(tmp_path / "clf", F.train_classifier(digits["train"], digits["train_labels"], steps=3))
    F.load_classifier(tmp_path / "clf")  # untouched: loads
    flip_one_bit(tmp_path / "clf.safetensors")
    with pytest.raises(ChecksumError, match=r"clf.safetensors is not the file its checkpoint was written with"):
        F.load_feature_network("digits-classifier", tmp_path / "clf")
