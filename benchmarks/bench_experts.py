"""Demo expert networks on the CPU: parameters, denoiser forward time and training-step time.

Usage: python benchmarks/bench_experts.py [--threads 1 2] [--batch 1000] [--train-batch 128]

For each family's default network (expertmerge.train_expert.family_defaults), prints the parameter count,
the time of one expert.denoise call on `--batch` 8x8 images (no grad, eval mode, median of 7),
and the time of one full training step (loss, backward, AdamW, EMA) at `--train-batch`,
median of 20 after 5 warm-up steps, for each thread count.
"""
import argparse

import torch

from expertmerge.experts.checkpoint import build_network, expert_constants, family_module, wrap_network
from expertmerge.networks import count_parameters
from expertmerge.optimization import EMA, make_optimizer
from expertmerge.train_expert import make_config

from timing import median_time  # benchmarks/timing.py


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--train-batch", type=int, default=128)
    args = parser.parse_args()
    for family in ("edm", "vdm"):
        config = make_config(family)
        meta = dict(expert_constants(family), net=config.net)
        torch.manual_seed(0)
        net = build_network(meta)
        expert = wrap_network(meta, build_network(meta).eval().requires_grad_(False))
        loss_fn, optimizer, ema = family_module(family).loss(meta), make_optimizer(net, config), EMA(net, config.ema_decay)
        x = torch.rand(args.batch, 1, 8, 8) * 2 - 1
        x_train = torch.rand(args.train_batch, 1, 8, 8) * 2 - 1
        generator = torch.Generator().manual_seed(0)

        def train_step():
            loss = loss_fn(net, x_train, generator).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema.update(net, 100)

        for threads in args.threads:
            torch.set_num_threads(threads)
            with torch.no_grad():
                forward = median_time(lambda: expert.denoise(x, 1.0), 7, warmup=2)
            step = median_time(train_step, 20, warmup=5)
            print(f"{family}: {count_parameters(net)} parameters, threads {threads}: denoise batch {args.batch} "
                  f"{forward * 1e3:.1f} ms; train step batch {args.train_batch} {step * 1e3:.1f} ms "
                  f"({config.steps} steps ~ {config.steps * step:.0f} s)")


if __name__ == "__main__":
    main()
