"""How the demo experts were sized: train network variants of both experts and measure what the demo's
claims depend on, each variant as the pipeline would (same trainer, data split, seeds, samplers).

Usage: python benchmarks/demo_expert_variants.py [--workdir DIR] [--variants NAME ...] [--nll-images 64]

For each (quality, likelihood) pair it prints: the likelihood expert's best validation loss (bits/dim)
and training time; the ODE NLL (bpd, truncated-normal dequantisation, on the first --nll-images test
images) and the ODE-sampler FID (1000 samples, the demo's digit classifier) of each expert alone, of
the switch at eta_min and at eta = 0.3 (the curves' crossing for the chosen variant). One thread, as
the demo's jobs; about 2-5 minutes per expert trained, 20-60 s per variant measured. Trained experts are kept in the
workdir, so a second call reuses them.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from expertmerge import merge
from expertmerge.datasets import load_digits_splits
from expertmerge.experts.checkpoint import load_expert
from expertmerge.features import features, train_classifier
from expertmerge.frechet import fid, statistics
from expertmerge.likelihood import ode_nll
from expertmerge.sampling import sample_ode
from expertmerge.train_expert import train_expert

BASE = dict(batch_size=128, lr=1e-3, ema_decay=0.999, eval_every=250, seed=0)
PATCH2 = dict(patch=2, channels=(16, 32))
PATCH1 = dict(patch=1, channels=(8, 16))
EXPERTS = {  # name -> (family, network hyper-parameters, training steps)
    "edm-patch2": ("edm", PATCH2, 5000),
    "edm-patch1": ("edm", PATCH1, 5000),
    "edm-patch1-4k": ("edm", PATCH1, 4000),
    "vdm-patch2": ("vdm", dict(PATCH2, fourier_exponents=()), 5000),        # the demo before this study
    "vdm-patch2-f34": ("vdm", dict(PATCH2, fourier_exponents=(3, 4)), 5000),
    "vdm-patch2-f345": ("vdm", dict(PATCH2, fourier_exponents=(3, 4, 5)), 5000),
    "vdm-patch1-c16-f34": ("vdm", dict(patch=1, channels=(16, 32), fourier_exponents=(3, 4)), 5000),
    "vdm-patch1-f34": ("vdm", dict(PATCH1, fourier_exponents=(3, 4)), 5000),
    "vdm-patch1-f34-4k": ("vdm", dict(PATCH1, fourier_exponents=(3, 4)), 4000),
}
VARIANTS = {  # name -> (quality expert, likelihood expert)
    "before": ("edm-patch2", "vdm-patch2"),
    "fourier": ("edm-patch2", "vdm-patch2-f34"),
    "fourier+5": ("edm-patch2", "vdm-patch2-f345"),
    "vdm-full-res-16": ("edm-patch2", "vdm-patch1-c16-f34"),
    "vdm-full-res": ("edm-patch2", "vdm-patch1-f34"),
    "both-full-res": ("edm-patch1", "vdm-patch1-f34"),
    "both-full-res-4k": ("edm-patch1-4k", "vdm-patch1-f34-4k"),
    "vdm-full-res-4k": ("edm-patch2", "vdm-patch1-f34-4k"),   # config.yaml's choice
}


def trained(workdir: Path, name: str, splits) -> dict:
    stem = workdir / name
    if not stem.with_suffix(".json").exists():
        family, network, steps = EXPERTS[name]
        train_expert(family, splits["train"], splits["val"], out_stem=stem, net=network, steps=steps, **BASE)
    return json.loads(stem.with_suffix(".json").read_text())["training"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--nll-images", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="expertmerge-variants-"))
    workdir.mkdir(parents=True, exist_ok=True)
    splits = load_digits_splits(seed=0, val_fraction=0.1, test_fraction=0.2)  # the demo's split
    classifier = train_classifier(splits["train"], splits["train_labels"], splits["val"], splits["val_labels"],
                                  seed=0, steps=1500, batch_size=128, lr=2e-3)
    reference = statistics(features(classifier, splits["train"]))
    test = splits["test"][:args.nll_images]
    print("| variant | VDM val loss (bpd) | VDM train (s) | NLL: EDM, ηmin, η=0.3, VDM | FID: EDM, ηmin, η=0.3, VDM |")
    print("|---|---|---|---|---|")
    for variant in args.variants:
        quality_name, likelihood_name = VARIANTS[variant]
        record = trained(workdir, likelihood_name, splits)
        trained(workdir, quality_name, splits)
        quality, likelihood = load_expert(workdir / quality_name), load_expert(workdir / likelihood_name)
        eta_min, _ = merge.eta_range(quality, likelihood)
        models = [quality, merge.switch(quality, likelihood, eta_min), merge.switch(quality, likelihood, 0.3), likelihood]
        start = time.perf_counter()
        nll = [ode_nll(model, test, batch_size=len(test)).mean() for model in models]
        fids = [fid(statistics(features(classifier, sample_ode(model, range(1000), (1, 8, 8), batch_size=500)
                                        .images.numpy())), reference) for model in models]
        print(f"| {variant} ({quality_name} + {likelihood_name}) | {record['best_val_loss']:.2f} | "
              f"{record['wall_s']:.0f} | {', '.join(f'{v:.3f}' for v in nll)} | {', '.join(f'{v:.1f}' for v in fids)} |"
              f"  <!-- {time.perf_counter() - start:.0f} s to measure -->", flush=True)


if __name__ == "__main__":
    main()
