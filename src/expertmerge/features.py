"""The networks FID features come from: the demo's digit classifier (defined and trained here) and
clean-fid's Inception-v3; the statistics and the Frechet distance are in `expertmerge.frechet`
(EDM protocol: reference statistics from the training set).

Feature extractors follow clean-fid's contract: a callable taking float NCHW images with values in
[0, 255] and returning [N, F] features (what `cleanfid.fid.get_batch_features` runs, under no_grad);
`cleanfid.fid.frechet_distance` compares the Gaussians fitted to them. clean-fid's own entry points
(`compute_fid`, `get_folder_features`, `make_custom_stats`, the `custom_feat_extractor` hook) read
image *files* and resize them to 299x299; our images are uint8 arrays in memory (8x8 digits for the
demo), so we run the extractor on batches ourselves and keep the statistics (npz). clean-fid is
imported only where it is used: importing it costs ~4 s (torchvision), more than a demo sampling
job's features.

Feature networks by name (`load_feature_network`, config.yaml's fid.features):
  * "digits-classifier" -- the penultimate layer of a small conv classifier trained on scikit-learn's digits
    (Inception weights cannot be fetched offline, and Inception on 8x8 images means little).
  * "inception" -- Inception-v3 in clean-fid's `legacy_tensorflow` mode (the TF / EDM FID protocol).
    The network is the TorchScript file `inception-2015-12-05.pt` (NVIDIA's port of the TensorFlow
    Inception graph that TF-FID and EDM use). clean-fid downloads it at run time; we read it from one
    configured local path instead, optionally pinned by a checksum, so a pipeline run never touches
    the network and always measures with the same weights.

How clean-fid's legacy_tensorflow mode treats an image (clean-fid 0.1.35):
  * `cleanfid.resize.build_resizer("legacy_tensorflow")` is the identity: the image stays at its own
    size (32x32 for CIFAR-10) and is NOT resized outside the network;
  * `ResizeDataset` turns the uint8 HWC array into float32 CHW with values 0..255 (ToTensor() * 255);
  * `InceptionV3W(resize_inside=True)` calls `base(x, return_features=True)`; inside the TorchScript
    graph the image is resized to 299x299 (bilinear, TF1-style) and normalised to (x - 128) / 128,
    and the 2048-d pool features come back, reshaped to [N, 2048].
We run the same steps with clean-fid's own functions, on arrays in memory instead of image files.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .downloads import file_checksum, trusted_checksum, verify_file
from .experts.checkpoint import DIGEST, check_weights_digest
from .files import atomic_path, write_text
from .images import check_images
from .optimization import TrainingDiverged, check_finite_loss, optimizer_step

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
    state is untouched. The classifier is the final network, not a best one; TrainingDiverged on a
    non-finite loss, or when its validation accuracy is no better than the untrained network's or a
    constant guess of the commonest class (what a diverged network collapses to).
    """
    images = check_images(train_images)
    if images.shape[-1] != 1:
        raise ValueError(f"the digit classifier takes 1-channel images, got {images.shape[-1]} channels")
    labels = _check_labels(train_labels, len(images), "train_labels")
    x = _to_data_scale(images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier(channels=channels, feature_dim=feature_dim)
    untrained = None if val_images is None else accuracy(model, val_images, val_labels)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    for step in range(steps):
        index = torch.randint(len(x), (batch_size,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(_random_shift(x[index], generator)), labels[index])
        check_finite_loss(loss.item(), step + 1, lr=lr)
        optimizer_step(model, optimizer, loss)  # the learning rate is the cosine schedule's
        schedule.step()
    model.eval()
    model.train_info = dict(model.config, seed=seed, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                train_images=len(images), final_train_loss=float(loss.detach()))
    if val_images is not None:
        model.train_info.update(val_images=len(val_images), val_accuracy=accuracy(model, val_images, val_labels))
        log.info("digit classifier: validation accuracy %.4f after %d steps", model.train_info["val_accuracy"], steps)
        _refuse_unimproved(model.train_info["val_accuracy"], untrained, val_labels, steps, lr)
    return model


def _refuse_unimproved(val_accuracy: float, untrained: float, val_labels, steps: int, lr: float) -> None:
    """TrainingDiverged unless training raised the validation accuracy above both the untrained
    network's and that of always guessing the commonest class."""
    guess = float(np.bincount(np.asarray(val_labels, dtype=np.int64), minlength=10).max() / len(val_labels))
    if not val_accuracy > max(untrained, guess):
        raise TrainingDiverged(
            f"the digit classifier never improved: validation accuracy {val_accuracy:.4f} after {steps} steps, "
            f"{untrained:.4f} untrained, {guess:.4f} always guessing the commonest class (lr {lr:g}); "
            "nothing was saved; lower the learning rate if the loss grew, else train longer")


def save_classifier(stem, model: DigitClassifier, meta: dict | None = None):
    """Write `stem.safetensors` (weights) and `stem.json` (architecture, meta and the weights' SHA-256,
    checked by `load_classifier`), each via a temporary name."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights, info = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp))
        digest = file_checksum(tmp)
    write_text(info, json.dumps({"config": model.config, "meta": meta or {}, DIGEST: digest}, indent=2) + "\n")


def load_classifier(stem) -> tuple[DigitClassifier, dict]:
    """Read a classifier written by `save_classifier`; returns (model in eval mode, meta). Executes no code."""
    stem = Path(stem)
    weights, info = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    for path in (weights, info):
        if not path.is_file():
            raise FileNotFoundError(f"classifier file {path} is missing (expected {stem}.safetensors and {stem}.json)")
    record = json.loads(info.read_text())
    check_weights_digest(weights, info, record.get(DIGEST))
    model = DigitClassifier(**record["config"])
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), record.get("meta", {})


# ----------------------------------------------------------------------------
# Inception-v3 as clean-fid's legacy_tensorflow mode runs it.

INCEPTION_FILE = "inception-2015-12-05.pt"
# cleanfid.downloads_helper.inception_url (a test checks they agree; importing clean-fid here costs ~4 s).
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_MODE = "legacy_tensorflow"
INCEPTION_FEATURE_DIM = 2048


def _missing_weights(path: Path, checksum: str | None) -> FileNotFoundError:
    pin = f" (checksum {checksum})" if checksum else ""
    return FileNotFoundError(
        f"Inception weights not found at {path}. This machine does not download them: fetch {INCEPTION_URL}{pin} "
        f"(clean-fid's {INCEPTION_MODE} FID network) and place the file at exactly that path, "
        "or point the config at it.")


def load_inception(weights_path, device="cpu", checksum: str | None = None) -> torch.nn.Module:
    """clean-fid's legacy_tensorflow feature network, built from the local file `weights_path`.

    The file may have any name; nothing is downloaded. A given `checksum` ("sha256:<hex>" or
    "md5:<hex>") is verified before loading, which pins the exact published file: any other file,
    truncated or altered, raises expertmerge.downloads.ChecksumError and is never loaded.
    The file is TorchScript, read by `torch.jit.load` (inside clean-fid's InceptionV3W). Unlike
    `torch.load` of a pickle, that runs no arbitrary Python, only the TorchScript ops the graph
    holds; the checksum still matters, since the graph decides what the features are. Without one, the
    file is trusted on first use (expertmerge.downloads.trusted_checksum: checksums.lock beside it).
    Returns InceptionV3W(resize_inside=True) in eval mode on `device`: call it on float NCHW 0..255.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise _missing_weights(path, checksum)
    if checksum:
        verify_file(path, checksum, name=f"Inception weights {path}")
    else:  # unpinned: the digest recorded when the file was first fetched or used must still hold
        trusted_checksum(path)
    return _clean_fid_network(path).to(device).eval()


def _clean_fid_network(path: Path) -> torch.nn.Module:
    """InceptionV3W(download=False, resize_inside=True) on `path`, as clean-fid's build_feature_extractor makes it.

    InceptionV3W takes a folder and opens `<folder>/inception-2015-12-05.pt`; to honour any file
    name we hand it a temporary folder with a link of that name. torch.jit.load reads the whole
    file at construction, so the folder can go once the model exists.
    """
    from cleanfid.inception_torchscript import InceptionV3W

    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="inception-") as folder:
        # recent PyTorch (2.14 here) marks torch.jit.load deprecated; it is the only reader of this published file.
        warnings.filterwarnings("ignore", message="`torch.jit.load` is deprecated", category=FutureWarning)
        if path.name == INCEPTION_FILE:
            return InceptionV3W(str(path.parent), download=False, resize_inside=True)
        os.symlink(path.resolve(), Path(folder) / INCEPTION_FILE)
        return InceptionV3W(folder, download=False, resize_inside=True)


def _model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC (3 channels) -> what clean-fid's ResizeDataset yields in legacy_tensorflow mode.

    Per image: clean-fid's resizer for the mode (the identity here), then ToTensor(), times 255 when
    the resized image is uint8 (ToTensor scales uint8 to [0, 1]); float32 NCHW, values 0..255.
    """
    import torchvision
    from cleanfid.resize import build_resizer

    resize, to_tensor = build_resizer(INCEPTION_MODE), torchvision.transforms.ToTensor()
    tensors = []
    for image in images:
        resized = resize(image)
        tensors.append(to_tensor(resized) * 255 if resized.dtype == np.uint8 else to_tensor(resized))
    return torch.stack(tensors)


def _rgb(images: torch.Tensor) -> np.ndarray:
    """3-channel uint8 NHWC numpy; 1-channel images are repeated, as PIL's convert("RGB") does in clean-fid."""
    array = images.cpu().numpy()
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def inception_features(model, images_uint8_nhwc, batch_size: int = 200, device="cpu", progress=None) -> np.ndarray:
    """float64 [N, 2048] Inception features of uint8 [N, H, W, 3] images, as clean-fid's legacy_tensorflow mode.

    Images pass through clean-fid's resizer and tensor conversion one at a time and through
    `cleanfid.fid.get_batch_features` (no_grad) in batches; the network sees each image alone (no
    batch statistics), so the result does not depend on `batch_size`. `progress(done, total)`, if
    given, is called after each batch.
    """
    from cleanfid.fid import get_batch_features

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = _rgb(check_images(images_uint8_nhwc))
    feats = []
    for start in range(0, len(images), batch_size):
        batch = _model_input(images[start:start + batch_size])
        feats.append(get_batch_features(batch, model, torch.device(device)))
        if progress is not None:
            progress(start + len(batch), len(images))
    feats = np.concatenate(feats).astype(np.float64)
    if feats.shape != (len(images), INCEPTION_FEATURE_DIM):
        raise ValueError(f"the Inception network returned features of shape {feats.shape}, "
                         f"expected {(len(images), INCEPTION_FEATURE_DIM)}")
    return feats


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


DIGITS_IMAGE_SHAPE = (1, 8, 8)  # (C, H, W): DigitClassifier's convolutions and pooling end in its Linear's size


def check_feature_input(kind: str, shape) -> None:
    """Refuse images of shape (C, H, W) that FID feature network `kind` cannot take, before any sampling."""
    shape = tuple(int(size) for size in shape)
    if kind == "digits-classifier" and shape != DIGITS_IMAGE_SHAPE:
        raise ValueError(f"the digits-classifier FID features take 1x8x8 images (C x H x W), not "
                         f"{'x'.join(map(str, shape))}; use --features-kind inception for other images")
    if kind == "inception" and (len(shape) != 3 or shape[0] not in (1, 3)):
        raise ValueError(f"the Inception FID features take images of 1 or 3 channels, got {'x'.join(map(str, shape))} "
                         f"(C x H x W)")


def load_feature_network(kind: str, path, device="cpu", checksum: str | None = None):
    """images (uint8 NHWC numpy) -> float64 features [N, F], for FID.

    kind "digits-classifier": the demo's classifier at checkpoint stem `path`; "inception": clean-fid's
    legacy_tensorflow Inception-v3 (the TF/EDM protocol) from the weights file at `path`.
    """
    if kind == "digits-classifier":
        model, _ = load_classifier(path)
        return lambda images: features(model, images)
    if kind == "inception":
        model = load_inception(path, device=device, checksum=checksum)
        return lambda images: inception_features(model, images, device=device)
    raise ValueError(f"unknown FID feature network {kind!r}; allowed: {', '.join(FEATURE_NETWORKS)}")
