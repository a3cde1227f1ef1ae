"""The per-noise-level denoising loss L(gamma), the integrand of the VLB's diffusion term (Eq. 7).

L(gamma) = E ||(D(x + s eps; s) - x)/s||^2 / dim, s = exp(gamma/2), eps ~ N(0, I), x a data image.
(D - x)/s = eps_hat - eps, so L is the eps-prediction error per dimension. For the linear schedule
on [g0, g1] the diffusion term is 1/2 int dim L dgamma nats per image, i.e. 1/(2 ln 2) int L dgamma
bits per dimension: measuring L of each expert once predicts the VLB's diffusion term of any merge
and shows at which noise levels each expert is the better one.

Image j's noise comes from its own generator seeded with seeds[j] (default j): one eps per grid
point, drawn in grid order whether or not that point is evaluated, so results do not depend on the
batch size, and two experts profiled on one grid see the same noise (their difference, and so where
their curves cross, is far less noisy than either curve).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from .experts.base import check_expert
from .images import from_uint8
from .likelihood import check_image_shape, denoising_error, prior_kl, reconstruction_nll
from .noise import gamma_to_noise_level
from .profile_files import ROLES
from .seeding import per_image_draw, per_image_generators

RANGE_SLACK = 1e-9  # grid ends computed in floating point may overshoot a range end by rounding


def profile_grid(gamma_lo: float, gamma_hi: float, points: int) -> np.ndarray:
    """`points` equally spaced gammas from gamma_lo to gamma_hi, both included (float64)."""
    if not (isinstance(points, int) and points >= 2):
        raise ValueError(f"a gamma grid needs at least 2 points, got {points!r}")
    if not (math.isfinite(gamma_lo) and math.isfinite(gamma_hi) and gamma_lo < gamma_hi):
        raise ValueError(f"a gamma grid needs finite gamma_lo < gamma_hi, got [{gamma_lo}, {gamma_hi}]")
    return np.linspace(gamma_lo, gamma_hi, points)


def in_range(expert, gammas) -> np.ndarray:
    """Which of `gammas` lie in the expert's [gamma_min, gamma_max] (bool array)."""
    gammas = np.asarray(gammas, dtype=np.float64)
    return (gammas >= expert.gamma_min - RANGE_SLACK) & (gammas <= expert.gamma_max + RANGE_SLACK)


