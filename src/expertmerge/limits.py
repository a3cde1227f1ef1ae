"""The finite, meaningful range of every numeric setting, and the caps on what one config may ask for.

The config schema (workflow/schemas/config.schema.yaml) and the CLI's argument types both use these
numbers; tests/test_limits.py holds the schema to them. A range is (low, high), both inclusive.
"""
from __future__ import annotations

# Adaptive ODE tolerances: below ~1e-10 the float64 solver's steps underflow (a "noise level nan" deep in
# the solve), above 1 the error control is void (an FID at 50 NFE that means nothing).
TOLERANCE = (1e-10, 1.0)
# Adam's learning rate: the paper's recipes use 1e-4 - 2e-3; above 1 every trainer diverges.
LEARNING_RATE = (1e-10, 1.0)
# gamma = -log SNR = log sigma^2: the experts span about [-13.3, 8.8]; +-50 is sigma in [1.4e-11, 7.2e10].
GAMMA = (-50.0, 50.0)
SIGMA = (1e-10, 1e10)
# The recommendation's FID budget: a merge may cost at most this fraction more FID than the quality expert.
FID_BUDGET = (0.0, 10.0)
# Data-split fractions are open (0, 1); EMA decay is [0, 1).

# Caps: a config asking for more is refused before planning (10,000 eta labels took 253 s to dry-run).
MAX_ETAS = 64                   # eta labels of one experiment (the paper's sweep has 13)
MAX_EXPERIMENTS = 32
MAX_SAMPLES = 10_000_000        # sampling.num_samples (the paper's FID uses 50,000)
MAX_SHARDS = 10_000             # sampling/nll/loss-profile jobs of one kind per eta
MAX_BATCH = 1_000_000
MAX_STEPS = 100_000_000         # training steps, sampler steps
MAX_POINTS = 100_000            # loss-profile grid points
MAX_RUNS = 1_000                # VLB runs per eta
MAX_COUNT = 100_000_000         # any other positive integer setting (eval_every, checkpoint_every, channels...)
MAX_STRING = 4096               # characters of any one string in the config (a path, a URL, a label)
MAX_CONFIG_NODES = 100_000      # values in the config with YAML aliases expanded (a "billion laughs" is refused)

# Settings of the CLI (seeds and GPUs are in the config too).
MAX_SEED = 2**63 - 1            # seeds are stored as int64 (shards, records) and seed torch generators
TIMEOUT = (0.001, 86_400.0)     # seconds a download may go without data
DOWNLOAD_RATE = (0.0, 1e12)     # bytes/s a download must average after its grace period (0: no minimum)
DOWNLOAD_DEADLINE = (0.001, 1e7) # seconds a whole download may take
MAX_THREADS = 4096
MAX_GPUS = 1024
MAX_IMAGE_SIDE = 4096           # an imported expert's channels, height and width
MAX_GRID_IMAGES = 10_000        # rows or samples per panel of a figure grid

# Arrays we read from .npz files: refuse a declared size beyond this before reading (a zip bomb).
MAX_ARRAY_BYTES = 16 * 2**30


def in_range(value: float, bounds: tuple[float, float]) -> bool:
    """True for a finite value within bounds (NaN and +-inf are never in range)."""
    low, high = bounds
    return low <= value <= high
