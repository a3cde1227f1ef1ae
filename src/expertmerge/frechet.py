"""FID's numbers: feature statistics (mean, covariance), the Frechet distance against a reference
prepared once, and its spread over disjoint seed groups. numpy only, so that the jobs that only
aggregate features (one per sampler and eta) start without importing torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import atomic_path
from .npz import ArraySpec, load_npz

# What a statistics .npz must hold, checked from the headers before reading (values: finite, after).
STATISTICS_SPECS = {"mu": ArraySpec("a finite float mean [F]", ndims=(1,), kinds="f", finite=True),
                    "sigma": ArraySpec("a finite float covariance [F, F]", ndims=(2,), kinds="f", finite=True)}


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, as clean-fid's fid_from_feats) of [N, F] features, N >= 2."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2 or not np.isfinite(feats).all():
        raise ValueError(f"features must be a finite [N, F] array with N >= 2, got shape {feats.shape}")
    return feats.mean(axis=0), np.atleast_2d(np.cov(feats, rowvar=False))


def save_statistics(path, mu: np.ndarray, sigma: np.ndarray, *, num_images: int | None = None):
    """Write mu, sigma (and the image count, if given) to an .npz via a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, mu=mu, sigma=sigma, num_images=-1 if num_images is None else num_images)


def load_statistics(path) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) saved by `save_statistics`; a ValueError naming the file if it is not such an .npz."""
    data = load_npz(path, ["mu", "sigma"], "FID reference statistics", STATISTICS_SPECS)
    mu, sigma = data["mu"], data["sigma"]
    if sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{path}: FID reference statistics need mu [F] and sigma [F, F], got {list(mu.shape)} and "
                         f"{list(sigma.shape)}")
    return mu, sigma


class FrechetReference:
    """A reference (mu, sigma) prepared once for many Frechet distances against it.

    clean-fid's frechet_distance takes scipy's sqrtm of S_a S_b for every distance, about 11 s at
    2048 features; an FID job needs six (the FID and five seed groups). The trace needs only the
    eigenvalues: S_a S_b has those of R S_a R with R = S_b^(1/2) (AB and BA share eigenvalues), and
    R S_a R is symmetric positive semi-definite, so Tr (S_a S_b)^(1/2) = sum sqrt(eigvalsh(R S_a R)).
    R comes from one eigendecomposition of S_b; each distance then costs two matrix products and a
    symmetric eigenvalue solve (under a second at 2048). tests/test_fid.py checks it against clean-fid.
    """

    def __init__(self, mu, sigma):
        self.mu, self.sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
        if self.mu.ndim != 1 or self.sigma.shape != (len(self.mu), len(self.mu)):
            raise ValueError(f"reference statistics need mu [F] and sigma [F, F], got {self.mu.shape}, {self.sigma.shape}")
        if not (np.isfinite(self.mu).all() and np.isfinite(self.sigma).all()):
            raise ValueError("reference statistics must be finite; mu or sigma holds NaN or Inf")
        eigenvalues, vectors = np.linalg.eigh((self.sigma + self.sigma.T) / 2)
        self.root = (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T

    @classmethod
    def of(cls, reference) -> "FrechetReference":
        """`reference` itself if already prepared, else prepared from its (mu, sigma)."""
        return reference if isinstance(reference, cls) else cls(*reference)

    def distance(self, stats) -> float:
        """||mu_a - mu||^2 + Tr(S_a + S - 2 (S_a S)^(1/2)) for stats = (mu_a, S_a)."""
        mu_a, sigma_a = (np.asarray(v, np.float64) for v in stats)
        if not (np.isfinite(mu_a).all() and np.isfinite(sigma_a).all()):
            raise ValueError("feature statistics must be finite; mu or sigma holds NaN or Inf")
        if mu_a.shape != self.mu.shape or sigma_a.shape != self.sigma.shape:
            raise ValueError(f"statistics disagree in feature size: mu {mu_a.shape} vs {self.mu.shape}, "
                             f"sigma {sigma_a.shape} vs {self.sigma.shape} (same feature extractor?)")
        inner = self.root @ sigma_a @ self.root
        trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
        diff = mu_a - self.mu
        return float(diff @ diff + np.trace(sigma_a) + np.trace(self.sigma) - 2 * trace_root)


def fid(stats_a, stats_b) -> float:
    """Frechet distance ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between (mu, sigma) pairs."""
    return FrechetReference(*stats_b).distance(stats_a)


def seed_spread(reference, feature_groups) -> dict:
    """FID of each group of samples (disjoint seed ranges, equal size) against `reference` ((mu, sigma)
    or a FrechetReference).

    Returns fids (per group), mean, std (ddof=1: the spread of FID across sampling seeds at this
    group size) and group_size. We use disjoint seed groups, not a bootstrap over images: resampling
    with replacement duplicates images, which shrinks the sample covariance and biases FID upward,
    so a bootstrap's spread is not the spread one sees when drawing new seeds. The spread belongs to
    FID at `group_size` samples; FID computed from more samples varies less.
    """
    groups = [np.asarray(g) for g in feature_groups]
    sizes = {len(g) for g in groups}
    if len(groups) < 2 or len(sizes) != 1:
        raise ValueError(f"need >= 2 feature groups of equal size, got sizes {[len(g) for g in groups]}")
    reference = FrechetReference.of(reference)
    return _spread([reference.distance(statistics(g)) for g in groups], sizes.pop())


def _spread(fids, group_size: int) -> dict:
    fids = np.asarray(fids)
    return dict(fids=fids.tolist(), mean=float(fids.mean()), std=float(fids.std(ddof=1)), group_size=group_size)


def fid_with_spread(reference, feats: np.ndarray, num_groups: int) -> dict:
    """FID of all `feats` (seeds 0..N-1, in seed order) and the spread over `num_groups` disjoint seed
    groups, as seed_spread, from one pass over the features: the covariance of all of them is
    combined from the groups' sums of products instead of being computed a second time."""
    reference = FrechetReference.of(reference)
    groups = split_seed_groups(feats, num_groups)
    rest = feats[sum(len(g) for g in groups):]
    shift = np.asarray(feats[:min(len(feats), 1000)], np.float64).mean(axis=0)  # centre for accuracy
    moments = []
    for part in [*groups, *([rest] if len(rest) else [])]:
        centred = np.asarray(part, np.float64) - shift
        moments.append((centred.sum(axis=0), centred.T @ centred, len(part)))

    def stats(total, products, count):
        mean = total / count
        return shift + mean, (products - count * np.outer(mean, mean)) / (count - 1)

    full = stats(*(sum(m[i] for m in moments) for i in range(3)))
    return dict(fid=reference.distance(full),
                **_spread([reference.distance(stats(*m)) for m in moments[:num_groups]], len(groups[0])))


def split_seed_groups(feats: np.ndarray, num_groups: int) -> list[np.ndarray]:
    """Split features of seeds 0..N-1 (in seed order) into `num_groups` disjoint contiguous seed ranges."""
    if num_groups < 2 or len(feats) < 2 * num_groups:
        raise ValueError(f"cannot split {len(feats)} samples into {num_groups} groups (need >= 2 groups of >= 2)")
    size = len(feats) // num_groups
    return [feats[k * size:(k + 1) * size] for k in range(num_groups)]
