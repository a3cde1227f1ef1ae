"""Experts: every foreign model wrapped once into the denoiser interface D(x; s).

Only this package knows which family an expert came from: `registry` names the families and
each family's module (`edm`, `vdm`, `flow`) holds everything family-specific. The analytic Gaussian
experts (`gaussian`, `gaussian_path`) prove samplers and likelihoods against closed forms.
Names are imported on first use, so that `expertmerge.experts.registry` can be read without torch.
"""
import importlib

_EXPORTS = {"Expert": "base", "check_expert": "base", "EDMExpert": "edm", "VDMExpert": "vdm", "FlowExpert": "flow",
            "GaussianPathExpert": "gaussian_path", "GaussianSchedule": "gaussian_path", "GaussianExpert": "gaussian"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
