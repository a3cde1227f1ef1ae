"""PF-ODE NLL throughput on the CPU: expertmerge.likelihood.ode_nll against a plain solve_ivp(RK45) loop.

Usage: python benchmarks/bench_likelihood.py [--batch 64] [--threads 1] [--train-steps 300] [--tol 1e-5]

A demo-sized EDM-preconditioned conv net (~180k parameters, 8x8x1) is trained for a few hundred
steps on scikit-learn's digits so that its ODE is representative, then the first `--batch` digits
are scored in one batch. Printed: images/s, NFE, the share of wall time inside the network
(forward and VJP, timed around the net itself), and for the reference -- one
scipy.integrate.solve_ivp(RK45) on the flattened batch's VP state [z, L] with the same tolerances,
dequantisation noise, probes and ODE function, as in score_sde's likelihood code (whose NFE the
paper reports) -- its throughput, NFE and the per-image bpd difference. Both measure the error as an
RMS over the whole batch (ode_nll's default error_norm "batch-rms"), so their NFE should agree.
"""
import argparse
import math
import time

import numpy as np
import scipy.integrate
import torch
from sklearn.datasets import load_digits
from torch import nn

from expertmerge.experts import EDMExpert
from expertmerge.images import from_uint8
from expertmerge.likelihood import (dequantize_tn, ode_nll, prior_log_density, rademacher,
                                    vp_velocity_and_divergence)
from expertmerge.noise import gamma_to_noise_level, vp_alpha_sigma

SIGMA_DATA = 0.5


class DemoNet(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, log(sigma)/4) (EDM preconditioning), F a small conv net."""

    def __init__(self, channels=64, blocks=4):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(1, 128), nn.SiLU(), nn.Linear(128, channels * blocks))
        self.inp = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(blocks))
        self.out = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x, sigma):
        sigma = sigma.reshape(-1, 1, 1, 1)
        c_skip = SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)
        c_out = sigma * SIGMA_DATA / (sigma**2 + SIGMA_DATA**2).sqrt()
        c_in = 1 / (sigma**2 + SIGMA_DATA**2).sqrt()
        shifts = self.embed(sigma.reshape(-1, 1).log() / 4).chunk(len(self.blocks), dim=1)
        h = self.inp(c_in * x)
        for conv, shift in zip(self.blocks, shifts):
            h = h + conv(nn.functional.silu(h + shift[:, :, None, None]))
        return c_skip * x + c_out * self.out(nn.functional.silu(h))


def digits() -> torch.Tensor:
    """scikit-learn's 1797 digits as uint8 [N, 8, 8, 1], levels round(v * 255/16)."""
    values = load_digits().images
    return torch.from_numpy(np.round(values * 255 / 16).astype(np.uint8))[..., None]


def train(net, images, steps, batch=64, seed=0):
    """EDM's loss (Karras et al. 2022, Eq. 8 with P_mean = -1.2, P_std = 1.2) for a few steps."""
    generator = torch.Generator().manual_seed(seed)
    data = from_uint8(images)
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        x = data[torch.randint(0, len(data), (batch,), generator=generator)]
        sigma = torch.exp(-1.2 + 1.2 * torch.randn(batch, generator=generator))
        weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
        noisy = x + sigma[:, None, None, None] * torch.randn(x.shape, generator=generator)
        loss = (weight[:, None, None, None] * (net(noisy, sigma) - x) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return loss.item()


class NetTimer(nn.Module):
    """Wraps the net; accumulates its forward time and, via identity autograd marks around it, its VJP time."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seconds, self.backward_start = net, 0.0, 0.0

    def forward(self, x, sigma):
        x = _Mark.apply(x, self, "end")
        start = time.perf_counter()
        out = self.net(x, sigma)
        self.seconds += time.perf_counter() - start
        return _Mark.apply(out, self, "start")


class _Mark(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, timer, which):
        ctx.timer, ctx.which = timer, which
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if ctx.which == "start":
            ctx.timer.backward_start = time.perf_counter()
        else:
            ctx.timer.seconds += time.perf_counter() - ctx.timer.backward_start
        return grad, None, None


def scipy_reference(expert, images, tol):
    """score_sde-style: one solve_ivp(RK45) on the flattened [x, L] of the whole batch, same draws as ode_nll."""
    n, dim = images.shape[0], images[0].numel()
    s0 = gamma_to_noise_level(expert.gamma_min)
    generators = [torch.Generator().manual_seed(j) for j in range(n)]
    x = from_uint8(images)
    x0, log_q = dequantize_tn(x, s0, generators)
    probe = rademacher(generators, x.shape[1:], "cpu")
    calls = 0

    def fun(gamma, state):
        nonlocal calls
        calls += 1
        velocity, divergence = vp_velocity_and_divergence(expert, torch.from_numpy(state[:n * dim]).reshape(x.shape),
                                                          gamma, probe)
        return np.concatenate([velocity.flatten().numpy(), divergence.numpy()])

    alpha0 = vp_alpha_sigma(expert.gamma_min)[0]
    state = np.concatenate([alpha0 * x0.flatten().numpy(), np.zeros(n)])
    solution = scipy.integrate.solve_ivp(fun, (expert.gamma_min, expert.gamma_max), state, method="RK45",
                                         rtol=tol, atol=tol)
    final = torch.from_numpy(solution.y[:, -1])
    log_p = prior_log_density(final[:n * dim].reshape(x.shape)) + final[n * dim:] + dim * math.log(alpha0)
    return -(log_p - log_q) / (dim * math.log(2)), calls


def timed(function, timer):
    timer.seconds = 0.0
    start = time.perf_counter()
    result = function()
    wall = time.perf_counter() - start
    return result, wall, timer.seconds / wall


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = digits()
    net = DemoNet()
    start = time.perf_counter()
    loss = train(net, images, args.train_steps)
    print(f"net: {sum(p.numel() for p in net.parameters())} parameters, trained {args.train_steps} steps "
          f"in {time.perf_counter() - start:.1f} s (final loss {loss:.4f}); {torch.get_num_threads()} threads, "
          f"batch {args.batch}, rtol = atol = {args.tol:g}")
    timer = NetTimer(net.eval())
    expert = EDMExpert(timer)
    batch = images[:args.batch]
    record, wall, share = timed(lambda: ode_nll(expert, batch, rtol=args.tol, atol=args.tol,
                                                batch_size=args.batch), timer)
    print(f"ode_nll (torchdiffeq dopri5): {args.batch / wall:7.2f} images/s  wall {wall:6.2f} s  "
          f"nfe {int(record.nfe[0])}  inside network (forward + VJP) {100 * share:5.1f}%  "
          f"mean bpd {record.mean():.4f} +- {record.standard_error():.4f}")
    (reference, calls), ref_wall, ref_share = timed(lambda: scipy_reference(expert, batch, args.tol), timer)
    difference = record.bpd - reference
    print(f"solve_ivp(RK45) reference:    {args.batch / ref_wall:7.2f} images/s  wall {ref_wall:6.2f} s  "
          f"nfe {calls}  inside network (forward + VJP) {100 * ref_share:5.1f}%  mean bpd {reference.mean():.4f}")
    print(f"throughput ratio ode_nll / reference: {ref_wall / wall:.2f}x;  bpd difference per image: "
          f"mean {difference.mean():+.2e}, max |.| {difference.abs().max():.2e}")


if __name__ == "__main__":
    main()
