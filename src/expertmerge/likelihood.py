"""Likelihood of any expert: the PF-ODE bound (Eq. 8-9, 16) and the variational bound (Eq. 6).

Everything runs on the expert's gamma range, so a single expert on its native range and a merged
expert on the merged range are handled alike. The PF-ODE integrates the VP state z = alpha x (as
score_sde's likelihood does, whose NFE the paper reports): dz/dgamma = alpha (alpha z - D(x; e^(gamma/2)))/2,
whose divergence is (alpha^2 dim - tr dD/dx)/2; the VLB works in VE coordinates x = z/alpha.
Bits per dimension: bpd = -(log p(z0) - log q(z0|x)) / (dim ln 2); with dequantisation bins that
do not overlap, p(x|z0) = 1 and this bounds the 8-bit probability itself, with no offset.

Image j draws all of its noise from its own generator seeded with seeds[j] (default j), so its VLB does
not depend on the batch it sits in, and neither do its ODE's dequantisation and probe. The adaptive ODE
solve does: a batch is one system with one step size (score_sde's, and the paper's NFE), so an image's
bpd moves within the solver's tolerance with the batch and shard layout it is solved in (measured by
tests/test_likelihood.py; the NLL records carry their batch_size). error_norm "image-max" makes every
image meet the tolerance, which bounds but does not remove that dependence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .experts.base import check_expert, raise_if_not_finite
from .images import check_images, from_uint8
from .noise import gamma_to_noise_level, linear_gamma, vp_alpha_sigma
from .sampling import check_tolerances, solve, solver_norm, vp_velocity
from .seeding import per_image_draw, per_image_generators, run_seeds

DEQUANTIZATIONS = ("tn", "uniform")
LOG_2PI = math.log(2 * math.pi)


@dataclass
class LikelihoodRecord:
    bpd: torch.Tensor  # float64 [N], bits per dimension of each image
    nfe: torch.Tensor  # int64 [N], network evaluations (forward + VJP) of the batch that held the image

    def mean(self) -> float:
        return self.bpd.mean().item()

    def standard_error(self) -> float:
        """Standard error of the mean bpd across images (Hutchinson and dequantisation noise included)."""
        n = self.bpd.numel()
        return (self.bpd.std() / math.sqrt(n)).item() if n > 1 else math.nan


@dataclass
class VLBRecord:
    bpd: torch.Tensor             # float64 [N], prior + reconstruction + diffusion, bits/dim
    prior: torch.Tensor           # float64 [N], KL(q(z1|x) || N(0, I)), bits/dim
    reconstruction: torch.Tensor  # float64 [N], -log p(x|z0), bits/dim
    diffusion: torch.Tensor       # float64 [N], continuous-time diffusion loss (Eq. 7), bits/dim


@dataclass
class VLBSummary:
    mean: float         # mean over runs of the per-run mean bpd
    std: float          # standard deviation over runs (ddof = 1) of the per-run mean bpd
    prior: float        # per-term means over runs and images, bits/dim
    reconstruction: float
    diffusion: float
    runs: list[float]   # per-run mean bpd


# ---------------------------------------------------------------------------------------------
# Checks and per-image noise.

def check_image_shape(expert, shape, name: str = "the expert") -> None:
    """Refuse data of (C, H, W) `shape` unless it is the shape the expert works on (its `image_shape`, if it
    records one: experts loaded from checkpoints and merges of them do)."""
    wanted = getattr(expert, "image_shape", None)
    if wanted is not None and tuple(map(int, shape)) != tuple(map(int, wanted)):
        raise ValueError(f"the images are {'x'.join(map(str, map(int, shape)))} (C x H x W) but {name} works on "
                         f"{'x'.join(map(str, map(int, wanted)))} images")


def _check_call(expert, images, seeds, batch_size) -> tuple[torch.Tensor, list[int]]:
    check_expert(expert)
    images = check_images(images)
    check_image_shape(expert, (images.shape[3], *images.shape[1:3]))  # uint8 images are [N, H, W, C]
    seeds = list(range(images.shape[0])) if seeds is None else [int(seed) for seed in seeds]
    if len(seeds) != images.shape[0]:
        raise ValueError(f"seeds must hold one seed per image: {images.shape[0]} images, {len(seeds)} seeds")
    if min(seeds) < 0:
        raise ValueError(f"seeds must be non-negative integers, got {min(seeds)}")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return images, seeds


# ---------------------------------------------------------------------------------------------
# Dequantisation: x0 in VE coordinates at gamma_min and log q(x0 | x) as a density in VE coordinates.
# (VP densities differ from VE ones by dim*log(alpha0) in both p and q, which cancels in the bound.)

def dequantize_tn(x: torch.Tensor, s0: float, generators) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated-normal dequantisation (i-DODE): z0 = alpha0 x + sigma0 eps, eps ~ N(0, I) truncated to
    +-tau, tau = alpha0/(256 sigma0) = 1/(256 s0); in VE x0 = x + s0 eps stays within half a bin of x.

    log q(z0|x) = sum_i [log phi(eps_i) - log(Phi(tau) - Phi(-tau))] - dim log sigma0; in VE, log s0.
    eps is drawn by inverse CDF from one float64 uniform per dimension of each image's generator.
    """
    tau = 1 / (256 * s0)
    mass = math.erf(tau / math.sqrt(2))  # Phi(tau) - Phi(-tau)
    lower = torch.special.ndtr(torch.tensor(-tau, dtype=torch.float64))
    u = per_image_draw(generators, lambda g: torch.rand(x.shape[1:], generator=g, dtype=torch.float64), x.device)
    eps = torch.special.ndtri(lower + u * mass).clamp(-tau, tau)
    dim = x[0].numel()
    log_q = (-0.5 * eps**2 - 0.5 * LOG_2PI).flatten(1).sum(1) - dim * (math.log(mass) + math.log(s0))
    return x.double() + s0 * eps, log_q


