"""Experts: every foreign model wrapped once into the denoiser interface D(x; s).

Only this package knows which family an expert came from.
"""
from .base import Expert, check_expert
from .edm import EDMExpert
from .gaussian import GaussianExpert
from .gaussian_path import GaussianPathExpert, GaussianSchedule
from .vdm import VDMExpert

__all__ = ["Expert", "check_expert", "EDMExpert", "VDMExpert", "GaussianPathExpert",
           "GaussianSchedule", "GaussianExpert"]
