"""Where a merged model's switch goes in EDM's Heun schedule, measured on the demo's experts: FID of
Heun samples with the switch inserted into EDM's rho = 7 levels ("inserted": 2 steps + 1 NFE) or taking
the place of the nearest level, each side spaced as EDM's schedule ("split": 2 steps - 1 NFE), and
their error against the PF-ODE they discretise: the RMS difference per pixel from the adaptive ODE's
sample of the same seed (dopri5, rtol = atol = 1e-6, every image within tolerance), on the first
`--reference-samples` seeds.

Usage: python benchmarks/heun_schedules.py [--results results/digits] [--samples 1000]
Run after the demo (`snakemake --cores all`): it reads the demo's experts, FID classifier and reference
statistics. FIDs use seeds 0..samples-1, as the pipeline's, so schedules are compared on the same noise;
at equal NFE, "split" with steps + 1 is the fair rival of "inserted" with steps.
"""
import argparse
import time
from pathlib import Path

import torch

from expertmerge.features import load_feature_network
from expertmerge.frechet import fid_with_spread, load_statistics
from expertmerge.pipeline import build_expert
from expertmerge.sampling import sample_heun, sample_ode


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results/digits", type=Path)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--etas", nargs="+", default=["eta_min", "0.2", "0.5", "0.8"])
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 9, 18])
    parser.add_argument("--reference-samples", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    experts = args.results / "experts" / "train"
    features = load_feature_network("digits-classifier", args.results / "fid" / "classifier")
    reference = load_statistics(args.results / "fid" / "reference.npz")
    seeds, start = range(args.samples), time.perf_counter()
    print(f"FID (NFE per image) [RMS error against the ODE's sample] of Heun samples, {args.samples} per FID, "
          f"{args.reference_samples} per error, demo experts\n")
    print(f"{'eta':>8} {'steps':>5} {'inserted':>26} {'split':>26} {'split, steps + 1':>26}")
    for eta in args.etas:
        expert, _, shape = build_expert(experts / "edm", experts / "vdm", eta)
        few = range(args.reference_samples)
        exact = sample_ode(expert, few, shape, rtol=1e-6, atol=1e-6, error_norm="image-max", batch_size=100).x

        def measure(steps, schedule):
            record = sample_heun(expert, seeds, shape, steps=steps, schedule=schedule, batch_size=500)
            score = fid_with_spread(reference, features(record.images.numpy()), 5)["fid"]
            error = (record.x[:len(few)] - exact).pow(2).mean().sqrt()
            return f"{score:6.2f} ({int(record.nfe[0]):3d}) [{error:.4f}]"

        for steps in args.steps:
            print(f"{eta:>8} {steps:5d} {measure(steps, 'inserted'):>26} {measure(steps, 'split'):>26} "
                  f"{measure(steps + 1, 'split'):>26}", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
