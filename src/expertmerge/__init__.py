"""expertmerge: merge pretrained diffusion experts by noise level.

Every expert is a denoiser D(x; s) on its own range of gamma = -log SNR (see `experts`);
`merge` switches or blends them by noise level; `sampling` and `likelihood` work on any expert.

The public names below load their module on first use (PEP 562), so that `expertmerge table`
and other light commands do not pay for importing torch.
"""
import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "experts": ["Expert", "EDMExpert", "VDMExpert", "GaussianPathExpert", "GaussianSchedule", "GaussianExpert"],
    "merge": ["eta_range", "switch", "switch_many", "blend"],
    "sampling": ["sample_ode", "sample_heun", "sample_ancestral"],
    "likelihood": ["ode_nll", "vlb", "vlb_runs", "LikelihoodRecord", "VLBRecord", "VLBSummary"],
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