def loss_profile(expert, images, gammas, *, seeds=None, evaluate=None, batch_size: int = 64, device=None,
                 progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """L(gamma) of each uint8 [N, H, W, C] image at each gamma: float64 [N, G]. See `loss_profile_of_data`."""
    return loss_profile_of_data(expert, from_uint8(images), gammas, seeds=seeds, evaluate=evaluate,
                                batch_size=batch_size, device=device, progress=progress)


def loss_profile_of_data(expert, data: torch.Tensor, gammas, *, seeds=None, evaluate=None, batch_size: int = 64,
                         device=None, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """L(gamma) per image and gamma, float64 [N, G], for data x (float [N, C, H, W], in [-1, 1]).

    `evaluate` (bool [G], default all) picks the gammas the expert is run at; the others are NaN but
    still draw their eps, so a sub-grid sees the noise of the full grid. Evaluated gammas must lie in
    the expert's range. Each network call holds `batch_size` images at one gamma; `progress(done)` is
    called after each batch of images.
    """
    check_expert(expert)
    check_image_shape(expert, data.shape[1:])
    gammas = np.asarray(gammas, dtype=np.float64).reshape(-1)
    evaluate = np.ones(len(gammas), bool) if evaluate is None else np.asarray(evaluate, dtype=bool).reshape(-1)
    if evaluate.shape != gammas.shape:
        raise ValueError(f"evaluate must hold one flag per gamma: {len(gammas)} gammas, {len(evaluate)} flags")
    outside = gammas[evaluate & ~in_range(expert, gammas)]
    if len(outside):
        raise ValueError(f"gamma {outside.tolist()} outside the expert's range [{expert.gamma_min:.4g}, "
                         f"{expert.gamma_max:.4g}]: an expert is only evaluated on its own range")
    seeds = list(range(data.shape[0])) if seeds is None else [int(seed) for seed in seeds]
    if len(seeds) != data.shape[0]:
        raise ValueError(f"seeds must hold one seed per image: {data.shape[0]} images, {len(seeds)} seeds")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = torch.device(device or "cpu")
    rows = []
    for start in range(0, len(seeds), batch_size):
        generators = per_image_generators(seeds[start:start + batch_size])
        x = data[start:start + batch_size].to(device).double()
        eps = per_image_draw(generators, lambda g: torch.randn((len(gammas), *x.shape[1:]), generator=g,
                                                               dtype=torch.float64), device)  # [B, G, C, H, W]
        loss = torch.full((len(x), len(gammas)), math.nan, dtype=torch.float64)
        images = list(range(start, start + len(x)))
        for k in np.flatnonzero(evaluate):
            s = torch.full((len(x),), math.exp(gammas[k] / 2), dtype=torch.float64, device=device)
            loss[:, k] = (denoising_error(expert, x, s, eps[:, k], images) / x[0].numel()).cpu()  # per dimension
        rows.append(loss)
        if progress is not None:
            progress(start + len(x))
    return torch.cat(rows)


def mean_and_standard_error(loss) -> tuple[np.ndarray, np.ndarray]:
    """Mean over images of L at each gamma and its standard error (std with ddof 1 / sqrt(N)); [G] each."""
    loss = np.asarray(loss, dtype=np.float64)
    count = loss.shape[0]
    error = loss.std(axis=0, ddof=1) / math.sqrt(count) if count > 1 else np.full(loss.shape[1], math.nan)
    return loss.mean(axis=0), error


def diffusion_term_bpd(gammas, loss) -> np.ndarray | float:
    """The VLB's diffusion term in bits/dim, 1/(2 ln 2) int L dgamma (Eq. 7 with a linear schedule), by the
    trapezoid rule over `gammas`; `loss` is [G] (a curve) or [N, G] (one value per image)."""
    gammas, loss = np.asarray(gammas, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    integral = ((loss[..., 1:] + loss[..., :-1]) / 2 * np.diff(gammas)).sum(axis=-1)
    return integral / (2 * math.log(2))


def piece_integral(gammas, loss, lo: float, hi: float) -> float:
    """int_lo^hi L dgamma of the piecewise-linear interpolant of a measured curve, by the trapezoid rule on
    the grid points inside (lo, hi) plus the two ends; the curve must be measured over [lo, hi]."""
    gammas, loss = np.asarray(gammas, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    measured = np.isfinite(loss)
    if not (gammas[measured].min() <= lo + RANGE_SLACK and hi - RANGE_SLACK <= gammas[measured].max()):
        raise ValueError(f"the curve is measured on [{gammas[measured].min():.4g}, {gammas[measured].max():.4g}], "
                         f"not over the piece [{lo:.4g}, {hi:.4g}]")
    inside = measured & (gammas > lo) & (gammas < hi)
    nodes = np.concatenate([[lo], gammas[inside], [hi]])
    values = np.interp(nodes, gammas[measured], loss[measured])
    return float(((values[1:] + values[:-1]) / 2 * np.diff(nodes)).sum())


def end_terms_bpd(images, gamma_0: float, gamma_1: float, *, draws: int = 16, seed: int = 0) -> tuple[float, float]:
    """The VLB's prior term at gamma_1 and its reconstruction term at gamma_0 (Eq. 6), in bits/dim, averaged
    over uint8 images [N, H, W, C] (the reconstruction over `draws` noise draws per image). Neither asks
    an expert anything: the VLB of any merge on [gamma_0, gamma_1] shares them."""
    x = from_uint8(images).double()
    bits = x[0].numel() * math.log(2)
    s0, generator = gamma_to_noise_level(gamma_0), torch.Generator().manual_seed(seed)
    reconstruction = torch.stack([reconstruction_nll(x, x + s0 * torch.randn(x.shape, generator=generator,
                                                                             dtype=torch.float64), s0)
                                  for _ in range(draws)]).mean()
    return float(prior_kl(x, gamma_1).mean() / bits), float(reconstruction / bits)


def predicted_vlb(images, gammas, pieces: Sequence[tuple[float, float, np.ndarray]], **end_options) -> dict:
    """The expected VLB in bits/dim of a (merged) model from its experts' measured loss curves, with no
    further network evaluation: prior + reconstruction + 1/(2 ln 2) sum over pieces of int L dgamma.

    `pieces` are (gamma_lo, gamma_hi, curve): each expert's mean L on `gammas` and the gamma interval it
    serves, from low to high noise and adjoining (as `merge.pieces` lists a merged expert's). Returns the
    terms and their sum."""
    if any(abs(a[1] - b[0]) > RANGE_SLACK for a, b in zip(pieces[:-1], pieces[1:])):
        raise ValueError("the pieces of a merge must adjoin, from low to high noise")
    diffusion = sum(piece_integral(gammas, curve, lo, hi) for lo, hi, curve in pieces) / (2 * math.log(2))
    prior, reconstruction = end_terms_bpd(images, pieces[0][0], pieces[-1][1], **end_options)
    return {"prior": prior, "reconstruction": reconstruction, "diffusion": diffusion,
            "vlb": prior + reconstruction + diffusion}


def crossings(gammas, first, second) -> list[tuple[float, float]]:
    """(gamma, L) where curve `first` crosses `second`, linearly interpolated between adjacent grid points
    at which both are measured (NaN elsewhere)."""
    gammas, first, second = (np.asarray(a, dtype=np.float64) for a in (gammas, first, second))
    difference = first - second
    found = []
    for k in range(len(gammas) - 1):
        a, b = difference[k], difference[k + 1]
        if np.isfinite([a, b]).all() and (a == 0 or a * b < 0):
            weight = a / (a - b)  # where the linear interpolant of the difference is zero
            found.append((gammas[k] + weight * (gammas[k + 1] - gammas[k]),
                          first[k] + weight * (first[k + 1] - first[k])))
    return found


def profile_records(gammas: Sequence[float], loss, paired=None) -> list[dict]:
    """One record per measured gamma: gamma, loss (mean over images), standard_error and images; given the
    other expert's per-image loss on the same images and noise (`paired`), also `difference` (the mean of
    quality minus likelihood, passed in that order as (quality, likelihood)) and its standard error, which
    the shared noise makes far smaller than either curve's (NaN where one expert is not measured)."""
    mean, error = mean_and_standard_error(loss)
    count = np.asarray(loss).shape[0]
    difference = difference_error = np.full(len(mean), math.nan)
    if paired is not None:
        quality, likelihood = (np.asarray(a, dtype=np.float64) for a in paired)
        difference, difference_error = mean_and_standard_error(quality - likelihood)
    return [{"gamma": float(gamma), "loss": float(m), "standard_error": float(e), "images": count,
             "difference": float(d), "difference_standard_error": float(de)}
            for gamma, m, e, d, de in zip(gammas, mean, error, difference, difference_error) if np.isfinite(m)]


def selection_images(count: int, images: int | None = None, seed: int = 0) -> np.ndarray:
    """Indices of the images a loss profile uses from a split of `count`: all of them (images=None), or a
    fixed choice of `images` of them (a seeded permutation's first, in index order)."""
    if images is None:
        return np.arange(count)
    if not (isinstance(images, int) and 1 < images <= count):
        raise ValueError(f"a loss profile needs 2 to {count} images of its split (it has {count}), got {images!r}")
    return np.sort(np.random.default_rng(seed).permutation(count)[:images])


def pooled(counts, means, errors) -> tuple[int, float, float]:
    """Count, mean and standard error of the union of groups given by their counts, means and standard
    errors (std ddof 1 / sqrt(count)); exact, as from the images themselves."""
    counts, means, errors = (np.asarray(a, dtype=np.float64) for a in (counts, means, errors))
    total = counts.sum()
    mean = float((counts * means).sum() / total)
    spread = np.where(counts > 1, np.nan_to_num(errors) ** 2 * counts * (counts - 1), 0.0)  # (n-1) var per group
    variance = (spread.sum() + (counts * (means - mean) ** 2).sum()) / (total - 1) if total > 1 else math.nan
    return int(total), mean, math.sqrt(variance / total)


SHARD_COLUMNS = ("shard", "shards")  # which part of the selection a profile holds; a whole one is 0 of 1


def check_profile_shards(frames, sources=None) -> None:
    """Refuse a shard given twice (a file twice, or a copy of it: the same numbers, or the same `shard` of
    `shards`) and, where the profiles say which shard they hold, shards of different splits or missing ones.
    `sources` name the frames in messages."""
    sources = [f"profile {k}" for k in range(len(frames))] if sources is None else [str(s) for s in sources]
    for j in range(len(frames)):
        for k in range(j):
            if frames[j].equals(frames[k]):
                raise ValueError(f"{sources[k]} and {sources[j]} are the same loss-profile shard (the same numbers); "
                                 "pooled twice it would count its images twice")
    if not all(set(SHARD_COLUMNS) <= set(frame.columns) for frame in frames):
        return
    held = [(int(frame["shard"].iloc[0]), int(frame["shards"].iloc[0])) for frame in frames]
    for j, (shard, shards) in enumerate(held):
        if (shard, shards) in held[:j]:
            raise ValueError(f"{sources[held.index((shard, shards))]} and {sources[j]} are both shard {shard} of "
                             f"{shards}; pooled twice it would count its images twice")
    counts = {shards for _, shards in held}
    if len(counts) > 1:
        raise ValueError(f"the loss-profile shards split the images in {sorted(counts)} parts: combine the shards "
                         "of one split")
    missing = sorted(set(range(counts.pop())) - {shard for shard, _ in held})
    if missing:
        raise ValueError(f"the loss-profile shards lack shard(s) {missing} of {held[0][1]}: a profile pools all of them")


def combine_profiles(frames, sources=None):
    """One loss profile from the profiles of disjoint shards of the images (rows as `profile_records`, with
    role, expert and the range columns): means and standard errors pooled exactly per (role, gamma). A shard
    given twice is refused (`check_profile_shards`); the result is shard 0 of 1 where the shards say theirs."""
    import pandas as pd

    frames = list(frames)
    check_profile_shards(frames, sources)
    frame = pd.concat(frames, ignore_index=True)
    whole = {column: 1 if column == "shards" else 0 for column in SHARD_COLUMNS if column in frame.columns}
    frame = frame.assign(**whole)
    keys = [column for column in frame.columns if column not in
            ("loss", "standard_error", "images", "difference", "difference_standard_error")]
    rows = []
    for key, group in frame.groupby(keys, sort=False, dropna=False):
        count, loss, error = pooled(group["images"], group["loss"], group["standard_error"])
        paired = group["difference"].notna().all()
        _, difference, difference_error = (pooled(group["images"], group["difference"], group["difference_standard_error"])
                                           if paired else (count, math.nan, math.nan))
        rows.append({**dict(zip(keys, key)), "loss": loss, "standard_error": error, "images": count,
                     "difference": difference, "difference_standard_error": difference_error})
    combined = pd.DataFrame(rows)[list(frame.columns)]
    if combined.duplicated(["expert", "gamma"]).any() or combined.duplicated(["role", "gamma"])[
            combined["role"].isin(ROLES)].any():
        raise ValueError("the loss-profile shards disagree on their experts, ranges or seeds: combine only the "
                         "shards of one profile")
    return combined


def profile_curves(records, by: str = "role", column: str = "loss") -> tuple[np.ndarray, dict]:
    """From a loss-profile table (rows: role, expert, gamma, loss, gamma_min, gamma_max, ...; see
    `profile_records`): the common gamma grid and, per role of the eta grid's pair (`by="role"`) or per expert
    of all of them (`by="expert"`), (gamma_min, gamma_max, `column` on the grid, NaN where unmeasured)."""
    import pandas as pd

    frame = pd.DataFrame(records)
    gammas = np.unique(frame["gamma"].to_numpy(dtype=np.float64))
    if by == "role":
        frame = frame[frame["role"].isin(ROLES)]
    curves = {}
    for key, rows in frame.groupby(by, sort=False):
        curve = np.full(len(gammas), np.nan)
        curve[np.searchsorted(gammas, rows["gamma"].to_numpy(dtype=np.float64))] = rows[column].to_numpy(dtype=np.float64)
        curves[key] = (float(rows["gamma_min"].iloc[0]), float(rows["gamma_max"].iloc[0]), curve)
    return gammas, curves



def difference_curves(records) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From a loss-profile table: the common gamma grid, the mean paired difference L_quality - L_likelihood
    and its standard error on it (NaN where either expert is unmeasured)."""
    import pandas as pd

    frame = pd.DataFrame(records)
    gammas = np.unique(frame["gamma"].to_numpy(dtype=np.float64))
    rows = frame[frame["role"] == "quality"]
    difference, error = np.full(len(gammas), np.nan), np.full(len(gammas), np.nan)
    where = np.searchsorted(gammas, rows["gamma"].to_numpy(dtype=np.float64))
    difference[where] = rows["difference"].to_numpy(dtype=np.float64)
    error[where] = rows["difference_standard_error"].to_numpy(dtype=np.float64)
    return gammas, difference, error
