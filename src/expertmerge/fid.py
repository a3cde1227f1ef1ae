"""FID's features (EDM protocol: reference statistics from the training set; the statistics and the
Frechet distance are in `expertmerge.frechet`).

Feature extractors follow clean-fid's contract: a callable taking float NCHW images with values in
[0, 255] and returning [N, F] features (what `cleanfid.fid.get_batch_features` runs, under no_grad);
`cleanfid.fid.frechet_distance` compares the Gaussians fitted to them. clean-fid's own entry points
(`compute_fid`, `get_folder_features`, `make_custom_stats`, the `custom_feat_extractor` hook) read
image *files* and resize them to 299x299; our images are uint8 arrays in memory (8x8 digits for the
demo), so we run the extractor on batches ourselves and keep the statistics (npz). clean-fid is
imported only where it is used: importing it costs ~4 s (torchvision), more than a demo sampling
job's features.

Extractors by name (`feature_extractor`):
  * "digits-classifier" -- the penultimate layer of a small conv classifier trained on scikit-learn's digits
    (Inception weights cannot be fetched offline, and Inception on 8x8 images means little).
  * The paper scale will add "inception_legacy_tensorflow": `cleanfid.features.build_feature_extractor(
    "legacy_tensorflow", device)` already has this contract (resizing happens inside the network).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .files import atomic_path, write_text
from .images import check_images

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------
# Digit classifier (no BatchNorm, so features do not depend on the batch).


class DigitClassifier(torch.nn.Module):
    """Conv net for 1-channel 8x8 images; `embed` gives the penultimate (feature) layer."""

    def __init__(self, channels: int = 32, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.config = dict(channels=channels, feature_dim=feature_dim, num_classes=num_classes)
        c = channels
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, c, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.SiLU(), torch.nn.AvgPool2d(2),          # 8x8 -> 4x4
            torch.nn.Conv2d(c, 2 * c, 3, padding=1), torch.nn.SiLU(), torch.nn.AvgPool2d(2),  # 4x4 -> 2x2
            torch.nn.Flatten(), torch.nn.Linear(8 * c, feature_dim), torch.nn.SiLU())
        self.head = torch.nn.Linear(feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Data-scale float NCHW (x = (2k+1)/256 - 1) -> [N, feature_dim] features."""
        return self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _to_data_scale(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC or float NCHW in [0, 255] -> float32 NCHW, x = (2k+1)/256 - 1 (`images.from_uint8`)."""
    if images.dtype == torch.uint8:
        images = images.permute(0, 3, 1, 2)
    return (2 * images.float() + 1) / 256 - 1


def _check_labels(labels, count: int, what: str) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if labels.shape != (count,) or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{what} must be {count} integers in 0..9 (one per image), got shape {tuple(labels.shape)}")
    return labels


def _random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Augmentation: translate each image by -1, 0 or +1 pixel per axis, filling with level 0."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=1 / 256 - 1)
    dy, dx = torch.randint(0, 3, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, 1, h, w + 2)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, 1, h, w)
    return padded.gather(2, rows).gather(3, cols)


def accuracy(model: DigitClassifier, images, labels, batch_size: int = 512) -> float:
    """Fraction of uint8 NHWC `images` whose predicted class equals `labels`."""
    images = check_images(images)
    labels = _check_labels(labels, len(images), "labels")
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(_to_data_scale(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])
    return float((logits.argmax(1) == labels).float().mean())


def train_classifier(train_images, train_labels, val_images=None, val_labels=None, *, seed: int = 0,
                     steps: int = 1000, batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 1e-4,
                     channels: int = 32, feature_dim: int = 64) -> DigitClassifier:
    """Train a DigitClassifier (AdamW, cosine learning rate, +-1 pixel shifts); returns it in eval mode.

    `model.train_info` holds the hyper-parameters, the final training loss and, given a validation
    split, its accuracy (`val_accuracy`, also logged). Deterministic for a given seed; the global RNG
    state is untouched.
    """
    images = check_images(train_images)
    if images.shape[-1] != 1:
        raise ValueError(f"the digit classifier takes 1-channel images, got {images.shape[-1]} channels")
    labels = _check_labels(train_labels, len(images), "train_labels")
    x = _to_data_scale(images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier(channels=channels, feature_dim=feature_dim)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    for _ in range(steps):
        index = torch.randint(len(x), (batch_size,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(_random_shift(x[index], generator)), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    model.train_info = dict(model.config, seed=seed, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                train_images=len(images), final_train_loss=float(loss.detach()))
    if val_images is not None:
        model.train_info.update(val_images=len(val_images), val_accuracy=accuracy(model, val_images, val_labels))
        log.info("digit classifier: validation accuracy %.4f after %d steps", model.train_info["val_accuracy"], steps)
    return model


def save_classifier(stem, model: DigitClassifier, meta: dict | None = None):
    """Write `stem.safetensors` (weights) and `stem.json` (architecture + meta), each via a temporary name."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights, info = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp))
    write_text(info, json.dumps({"config": model.config, "meta": meta or {}}, indent=2) + "\n")


def load_classifier(stem) -> tuple[DigitClassifier, dict]:
    """Read a classifier written by `save_classifier`; returns (model in eval mode, meta). Executes no code."""
    stem = Path(stem)
    weights, info = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    for path in (weights, info):
        if not path.is_file():
            raise FileNotFoundError(f"classifier file {path} is missing (expected {stem}.safetensors and {stem}.json)")
    record = json.loads(info.read_text())
    model = DigitClassifier(**record["config"])
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), record.get("meta", {})