def dequantize_uniform(x: torch.Tensor, generators) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform dequantisation: x0 = x + (u - 1/2)/128, u ~ U(0, 1), uniform over the 8-bit bin of width
    2/256 around x. log q = dim log 128 (a density in data scale), the usual 8-bit offset: it adds
    log2(128) = 7 bits/dim to -log2 p(x0)/dim. The model density at gamma_min is taken as that of x0.
    """
    u = per_image_draw(generators, lambda g: torch.rand(x.shape[1:], generator=g, dtype=torch.float64), x.device)
    dim = x[0].numel()
    return x.double() + (u - 0.5) / 128, torch.full((x.shape[0],), dim * math.log(128), dtype=torch.float64,
                                                       device=x.device)


def rademacher(generators, shape, device) -> torch.Tensor:
    """One Rademacher vector (entries +-1) per image: the Hutchinson probe, fixed through the solve."""
    return per_image_draw(generators, lambda g: torch.randint(0, 2, shape, generator=g).float() * 2 - 1, device)


# ---------------------------------------------------------------------------------------------
# PF-ODE likelihood (Eq. 8-9, 16).

def vp_velocity_and_divergence(expert, z: torch.Tensor, gamma: float, probe: torch.Tensor,
                               indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """f = alpha (alpha z - D(z/alpha; s))/2 and the Skilling-Hutchinson estimate (Eq. 16) of
    div f = (alpha^2 dim - probe^T (dD/dx) probe)/2, with one vector-Jacobian product. z: [N, C, H, W]
    (any float dtype); returns f in z's dtype and the divergence as float64 [N]."""
    indices = list(range(z.shape[0])) if indices is None else indices
    alpha, s = vp_alpha_sigma(float(gamma))[0], gamma_to_noise_level(float(gamma))
    with torch.enable_grad():
        x32 = (z.detach() / alpha).float().requires_grad_(True)
        denoised = expert.denoise(x32, s)
        raise_if_not_finite(denoised.detach(), indices, "the output D(x; s)", s, expert)
        if not denoised.requires_grad:
            raise TypeError("expert.denoise(x, s) is not differentiable with respect to x; the ODE likelihood "
                            "needs its vector-Jacobian product (is the network run under torch.no_grad?)")
        vjp, = torch.autograd.grad((denoised * probe).sum(), x32, allow_unused=True)
    vjp = torch.zeros_like(x32) if vjp is None else vjp
    raise_if_not_finite(vjp, indices, "the vector-Jacobian product of the expert", s)
    trace = (vjp.double() * probe.double()).flatten(1).sum(1)  # probe^T (dD/dx) probe
    return vp_velocity(denoised.detach().to(z.dtype), z, alpha), (alpha**2 * z[0].numel() - trace) / 2


def prior_log_density(z1: torch.Tensor) -> torch.Tensor:
    """log N(z1; 0, I) of the VP prior at gamma_max, float64 [N]."""
    flat = z1.double().flatten(1)
    return -0.5 * flat.pow(2).sum(1) - 0.5 * flat.shape[1] * LOG_2PI


