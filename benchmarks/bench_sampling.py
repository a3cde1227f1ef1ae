"""Share of sampling wall time spent inside the network (target >= 90%), PF-ODE and Heun.

Usage: python benchmarks/bench_sampling.py [--batch 64] [--threads 2]
A small conv net (8x8x1 digits size, untrained) wrapped as an EDM expert and as a merged
expert; the net's own time is measured around every call.
"""
import argparse
import time

import torch
from torch import nn

from expertmerge import EDMExpert, VDMExpert, sample_heun, sample_ode, switch


class SmallConvNet(nn.Module):
    """A demo-sized conv net (~150k parameters) with a noise-level input."""

    def __init__(self, channels=64):
        super().__init__()
        self.embed = nn.Linear(1, channels)
        self.inp = nn.Conv2d(1, channels, 3, padding=1)
        self.body = nn.Sequential(*[m for _ in range(4) for m in (nn.GroupNorm(8, channels), nn.SiLU(),
                                                                   nn.Conv2d(channels, channels, 3, padding=1))])
        self.out = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x, noise):
        h = self.inp(x) + self.embed(torch.log(noise.abs() + 1e-3)[:, None])[:, :, None, None]
        return self.out(self.body(h)) * 1e-2 + x / (1 + noise[:, None, None, None] ** 2)


class Timed:
    def __init__(self, net):
        self.net, self.seconds = net, 0.0

    def __call__(self, *args):
        start = time.perf_counter()
        out = self.net(*args)
        self.seconds += time.perf_counter() - start
        return out


def measure(name, sample, expert, timed_nets, seeds):
    for net in timed_nets:
        net.seconds = 0.0
    start = time.perf_counter()
    record = sample(expert, seeds, (1, 8, 8), batch_size=len(seeds))
    wall = time.perf_counter() - start
    inside = sum(net.seconds for net in timed_nets)
    print(f"{name:28s} wall {wall:6.2f} s  nfe {int(record.nfe[0]):4d}  inside network {100 * inside / wall:5.1f}%")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    quality_net, likelihood_net = Timed(SmallConvNet().eval()), Timed(SmallConvNet().eval())
    quality = EDMExpert(quality_net)
    likelihood = VDMExpert(likelihood_net)
    merged = switch(quality, likelihood, 0.5)
    seeds = range(args.batch)
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{sum(p.numel() for p in quality_net.net.parameters())} parameters per net")
    for sample in (sample_heun, sample_ode):  # warm-up: first calls import, allocate and initialise
        sample(quality, seeds[:2], (1, 8, 8))
    for label, expert, nets in (("EDM expert", quality, [quality_net]), ("merged (eta=0.5)", merged, [quality_net, likelihood_net])):
        measure(f"PF-ODE  {label}", sample_ode, expert, nets, seeds)
        measure(f"Heun-18 {label}", sample_heun, expert, nets, seeds)


if __name__ == "__main__":
    main()
