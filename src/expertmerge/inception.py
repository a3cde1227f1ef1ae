"""Inception-v3 features for FID in clean-fid's `legacy_tensorflow` mode (the TF / EDM FID protocol).

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

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .downloads import verify_file
from .images import check_images

INCEPTION_FILE = "inception-2015-12-05.pt"
# cleanfid.downloads_helper.inception_url (a test checks they agree; importing clean-fid here costs ~4 s).
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
MODE = "legacy_tensorflow"
FEATURE_DIM = 2048


def _missing_weights(path: Path, checksum: str | None) -> FileNotFoundError:
    pin = f" (checksum {checksum})" if checksum else ""
    return FileNotFoundError(
        f"Inception weights not found at {path}. This machine does not download them: fetch {INCEPTION_URL}{pin} "
        f"(clean-fid's {MODE} FID network) and place the file at exactly that path, or point the config at it.")


def load_inception(weights_path, device="cpu", checksum: str | None = None) -> torch.nn.Module:
    """clean-fid's legacy_tensorflow feature network, built from the local file `weights_path`.

    The file may have any name; nothing is downloaded. A given `checksum` ("sha256:<hex>" or
    "md5:<hex>") is verified before loading, which pins the exact published file: any other file,
    truncated or altered, raises expertmerge.downloads.ChecksumError and is never loaded.
    The file is TorchScript, read by `torch.jit.load` (inside clean-fid's InceptionV3W). Unlike
    `torch.load` of a pickle, that runs no arbitrary Python, only the TorchScript ops the graph
    holds; the checksum still matters, since the graph decides what the features are.
    Returns InceptionV3W(resize_inside=True) in eval mode on `device`: call it on float NCHW 0..255.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise _missing_weights(path, checksum)
    if checksum:
        verify_file(path, checksum, name=f"Inception weights {path}")
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

    resize, to_tensor = build_resizer(MODE), torchvision.transforms.ToTensor()
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
    if feats.shape != (len(images), FEATURE_DIM):
        raise ValueError(f"the Inception network returned features of shape {feats.shape}, expected {(len(images), FEATURE_DIM)}")
    return feats
