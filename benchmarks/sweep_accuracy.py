"""Which is closer to the truth at the demo's tolerance: a merge's ODE NLL solved on its own, or its tail from the
shared trunk? Both against a tight solve of the same images, probes and dequantisation draws.

Usage: python benchmarks/sweep_accuracy.py [--etas 0.1 0.2 0.5] [--images 120] [--tight 1e-8]
Needs the demo's experts (`snakemake --cores all experts`). For each eta it prints the mean bpd over the first
--images test images of: the independent solve at the demo's settings (rtol = atol = 1e-5, batch-rms, one
batch), the same with the batch halved (its batch dependence: the yardstick of "within tolerance"), the shared
trunk's tail (anchors every 1/10), and a tight solve (rtol = atol = --tight, one batch); then each one's mean
and largest per-image difference to the tight solve.
"""
import argparse

import torch

from bench_sweep import DEMO  # benchmarks/bench_sweep.py
from expertmerge.datasets import split_images
from expertmerge.experts.checkpoint import load_expert
from expertmerge.likelihood import ode_nll
from expertmerge.merge import switch
from expertmerge.trunks import sweep

DEMO_NLL = {"rtol": 1e-5, "atol": 1e-5, "error_norm": "batch-rms", "dequantization": "tn"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--etas", type=float, nargs="+", default=[0.1, 0.2, 0.5])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--tight", type=float, default=1e-8, help="rtol = atol of the reference solve")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quality, likelihood = (load_expert(DEMO / "experts" / "train" / name) for name in ("edm", "vdm"))
    images = torch.from_numpy(split_images(DEMO / "data" / "splits.npz", "test")[:args.images])
    batch = len(images)
    print(f"{len(images)} test images; mean bpd, then mean and max |difference| to the tight solve (rtol {args.tight:g})")
    for eta in args.etas:
        merged = switch(quality, likelihood, eta)
        runs = {
            "independent": ode_nll(merged, images, batch_size=batch, **DEMO_NLL),
            "independent, half batch": ode_nll(merged, images, batch_size=batch // 2, **DEMO_NLL),
            "shared trunk": sweep("nll", {"m": (eta, merged)}, 10, range(len(images)), tuple(quality.image_shape),
                                  DEMO_NLL, images=images, batch_size=batch)[0]["m"],
        }
        tight = ode_nll(merged, images, batch_size=batch, rtol=args.tight, atol=args.tight, dequantization="tn")
        print(f"eta {eta:g}: tight {tight.mean():.4f} bpd ({int(tight.nfe[0])} NFE)")
        for name, record in runs.items():
            difference = record.bpd - tight.bpd
            print(f"  {name:24s} {record.mean():.4f} bpd ({int(record.nfe[0])} NFE); to tight: mean "
                  f"{difference.mean():+.4f}, max |.| {difference.abs().max():.4f}")


if __name__ == "__main__":
    main()
