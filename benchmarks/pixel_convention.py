"""What a pixel convention moves: the ODE NLL of two exact models of 8-bit data whose experts were defined
in NVlabs' EDM convention (x' = k/127.5 - 1), evaluated on data in ours ((2k + 1)/256 - 1):

* wrapped: through the exact change of variables (what loading a checkpoint that records its convention does);
* naive: fed our data as if it were in the expert's own scale (what a merge that ignores conventions does);
* common: the same model defined directly in our coordinates (the truth).

Models: a Gaussian fitted to the digits (smooth: the convention barely matters) and a lattice model whose
pixels sit at 0 or 255 a third of the time each (sharp, saturated pixels as in CIFAR-10: it matters).
Prints bits/dim; `python benchmarks/pixel_convention.py`.
"""
import math

import torch

from expertmerge.datasets import load_digits_splits
from expertmerge.experts import GaussianExpert
from expertmerge.experts.base import RescaledExpert
from expertmerge.experts.lattice import LatticeExpert
from expertmerge.images import EDM_PIXELS, from_uint8
from expertmerge.likelihood import ode_nll

GAMMA = (-13.3, 8.764)  # the merged range of the paper


def nll(expert, images) -> float:
    return ode_nll(expert, images, batch_size=len(images)).mean()


def compare(name, make, images):
    a, b = EDM_PIXELS.from_common()
    shifted = [g + 2 * math.log(a) for g in GAMMA]
    common, native, naive = make(*GAMMA, False), make(*shifted, True), make(*GAMMA, True)
    exact = nll(common, images)
    print(f"{name:8s} common {exact:.4f}  wrapped {nll(RescaledExpert(native, a, b), images) - exact:+.4f}  "
          f"naive {nll(naive, images) - exact:+.4f}  (bits/dim; wrapped and naive as differences)")


def main():
    torch.set_num_threads(1)
    a, b = EDM_PIXELS.from_common()
    digits = load_digits_splits(seed=0)
    x = from_uint8(digits["train"]).double().flatten(1)
    mean, cov = x.mean(0), torch.cov(x.T) + 1e-4 * torch.eye(x.shape[1], dtype=torch.float64)
    test = digits["test"][:200]

    def gaussian(low, high, edm_scale):
        m, c = (a * mean + b, a * a * cov) if edm_scale else (mean, cov)
        return GaussianExpert(m.reshape(1, 8, 8), c, low, high)

    compare("gaussian", gaussian, test)
    probabilities = torch.full((256,), 1 / 3 / 254, dtype=torch.float64)
    probabilities[[0, 255]] = 1 / 3
    levels = torch.multinomial(probabilities, 200 * 64, replacement=True, generator=torch.Generator().manual_seed(0))
    compare("lattice", lambda low, high, edm_scale: LatticeExpert(probabilities, low, high,
                                                                  EDM_PIXELS if edm_scale else None),
            levels.to(torch.uint8).reshape(200, 8, 8, 1))


if __name__ == "__main__":
    main()
