"""An ESTIMATE of the GPU-hours the `paper` target spends per switch level eta, per data set.

Usage: python benchmarks/estimate_gpu_hours.py [--tflops 50]

Measured here: the FLOPs of one forward pass of each paper-scale network (torch's FlopCounterMode on
the CPU, batch 1). Taken from the paper: the NFE of each eta (Tables 1 and 2; ancestral sampling uses
256 steps). Assumed: `--tflops`, the sustained throughput of one GPU on these U-Nets (default 50
TFLOP/s, roughly an A100 in TF32; measure yours and pass it). Work per eta:
  ODE sampling       num_samples x NFE_ode forwards
  ancestral sampling num_samples x 256 forwards
  Heun sampling      num_samples x (2 steps - 1) forwards per step count (5, 9, 18: 61 in all)
  ODE NLL            NLL images x NFE_nll x 3 (one forward and one vector-Jacobian product per step)
  VLB                runs x test images x 1 forward
  eta auto           as the merged eta with the most NFE (its switches are chosen by the run itself)
  loss profile       selection images x grid points x 2 experts x 1 forward (once per data set; eta auto's input)
(Not counted: training, and the Inception features, ~11 GFLOPs per image, about 0.3 GPU-h per eta.)
A merged eta is charged at the larger of its two experts' forward costs (an upper bound).

With shared trunks (sampling.share, nll.share; expertmerge.trunks), the last lines give the sweep's total as
the pipeline runs it: the trunk once (the quality expert from the prior down to the lowest anchor, the
likelihood expert from the data up to the highest, anchors every 1/10 of the clock), and each merge (not
"auto", whose switch a job chooses) from its anchor. Ancestral steps are counted exactly; for the adaptive
solvers the NFE of a merge is ASSUMED spread evenly over its clock (benchmarks/bench_sweep.py measures the
demo's ratios instead).
"""
import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_networks import NETWORKS  # benchmarks/bench_networks.py
from expertmerge.noise import feasible_etas
from expertmerge.sharing import anchor_index

ETAS = ["EDM", "ηmin", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "ηmax", "VDM"]
PAPER_NFE = {  # the paper's Table 1 (NLL) and Table 2 (ODE sampling) NFE per eta
    "CIFAR-10": {"nll": [204, 232, 234, 236, 253, 259, 254, 251, 257, 273, 274, 248],
                 "ode": [125, 145, 147, 159, 169, 173, 193, 221, 239, 226, 238, 206]},
    "ImageNet32": {"nll": [195, 185, 192, 186, 180, 180, 196, 210, 220, 232, 236, 205],
                   "ode": [120, 140, 144, 150, 166, 169, 180, 204, 207, 189, 189, 158]},
}
EXPERTS = {"CIFAR-10": ("ddpmpp-cifar10", "vdm-cifar10"), "ImageNet32": ("ddpmpp-cifar10", "vdm-imagenet32")}
# config.yaml's paper experiments: samples per (sampler, eta), NLL test images, VLB runs over the whole test split
WORK = {"CIFAR-10": dict(samples=50_000, nll_images=10_000, vlb_images=10_000, runs=10),
        "ImageNet32": dict(samples=50_000, nll_images=49_999, vlb_images=49_999, runs=10)}  # all, as the paper
ANCESTRAL_STEPS = 256
HEUN_NFE = sum(2 * steps - 1 for steps in (5, 9, 18))  # config.yaml's sampling.heun, the split schedule
PROFILE = dict(images=10_000, points=91)  # config.yaml's loss_profile: 10k training images, 89 points + range ends
GRID = 10  # config.yaml's sampling.share_grid and nll.share_grid (the default)
ETA_MIN, ETA_MAX = feasible_etas([(-13.3, 5.0), (-12.43, 8.764)])[0]  # VDM's and EDM's ranges (Eq. 15)
SWITCHES = [ETA_MIN, *(k / 10 for k in range(1, 9)), ETA_MAX]  # the merged etas of ETAS, in order


