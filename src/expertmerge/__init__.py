"""expertmerge: merge pretrained diffusion experts by noise level.

Every expert is a denoiser D(x; s) on its own range of gamma = -log SNR (see `experts`);
`merge` switches or blends them by noise level; `sampling` and `likelihood` work on any expert.
"""
from .experts import EDMExpert, Expert, GaussianExpert, GaussianPathExpert, GaussianSchedule, VDMExpert
from .likelihood import LikelihoodRecord, VLBRecord, VLBSummary, ode_nll, vlb, vlb_runs
from .merge import blend, eta_range, switch, switch_many
from .sampling import sample_ancestral, sample_heun, sample_ode

__version__ = "0.1.0"

__all__ = ["Expert", "EDMExpert", "VDMExpert", "GaussianPathExpert", "GaussianSchedule", "GaussianExpert",
           "eta_range", "switch", "switch_many", "blend", "sample_ode", "sample_heun", "sample_ancestral",
           "ode_nll", "vlb", "vlb_runs", "LikelihoodRecord", "VLBRecord", "VLBSummary"]
