"""Paper-scale expert networks on the CPU: parameter count and forward time.

Usage: python benchmarks/bench_networks.py [--threads 2] [--batch 8] [--repeats 5] [--only ddpmpp]

For each entry of NETWORKS (name -> builder returning the module and a forward call on a batch),
prints the parameter and state-dict counts and the median wall time of one no-grad forward pass in
eval mode at `--batch` images, after one warm-up pass, for each thread count.
"""
import argparse

import torch

from timing import median_time  # benchmarks/timing.py


def ddpmpp_cifar10(batch: int):
    """EDM's VPPrecond + DDPM++ (SongUNet) in the published CIFAR-10 configuration: D(x; sigma)."""
    from expertmerge.networks.ddpmpp import DDPMPP_PRESETS
    from expertmerge.networks.nvlabs_precond import VPPrecond
    net = VPPrecond(**DDPMPP_PRESETS["cifar10"])
    x = torch.randn(batch, 3, 32, 32)
    sigma = torch.logspace(-2, 1, batch)
    return net, lambda: net(x, sigma)


def vdm(preset: str):
    """The paper's VDM U-Net (the PyTorch re-implementation's architecture): eps_hat(z; gamma)."""

    def build(batch: int):
        from expertmerge.networks.vdm_unet import VDM_PRESETS, VDMUNet
        net = VDMUNet(**VDM_PRESETS[preset])
        z = torch.randn(batch, 3, 32, 32)
        gamma = torch.linspace(-13.3, 5.0, batch)
        return net, lambda: net(z, gamma)

    return build


# name -> builder(batch) -> (module, forward closure). Add further networks here.
NETWORKS = {
    "ddpmpp-cifar10": ddpmpp_cifar10,
    "vdm-cifar10": vdm("cifar10"),
    "vdm-imagenet32": vdm("imagenet32"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=sorted(NETWORKS), default=sorted(NETWORKS))
    args = parser.parse_args()
    for name in args.only:
        torch.manual_seed(0)
        net, forward = NETWORKS[name](args.batch)
        net.eval().requires_grad_(False)
        params = sum(p.numel() for p in net.parameters())
        state = net.state_dict()
        print(f"{name}: {params:,} parameters; state dict {len(state)} tensors, "
              f"{sum(v.numel() for v in state.values()):,} values")
        for threads in args.threads:
            torch.set_num_threads(threads)
            with torch.no_grad():
                seconds = median_time(forward, args.repeats)
            print(f"  forward, batch {args.batch}, {threads} thread(s): {seconds:.3f} s "
                  f"({1000 * seconds / args.batch:.1f} ms/image, median of {args.repeats})")


if __name__ == "__main__":
    main()