def ode_log_density(expert, x0: torch.Tensor, probe: torch.Tensor, *, rtol: float = 1e-5, atol: float = 1e-5,
                    error_norm: str = "batch-rms", indices: Sequence[int] | None = None) -> tuple[torch.Tensor, int]:
    """log p(x0) in VE coordinates at gamma_min (float64 [N]) and the number of function evaluations.

    Solves the augmented ODE [z, L] with z = alpha x and dL/dgamma = div f from gamma_min to gamma_max
    with dopri5, then log p(x0) = log N(z1; 0, I) + L(gamma_max) + dim log alpha0 (instantaneous change of
    variables, Eq. 8, and z0 = alpha0 x0). The batch is one ODE system with one step size; `error_norm`
    (see `sampling.ERROR_NORMS`) says how its joint state's error is measured. The last step is cut to end
    on gamma_max, so the expert is never asked beyond its range; only the trial evaluation of dopri5's
    initial-step heuristic may land past gamma_max, and it is clamped.
    """
    check_tolerances(rtol, atol)
    dim = x0[0].numel()
    gamma_min, gamma_max = float(expert.gamma_min), float(expert.gamma_max)
    alpha0 = vp_alpha_sigma(gamma_min)[0]
    state = torch.cat([alpha0 * x0.double().flatten(1), torch.zeros(x0.shape[0], 1, dtype=torch.float64,
                                                                     device=x0.device)], 1)
    final, calls, _ = nll_segment(expert, state, x0.shape[1:], gamma_min, gamma_max, probe, rtol=rtol, atol=atol,
                               error_norm=error_norm, indices=indices)
    return log_density_at_data(final, gamma_min), calls


def log_density_at_data(final: torch.Tensor, gamma_min: float) -> torch.Tensor:
    """log p(x0) in VE coordinates at gamma_min from the augmented state [z1, L] at gamma_max (Eq. 8):
    log N(z1; 0, I) + L + dim log alpha0, since z0 = alpha0 x0."""
    dim = final.shape[1] - 1
    return prior_log_density(final[:, :dim]) + final[:, dim] + dim * math.log(vp_alpha_sigma(gamma_min)[0])


def nll_segment(expert, state: torch.Tensor, shape, gamma_from: float, gamma_to: float, probe: torch.Tensor, *,
                rtol: float, atol: float, error_norm: str = "batch-rms",
                indices: Sequence[int] | None = None, first_step: float | None = None) -> tuple[torch.Tensor, int, float | None]:
    """The augmented state [z, L] (float64 [N, dim + 1], dL/dgamma = div f) carried from gamma_from up to gamma_to
    with dopri5; (state, function evaluations, the solver's last full step: `sampling.solve`). The last step is cut
    to end on gamma_to, so the expert is never asked beyond it; only the trial evaluation of dopri5's initial-step
    heuristic may land past it, and is clamped."""
    n, dim, norm, calls = state.shape[0], state.shape[1] - 1, solver_norm(error_norm), 0

    def augmented(gamma, state):
        nonlocal calls
        calls += 1
        gamma = min(max(float(gamma), gamma_from), gamma_to)
        velocity, divergence = vp_velocity_and_divergence(expert, state[:, :dim].reshape(n, *shape), gamma, probe,
                                                          indices)
        return torch.cat([velocity.flatten(1), divergence[:, None]], dim=1)

    with torch.no_grad():
        final, last_step = solve(augmented, state, gamma_from, gamma_to, rtol=rtol, atol=atol, norm=norm,
                                 first_step=first_step)
    return final, calls, last_step


def nll_draws(images: torch.Tensor, seeds: Sequence[int], s0: float, dequantization: str, device):
    """Image j's dequantised x0 (VE, float64), log q(x0 | x) and Hutchinson probe, in this order from the generator
    seeded with seeds[j]: the same draws wherever its solve starts or is cut."""
    generators = per_image_generators(seeds)
    x = from_uint8(images).to(device)
    x0, log_q = dequantize_tn(x, s0, generators) if dequantization == "tn" else dequantize_uniform(x, generators)
    return x0, log_q, rademacher(generators, x.shape[1:], device)