# ----------------------------------------------------------------------------
# Feature extractors (clean-fid contract: float NCHW in [0, 255] -> [N, F]).

EXTRACTORS = ("digits-classifier",)
FEATURE_NETWORKS = ("digits-classifier", "inception")  # config.yaml's fid.features


def feature_extractor(name: str, *, classifier: DigitClassifier | None = None):
    """Callable with clean-fid's contract for extractor `name` (one of EXTRACTORS)."""
    if name == "digits-classifier":
        if not isinstance(classifier, DigitClassifier):
            raise ValueError("feature extractor 'digits-classifier' needs classifier=<DigitClassifier> (see train_classifier)")
        classifier.eval()
        return lambda batch: classifier.embed(_to_data_scale(batch))
    raise ValueError(f"unknown feature extractor {name!r}; allowed: {', '.join(EXTRACTORS)}")


def features(extractor, images, batch_size: int = 256) -> np.ndarray:
    """uint8 NHWC images -> float64 [N, F] features. `extractor`: a DigitClassifier or a clean-fid-style callable."""
    images = check_images(images)
    if isinstance(extractor, DigitClassifier):
        extractor = feature_extractor("digits-classifier", classifier=extractor)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = [images[i:i + batch_size].permute(0, 3, 1, 2).float() for i in range(0, len(images), batch_size)]
    with torch.no_grad():
        return np.concatenate([extractor(batch).cpu().numpy() for batch in batches]).astype(np.float64)


def load_feature_network(kind: str, path, device="cpu", checksum: str | None = None):
    """images (uint8 NHWC numpy) -> float64 features [N, F], for FID.

    kind "digits-classifier": the demo's classifier at checkpoint stem `path`; "inception": clean-fid's
    legacy_tensorflow Inception-v3 (the TF/EDM protocol) from the weights file at `path`.
    """
    if kind == "digits-classifier":
        model, _ = load_classifier(path)
        return lambda images: features(model, images)
    if kind == "inception":
        from .inception import inception_features, load_inception

        model = load_inception(path, device=device, checksum=checksum)
        return lambda images: inception_features(model, images, device=device)
    raise ValueError(f"unknown FID feature network {kind!r}; allowed: {', '.join(FEATURE_NETWORKS)}")
