"""An eta sweep with shared trunks against independent runs of every merge, on the demo's experts.

Usage: python benchmarks/bench_sweep.py [--samples 200] [--images 120] [--grid 10] [--threads 2]
Needs the demo's experts (`snakemake --cores all experts`); the merges are the demo's grid (eta_min, 0.1, ...,
0.8, eta_max, and auto when results/digits/diagnostics/auto_switch.json exists), run as the pipeline runs them
(`expertmerge.trunks.sweep`: anchors every 1/grid of the merged clock). For the ancestral sampler, the adaptive
ODE sampler and the ODE NLL it prints the network evaluations per image and the wall time of the whole sweep,
shared and independent, their ratios from this one run, and the largest difference between the two (samples
in data scale, NLL in bits/dim) beside the yardstick for the adaptive solvers: the largest difference between
independent runs solved at the batch size and at half of it. It ends with one line per path:
`ancestral: evaluations ratio 0.54, wall ratio 0.58, max abs diff 0, batch dependence 0`.
"""
import argparse
import time
from pathlib import Path

import torch

from expertmerge.datasets import split_images
from expertmerge.experts.checkpoint import load_expert
from expertmerge.likelihood import ode_nll
from expertmerge.merge import eta_range, switch, switch_many
from expertmerge.pipeline import load_switches
from expertmerge.sampling import sample_ancestral, sample_ode
from expertmerge.trunks import sweep

DEMO = Path("results/digits")


def demo_merges(quality, likelihood) -> dict:
    eta_min, eta_max = eta_range(quality, likelihood)
    etas = {"eta_min": eta_min, **{f"{k / 10:g}": k / 10 for k in range(1, 9)}, "eta_max": eta_max}
    merges = {label: (eta, switch(quality, likelihood, eta)) for label, eta in etas.items()}
    auto = DEMO / "diagnostics" / "auto_switch.json"
    if auto.exists():  # the pipeline's choice; shared when its top piece is the quality expert
        experts = {"quality": quality, "likelihood": likelihood}
        roles, switches = load_switches(auto, {role: e.name for role, e in experts.items()},
                                        {role: (e.gamma_min, e.gamma_max) for role, e in experts.items()})
        if roles == ["likelihood", "quality"]:  # one switch, so the grid's trunks serve it
            merges["auto"] = (switches[-1], switch_many([experts[role] for role in roles], switches))
    return merges


def run(path, merges, grid, seeds, shape, options, images=None, batch_size=200):
    start = time.perf_counter()
    shared, evaluations = sweep(path, merges, grid, seeds, shape, options, images=images, batch_size=batch_size)
    shared_wall = time.perf_counter() - start
    start, alone, alone_evaluations = time.perf_counter(), {}, 0.0
    for label, (_, merged) in merges.items():
        if path == "nll":
            alone[label] = ode_nll(merged, images, seeds=list(seeds), batch_size=batch_size, **options)
        else:
            sampler = sample_ancestral if path == "ancestral" else sample_ode
            alone[label] = sampler(merged, seeds, shape, batch_size=batch_size, **options)
        alone_evaluations += float(alone[label].nfe.float().mean())
    alone_wall = time.perf_counter() - start
    field = "bpd" if path == "nll" else "x"
    difference = lambda a, b: float((getattr(a, field) - getattr(b, field)).abs().max())  # noqa: E731
    diff = max(difference(shared[label], alone[label]) for label in merges)
    # the yardstick of "within tolerance": how far independent runs move with the batch they are solved in
    spread = 0.0
    if path != "ancestral":
        for label, (_, merged) in merges.items():
            half = (ode_nll(merged, images, seeds=list(seeds), batch_size=batch_size // 2, **options) if path == "nll"
                    else sample_ode(merged, seeds, shape, batch_size=batch_size // 2, **options))
            spread = max(spread, difference(half, alone[label]))
    print(f"{path}: {len(merges)} merges; evaluations per image shared {evaluations:.0f}, independent "
          f"{alone_evaluations:.0f}; wall shared {shared_wall:.1f} s, independent {alone_wall:.1f} s; independent runs "
          f"at batch {batch_size} against {batch_size // 2} differ by up to {spread:.3g}")
    return evaluations / alone_evaluations, shared_wall / alone_wall, diff, spread


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200, help="images sampled per merge (seeds 0..N-1)")
    parser.add_argument("--images", type=int, default=120, help="test images of the NLL")
    parser.add_argument("--grid", type=int, default=10, help="anchors every 1/grid of the merged clock")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (DEMO / "experts" / "train" / "edm.json").exists():
        raise SystemExit(f"no demo experts under {DEMO / 'experts'}: run `snakemake --cores all experts` first")
    quality, likelihood = load_expert(DEMO / "experts" / "train" / "edm"), load_expert(DEMO / "experts" / "train" / "vdm")
    merges, shape, seeds = demo_merges(quality, likelihood), tuple(quality.image_shape), range(args.samples)
    images = split_images(DEMO / "data" / "splits.npz", "test")[:args.images]
    results = {
        "ancestral": run("ancestral", merges, args.grid, seeds, shape, {"steps": 256, "clip_denoised": True}),
        "ode": run("ode", merges, args.grid, seeds, shape, {"rtol": 1e-5, "atol": 1e-5, "error_norm": "batch-rms"}),
        "nll": run("nll", merges, args.grid, range(len(images)), shape,
                   {"rtol": 1e-5, "atol": 1e-5, "error_norm": "batch-rms", "dequantization": "tn"}, images=images),
    }
    for path, (evaluations, wall, diff, spread) in results.items():
        print(f"{path}: evaluations ratio {evaluations:.2f}, wall ratio {wall:.2f}, max abs diff {diff:.3g}, "
              f"batch dependence {spread:.3g}")


if __name__ == "__main__":
    main()