def ode_nll(expert, images, *, seeds=None, rtol: float = 1e-5, atol: float = 1e-5, dequantization: str = "tn",
            batch_size: int = 64, error_norm: str = "batch-rms", device=None,
            progress: Callable[[int], None] | None = None) -> LikelihoodRecord:
    """PF-ODE NLL bound (Eq. 9) in bits/dim of uint8 images [N, H, W, C] under `expert` on its gamma range.

    Image j's dequantisation noise and then its Rademacher probe come from a generator seeded with
    seeds[j] (default j). The prior is N(0, I) at gamma_max. Batches of `batch_size` images are solved
    as one ODE system with one shared adaptive step size: with `error_norm` "batch-rms" (score_sde's, the
    paper's NFE) the RMS over the whole batch's [z, log-density] state meets rtol/atol; with "image-max"
    every image's does. Results depend on the batch within solver tolerance, and NFE on the batch size.
    `progress(done)` is called after each batch. NFE counts evaluations of the augmented ODE (one network
    forward and one VJP each), shared by the images of a batch.
    """
    images, seeds = _check_call(expert, images, seeds, batch_size)
    check_tolerances(rtol, atol)
    if dequantization not in DEQUANTIZATIONS:
        raise ValueError(f"dequantization must be one of {DEQUANTIZATIONS}, got {dequantization!r}")
    solver_norm(error_norm)  # refuse an unknown norm before any work
    device = torch.device(device or "cpu")
    s0 = gamma_to_noise_level(float(expert.gamma_min))
    bpds, nfes = [], []
    for start in range(0, len(seeds), batch_size):
        indices = list(range(start, min(start + batch_size, len(seeds))))
        x0, log_q, probe = nll_draws(images[start:indices[-1] + 1], seeds[start:indices[-1] + 1], s0, dequantization,
                                     device)
        log_p, calls = ode_log_density(expert, x0, probe, rtol=rtol, atol=atol, error_norm=error_norm,
                                       indices=indices)
        bpd = -(log_p - log_q) / (x0[0].numel() * math.log(2))
        raise_if_not_finite(bpd, indices, "the ODE bpd (the expert's output was finite; the solve overflowed)")
        bpds.append(bpd.cpu())
        nfes.append(torch.full((len(indices),), calls, dtype=torch.int64))
        if progress is not None:
            progress(indices[-1] + 1)
    return LikelihoodRecord(bpd=torch.cat(bpds), nfe=torch.cat(nfes))


# ---------------------------------------------------------------------------------------------
# Variational bound (Eq. 6-7), VDM's estimator in VE coordinates.

def _run_generators(seed: int, seeds: Sequence[int]) -> list[torch.Generator]:
    """Image j of run `seed`: a generator seeded from the pair (seed, seeds[j])."""
    return per_image_generators(run_seeds(seed, seeds))


def prior_kl(x: torch.Tensor, gamma_max: float) -> torch.Tensor:
    """KL(N(alpha1 x, sigma1^2 I) || N(0, I)) in nats, float64 [N]."""
    alpha1, sigma1 = vp_alpha_sigma(float(gamma_max))
    flat = x.double().flatten(1)
    return 0.5 * (alpha1**2 * flat**2 + sigma1**2 - 2 * math.log(sigma1) - 1).sum(1)


def reconstruction_nll(x: torch.Tensor, x0: torch.Tensor, s0: float, chunk: int = 1 << 14) -> torch.Tensor:
    """-log p(x | z0) in nats, float64 [N], with VDM's factorised 256-level decoder at gamma_min:
    logits_k = -(x0 - x_k)^2 / (2 s0^2) over the bin centres x_k = (2k + 1)/256 - 1, x0 = z0/alpha0."""
    centres = (2 * torch.arange(256, dtype=torch.float64, device=x.device) + 1) / 256 - 1
    data, noisy = x.double().flatten(), x0.double().flatten()
    out = []
    for start in range(0, data.numel(), chunk):  # [chunk, 256] logits at a time
        value, target = noisy[start:start + chunk], data[start:start + chunk]
        logits = -0.5 * ((value[:, None] - centres) / s0) ** 2
        out.append(torch.logsumexp(logits, dim=1) + 0.5 * ((value - target) / s0) ** 2)
    return torch.cat(out).reshape(x.shape[0], -1).sum(1)


def denoising_error(expert, x: torch.Tensor, s: torch.Tensor, eps: torch.Tensor,
                    indices: Sequence[int] | None = None) -> torch.Tensor:
    """||eps - eps_hat||^2 = ||(D(x + s eps; s) - x)/s||^2 per image (float64 [N]), one noise level s per row:
    the integrand of the diffusion loss (Eq. 7), summed over dimensions. `indices` name the rows in errors."""
    indices = list(range(x.shape[0])) if indices is None else indices
    level = s.reshape(-1, *([1] * (x.ndim - 1)))
    with torch.no_grad():
        denoised = expert.denoise((x.double() + level * eps).float(), s)
    raise_if_not_finite(denoised, indices, "the output D(x; s)", s, expert)
    return ((denoised.double() - x.double()) / level).pow(2).flatten(1).sum(1)


