import contextlib
import sys
import types

import pytest
import torch

from expertmerge.experts import GaussianExpert

torch.set_num_threads(1)


def pytest_collection_modifyitems(session, config, items):
    # The SLURM cluster tests mostly wait on the cluster's queue (about 20 minutes in all); collected first,
    # their file is the first one handed to an xdist worker, and the other workers run the rest meanwhile.
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)  # stable: each file keeps its order


def pytest_sessionstart(session):
    # matplotlib builds its font cache on first use and says so on stderr ("generated new
    # fontManager"); in a fresh venv that extra line would break the one-line-error checks
    # of subprocesses, so the cache is built once here, before any test runs.
    import matplotlib.font_manager  # noqa: F401


def gaussian_data(dim_shape=(1, 2, 2), seed=0):
    """A fixed Gaussian N(mean, cov) with eigenvalues spread over ~[0.01, 0.3]."""
    generator = torch.Generator().manual_seed(seed)
    dim = int(torch.tensor(dim_shape).prod())
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    eigenvalues = torch.linspace(0.01, 0.3, dim, dtype=torch.float64)
    cov = q @ torch.diag(eigenvalues) @ q.T
    mean = 0.3 * torch.randn(dim_shape, generator=generator, dtype=torch.float64)
    return mean, cov


@pytest.fixture
def gaussian():
    mean, cov = gaussian_data()
    return GaussianExpert(mean, cov, gamma_min=-13.3, gamma_max=8.764)


class Spy:
    """Wraps an expert; records every noise level it is asked for and counts evaluated rows."""

    def __init__(self, expert, gamma_min=None, gamma_max=None):
        self.expert = expert
        self.gamma_min = expert.gamma_min if gamma_min is None else gamma_min
        self.gamma_max = expert.gamma_max if gamma_max is None else gamma_max
        self.gammas, self.calls, self.rows = [], 0, 0

    def denoise(self, x, s):
        s = torch.as_tensor(s, dtype=torch.float64).expand(x.shape[0])
        self.gammas.extend((2 * torch.log(s)).tolist())
        self.calls += 1
        self.rows += x.shape[0]
        return self.expert.denoise(x, s)


@contextlib.contextmanager
def persistence_module():
    """A stand-in `torch_utils.persistence` module in sys.modules, so pickle can name its reconstruct function."""
    module = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("the real reconstruct hook must never be called by the reader")

    _reconstruct_persistent_obj.__module__ = module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    saved = {name: sys.modules.get(name) for name in ("torch_utils", "torch_utils.persistence")}
    sys.modules.update({"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": module})
    try:
        yield module
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


@pytest.fixture
def persistence():
    with persistence_module() as module:
        yield module


def make_tiny_experts(root):
    """Barely trained experts (edm, vdm) and digit classifier under `root`, and the digits' splits.npz: enough
    to run the commands. Returns root."""
    from expertmerge.datasets import load_digits_splits, save_splits
    from expertmerge.experts.registry import get_family
    from expertmerge.features import save_classifier, train_classifier
    from expertmerge.train_expert import train_expert

    splits = load_digits_splits(seed=0, val_fraction=0.1, test_fraction=0.2)
    save_splits(root / "splits.npz", splits, {})
    for family, (lo, hi) in (("edm", get_family("edm").gamma_range), ("vdm", (-13.3, 5.0))):
        train_expert(family, splits["train"], splits["val"], out_stem=root / family, seed=0, steps=2, batch_size=8,
                     eval_every=1, val_repeats=1, gamma_min=lo, gamma_max=hi)
    save_classifier(root / "classifier", train_classifier(splits["train"], splits["train_labels"], steps=2))
    return root
