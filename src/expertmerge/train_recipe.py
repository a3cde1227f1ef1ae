"""`expertmerge train-recipe`: resumable, multi-GPU training of the paper-scale experts (App. A of the merging paper).

`train(recipe, images, out_dir)` trains one expert from a recipe in `RECIPES`:

* "vdm-cifar10": VDM (Kingma et al. 2021) on CIFAR-10 as the PyTorch re-implementation the paper
  trained does it: the VDM U-Net with 128 channels, its continuous-time diffusion loss (Eq. 17) on the
  fixed linear gamma in [-13.3, 5], AdamW lr 2e-4, betas (0.9, 0.99), weight decay 0.01 on all
  parameters, no warm-up, gradient norm clipped to 1, batch 128, ema-pytorch's EMA (0.9999, power 3/4),
  10M steps.
* "vdm-imagenet32": as above with 256 channels, batch 512, 2M steps.
* "edm-imagenet32": NVlabs' `train.py --cond 0 --arch ddpmpp --duration 1000` (Karras et al. 2022):
  EDM's loss (Eq. 8, Table 1) and preconditioning (`--precond edm`, NVlabs' default) around
  the DDPM++ SongUNet, Adam lr 10e-4 ramped up over 10 Mimg, batch 1024, 1000 Mimg, EMA
  half-life 0.5 Mimg with ramp-up ratio 0.05, dropout 0.13.
  Deviation: NVlabs' default `--augment 0.12` (non-leaky augmentation pipe, augment_dim 9) is
  not implemented; we train without augmentation and with augment_dim 0.

Several GPUs: launch with `torchrun --nproc_per_node=G`; with WORLD_SIZE > 1 the net is wrapped
in DistributedDataParallel (nccl on CUDA, gloo on CPU). The global batch of step k is the
slice [kB, (k+1)B) of a sequence of per-epoch permutations seeded by (seed, epoch), so the data
order does not depend on the world size; each rank takes its contiguous share of it. Noise and
dropout come from generators seeded by (seed, step, rank): a run is reproducible for a given
world size, and a run killed and resumed from its checkpoint ends bit-identical to one that was not.

Every step's loss is checked at each log line and before each save, on every rank at once: a
non-finite one stops the run (TrainingDiverged) before a diverged state or expert is written. The
expert is the final EMA, not a best one: without a validation split there is nothing to compare with.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .experts.checkpoint import build_network, family_module, save_expert
from .files import atomic_path
from .images import PixelScale, from_uint8
from .optimization import EMA, check_finite_loss, make_optimizer, optimizer_step, ramped_lr
from .recipes import Recipe, get_recipe

log = logging.getLogger(__name__)

CHECKPOINT_NAME, WEIGHTS_NAME, META_NAME = "training-state.pt", "ema.safetensors", "ema.json"


def expert_meta(recipe: Recipe, img_channels: int = 3) -> dict:
    """JSON fields that let a loader rebuild the expert: family, network, valid gamma range."""
    return dict(family_module(recipe.family).constants(**recipe.constants), preset=recipe.preset,
                **family_module(recipe.family).recipe_network(recipe, img_channels))


def seed_for(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (seed, step, rank, ...)."""
    return int(np.random.SeedSequence([int(key) for key in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Global batch of `step`: images [step B, (step+1) B) of epoch permutations seeded by (seed, epoch)."""
    start, stop = step * batch_size, (step + 1) * batch_size
    chunks = []
    for epoch in range(start // n, (stop - 1) // n + 1):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed_for(seed, 0, epoch)))
        chunks.append(order[max(start - epoch * n, 0):min(stop - epoch * n, n)])
    return torch.cat(chunks)


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world


def _save_checkpoint(path: Path, net, ema: EMA, optimizer, step: int, run: dict) -> None:
    state = dict(net=net.state_dict(), ema=ema.net.state_dict(), optimizer=optimizer.state_dict(),
                 step=step, run=json.dumps(run, sort_keys=True))
    with atomic_path(path) as temporary:
        torch.save(state, temporary)




def _checked_losses(losses: list, last_step: int, lr: float, rank: int, world: int) -> list[float]:
    """This rank's per-step losses up to `last_step` (1-based) as floats; TrainingDiverged on every rank
    at the first non-finite loss of any rank, so that no rank is left waiting for the others."""
    values = torch.stack(losses).double()
    first = last_step - len(losses) + 1
    found = torch.zeros(2, world, dtype=torch.float64, device=values.device)  # (step, loss) per rank; step 0: none
    bad = (~torch.isfinite(values)).nonzero().flatten()
    if len(bad):
        found[0, rank], found[1, rank] = first + int(bad[0]), values[bad[0]]
    if world > 1:
        torch.distributed.all_reduce(found)  # each rank fills only its own column
    steps = found[0].tolist()
    bad_ranks = [r for r in range(world) if steps[r] > 0]
    if bad_ranks:
        first_bad = min(bad_ranks, key=lambda r: steps[r])
        where = f" of rank {first_bad}" if world > 1 else ""
        check_finite_loss(found[1, first_bad].item(), int(steps[first_bad]), lr=lr, what=f"loss{where}",
                          saved="the training state and the expert were not saved after it")
    return values.tolist()


def _start_state(candidates, run: dict, stop: int, device):
    """The latest of the given training states (paths; missing ones skipped) at or before step `stop`,
    or None: a chunk's own checkpoint after a retry, else the previous chunk's state."""
    best = None
    for path in candidates:
        if path is None or not Path(path).exists():
            continue
        state = torch.load(path, map_location=device, weights_only=True)
        if json.loads(state["run"]) != run:
            raise ValueError(f"{path} was written by a different run {state['run']}; this run is "
                             f"{json.dumps(run, sort_keys=True)}; remove it or use another out_dir")
        if int(state["step"]) <= stop and (best is None or int(state["step"]) > int(best["step"])):
            best = state
    return best


def train(recipe, images_uint8_nhwc, out_dir, *, max_steps: int | None = None, batch_size: int | None = None,
          seed: int = 0, checkpoint_every: int = 1000, log_every: int = 100, device=None, expert_stem=None,
          stop_step: int | None = None, resume_from=None, state_out=None) -> dict:
    """Train `recipe` (a name in RECIPES or a Recipe) on uint8 NHWC images; resume from
    out_dir/training-state.pt if present. Runs `max_steps` steps in all (default: the recipe's
    length at `batch_size`, default the recipe's global batch). Writes the training state every
    `checkpoint_every` steps and at the end, and the EMA weights as an expert checkpoint
    (`load_expert` reads it) at `expert_stem` (default out_dir/ema: ema.safetensors + ema.json).
    Returns the expert meta written to its JSON.

    One chunk of a longer training (one SLURM job of a chain): `stop_step` < the run's length
    stops after that step and writes the training state to `state_out` instead of the expert;
    `resume_from` is the previous chunk's state. The run's own checkpoint in out_dir wins where
    it is further on (a retried chunk), so a chain ends bit-identical to one uninterrupted run."""
    recipe = get_recipe(recipe)
    batch_size = batch_size or recipe.batch_size
    steps = recipe.steps(batch_size) if max_steps is None else max_steps
    stop = steps if stop_step is None else stop_step
    for name, value in (("batch_size", batch_size), ("max_steps", steps), ("checkpoint_every", checkpoint_every),
                        ("log_every", log_every), ("stop_step", stop)):
        if not (isinstance(value, int) and value > 0):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if stop > steps:
        raise ValueError(f"stop_step={stop} is past the run's last step {steps}")
    if stop < steps and state_out is None:
        raise ValueError(f"stop_step={stop} ends before the run's last step {steps}: give state_out for the state")
    if resume_from is not None and not Path(resume_from).exists():
        raise FileNotFoundError(f"the previous chunk's training state {resume_from} does not exist")
    images = torch.as_tensor(np.asarray(images_uint8_nhwc))
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {list(images.shape)}")
    rank, local_rank, world = _distributed()
    if batch_size % world:
        raise ValueError(f"global batch_size={batch_size} must be divisible by the world size {world}")
    if device is None:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    run = dict(recipe=asdict(recipe), batch_size=batch_size, seed=seed, world_size=world)
    run = json.loads(json.dumps(run))  # tuples as lists, as they come back from the checkpoint

    torch.manual_seed(seed_for(seed, 1))  # initial weights: the same on every rank
    meta = dict(expert_meta(recipe, images.shape[3]), image_shape=[images.shape[3], *images.shape[1:3]])  # C, H, W
    pixels = PixelScale.from_record(recipe.pixels) if recipe.pixels else None
    if pixels:
        meta["pixels"] = pixels.record()  # loading the expert then applies the change of variables
    net = build_network(meta).to(device).train()
    ema = EMA(net, recipe.ema_decay if recipe.ema_decay is not None else 0.5 ** (batch_size / recipe.ema_halflife_images),
              recipe.ema_rampup, recipe.ema_power)
    optimizer = make_optimizer(net, recipe)
    start_step = 0
    state = _start_state([resume_from, checkpoint_path], run, stop, device)
    if state is not None:
        net.load_state_dict(state["net"])
        ema.net.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        if rank == 0:
            log.info("resuming from step %d of %d (this job stops at %d)", start_step, steps, stop)
        del state
    if rank == 0:  # float sums depend on the thread count: a run resumes bit-identically on the same one
        log.info("training on %s, %d process(es) of %d torch thread(s)", device, world, torch.get_num_threads())
    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else net
    loss_fn = family_module(recipe.family).loss(meta)  # takes its constants from meta: DDP hides the net's attributes
    local = batch_size // world
    started, unchecked, since_log = time.perf_counter(), [], []
    for step in range(start_step, stop):
        indices = batch_indices(len(images), batch_size, step, seed)[rank * local:(rank + 1) * local]
        x0 = from_uint8(images[indices], pixels).to(device)
        torch.manual_seed(seed_for(seed, 2, step, rank))  # dropout
        generator = torch.Generator().manual_seed(seed_for(seed, 3, step, rank))  # noise levels and noise
        loss = loss_fn(model, x0, generator).mean()
        # NVlabs / optax: the ramp counts the images seen before this step
        optimizer_step(net, optimizer, loss, lr=ramped_lr(recipe.lr, step * batch_size, recipe.lr_rampup_images),
                       ema=ema, step=step, grad_clip=recipe.grad_clip)
        unchecked.append(loss.detach())  # checked in bulk: a check per step would wait for the GPU every step
        done = step + 1
        at_log, at_save = done % log_every == 0 or done == stop, done % checkpoint_every == 0 or done == stop
        if at_log or at_save:
            since_log += _checked_losses(unchecked, done, recipe.lr, rank, world)
            unchecked = []
        if at_log:
            if rank == 0:
                elapsed = time.perf_counter() - started
                rate = (done - start_step) / elapsed
                log.info("step %d/%d  loss %.4f  %.2f steps/s  %.0f s elapsed, ETA of this job %.0f s", done, steps,
                         sum(since_log) / len(since_log), rate, elapsed, (stop - done) / rate)
            since_log = []
        if at_save:
            if rank == 0:
                _save_checkpoint(checkpoint_path, net, ema, optimizer, done, run)
            if world > 1:
                torch.distributed.barrier()
    if state_out is not None:  # one chunk of a chain: hand the state on
        if rank == 0:
            _save_checkpoint(Path(state_out), net, ema, optimizer, stop, run)
            log.info("training state at step %d of %d -> %s", stop, steps, state_out)
        if world > 1:
            torch.distributed.barrier()
        return meta
    meta["training"] = dict(run, steps=max(steps, start_step), n_images=len(images))
    if rank == 0:
        save_expert(expert_stem or out_dir / WEIGHTS_NAME, ema.net, meta)
    if world > 1:
        torch.distributed.barrier()
    return meta