def diffusion_loss(expert, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   indices: Sequence[int] | None = None) -> torch.Tensor:
    """Continuous-time diffusion loss (Eq. 7) for the linear schedule on the expert's range, one t per row:
    1/2 gamma'(t) ||eps - eps_hat||^2 with x_t = x + s_t eps."""
    gamma_min, gamma_max = float(expert.gamma_min), float(expert.gamma_max)
    s = gamma_to_noise_level(linear_gamma(t.double(), gamma_min, gamma_max))
    return 0.5 * (gamma_max - gamma_min) * denoising_error(expert, x, s, eps, indices)


def vlb(expert, images, *, seed: int = 0, seeds=None, batch_size: int = 64, device=None,
        progress: Callable[[int], None] | None = None) -> VLBRecord:
    """Variational bound (Eq. 6) in bits/dim on the expert's gamma range, one Monte Carlo draw per image.

    Image j's noise comes from a generator seeded from (seed, seeds[j]) (seeds default to j), in this
    order: the reconstruction noise, one t ~ U(0, 1), then two diffusion noises. The diffusion loss is
    averaged over the antithetic pair (t, 1 - t) of that image, so it does not depend on batching (VDM
    spreads t over the batch instead). Each batch of `batch_size` images costs one network call on
    2 * batch_size rows.
    """
    images, seeds = _check_call(expert, images, seeds, batch_size)
    device = torch.device(device or "cpu")
    gamma_min, gamma_max = float(expert.gamma_min), float(expert.gamma_max)
    s0 = gamma_to_noise_level(gamma_min)
    terms = {"prior": [], "reconstruction": [], "diffusion": []}
    for start in range(0, len(seeds), batch_size):
        indices = list(range(start, min(start + batch_size, len(seeds))))
        generators = _run_generators(int(seed), seeds[start:indices[-1] + 1])
        x = from_uint8(images[start:indices[-1] + 1]).to(device).double()
        normal = lambda: per_image_draw(generators, lambda g: torch.randn(x.shape[1:], generator=g,  # noqa: E731
                                                                      dtype=torch.float64), device)
        x0 = x + s0 * normal()
        t = per_image_draw(generators, lambda g: torch.rand((), generator=g, dtype=torch.float64), device)
        eps = torch.cat([normal(), normal()])
        pair = diffusion_loss(expert, torch.cat([x, x]), torch.cat([t, 1 - t]), eps, indices + indices)
        nats = {"prior": prior_kl(x, gamma_max), "reconstruction": reconstruction_nll(x, x0, s0),
                "diffusion": (pair[:len(indices)] + pair[len(indices):]) / 2}
        for name, value in nats.items():
            terms[name].append((value / (x[0].numel() * math.log(2))).cpu())
        if progress is not None:
            progress(indices[-1] + 1)
    terms = {name: torch.cat(values) for name, values in terms.items()}
    record = VLBRecord(bpd=terms["prior"] + terms["reconstruction"] + terms["diffusion"], **terms)
    raise_if_not_finite(record.bpd, list(range(len(seeds))), "the VLB (the expert's output was finite)")
    return record


def summarize_vlb_runs(records: Sequence[VLBRecord]) -> VLBSummary:
    """Mean and standard deviation (ddof = 1) over runs of the per-run mean bpd, as in Table 4."""
    if len(records) < 2:
        raise ValueError(f"a standard deviation over runs needs at least 2 runs, got {len(records)}")
    runs = torch.stack([r.bpd.mean() for r in records])
    term = lambda name: torch.stack([getattr(r, name).mean() for r in records]).mean().item()  # noqa: E731
    return VLBSummary(mean=runs.mean().item(), std=runs.std().item(), prior=term("prior"),
                      reconstruction=term("reconstruction"), diffusion=term("diffusion"), runs=runs.tolist())


def vlb_runs(expert, images, runs: int = 10, base_seed: int = 0, **options) -> VLBSummary:
    """`runs` independent VLB evaluations (seeds base_seed, base_seed + 1, ...) summarised as in Table 4."""
    if not (isinstance(runs, int) and runs >= 2):
        raise ValueError(f"runs must be an integer >= 2, got {runs!r}")
    return summarize_vlb_runs([vlb(expert, images, seed=base_seed + r, **options) for r in range(runs)])