def shared_fraction(kind: str, nfe: list) -> float:
    """The sweep's merged-eta work with shared trunks over its work without, for the path `kind` (ode,
    ancestral or nll), each merge's evaluations spread evenly over its clock (exact for ancestral steps)."""
    merges = nfe[1:-1]  # the merged etas' NFE (ancestral: 256 each)
    down = kind != "nll"
    anchors = [anchor_index("down" if down else "up", eta, GRID) / GRID for eta in SWITCHES]
    trunk_length = 1 - min(anchors) if down else max(anchors)
    tails = [count * (anchor if down else 1 - anchor) for count, anchor in zip(merges, anchors)]
    return (trunk_length * sum(merges) / len(merges) + sum(tails)) / sum(merges)


def forward_flops(name: str) -> float:
    """FLOPs of one forward pass at batch 1, counted by torch."""
    torch.manual_seed(0)
    net, forward = NETWORKS[name](1)
    net.eval().requires_grad_(False)
    with FlopCounterMode(display=False) as counter:
        forward()
    return float(counter.get_total_flops())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflops", type=float, default=50.0, help="assumed sustained TFLOP/s of one GPU")
    args = parser.parse_args()
    flops = {name: forward_flops(name) for name in {n for pair in EXPERTS.values() for n in pair}}
    for name, value in sorted(flops.items()):
        print(f"{name}: {value / 1e9:.2f} GFLOPs per image and forward pass (measured)")
    seconds_per_flop = 1 / (args.tflops * 1e12)
    print(f"\nESTIMATE at an assumed {args.tflops:g} TFLOP/s per GPU (GPU-hours per eta):")
    for dataset, nfe in PAPER_NFE.items():
        edm, vdm = (flops[name] for name in EXPERTS[dataset])
        work = WORK[dataset]
        print(f"\n{dataset}\n{'eta':>6} {'ODE':>7} {'ancestral':>9} {'Heun':>6} {'NLL':>7} {'VLB':>6} {'total':>7}")
        totals, merged_work = 0.0, {}
        merged = range(1, len(ETAS) - 1)
        auto = {kind: max(nfe[kind][i] for i in merged) for kind in ("ode", "nll")}  # an upper bound for eta auto
        for i, eta in enumerate([*ETAS, "auto"]):
            cost = edm if eta == "EDM" else vdm if eta == "VDM" else max(edm, vdm)
            nfe_ode, nfe_nll = (auto["ode"], auto["nll"]) if eta == "auto" else (nfe["ode"][i], nfe["nll"][i])
            hours = {
                "ode": work["samples"] * nfe_ode * cost,
                "ancestral": work["samples"] * ANCESTRAL_STEPS * cost,
                "heun": work["samples"] * HEUN_NFE * cost,
                "nll": work["nll_images"] * nfe_nll * 3 * cost,
                "vlb": work["runs"] * work["vlb_images"] * cost,
            }
            hours = {key: value * seconds_per_flop / 3600 for key, value in hours.items()}
            total = sum(hours.values())
            totals += total
            print(f"{eta:>6} {hours['ode']:7.2f} {hours['ancestral']:9.2f} {hours['heun']:6.2f} {hours['nll']:7.2f} "
                  f"{hours['vlb']:6.2f} "
                  f"{total:7.2f}")
            if eta not in ("EDM", "VDM", "auto"):
                for kind in ("ode", "ancestral", "nll"):
                    merged_work[kind] = merged_work.get(kind, 0.0) + hours[kind]
        profile = PROFILE["images"] * PROFILE["points"] * (edm + vdm) * seconds_per_flop / 3600
        totals += profile
        print(f"{'L(γ)':>6} {'':7} {'':9} {'':6} {'':7} {'':6} {profile:7.2f}   (loss profile, once)")
        print(f"{'all':>6} {'':7} {'':9} {'':6} {'':7} {'':6} {totals:7.1f}   (independent runs: share off)")
        nfe_of = {"ode": nfe["ode"], "nll": nfe["nll"], "ancestral": [ANCESTRAL_STEPS] * len(ETAS)}
        saved = {kind: work_hours * (1 - shared_fraction(kind, nfe_of[kind])) for kind, work_hours in merged_work.items()}
        print(f"{'shared':>6} {-saved['ode']:7.2f} {-saved['ancestral']:9.2f} {'':6} {-saved['nll']:7.2f} {'':6} "
              f"{totals - sum(saved.values()):7.1f}   (trunks shared: the pipeline's default; "
              f"{(totals - sum(saved.values())) / totals:.2f} x)")


if __name__ == "__main__":
    main()
