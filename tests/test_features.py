"""Inception (legacy_tensorflow) features with a stand-in TorchScript network: the real weights cannot be fetched here.

The stand-in has the real file's interface as clean-fid uses it: a `layers` submodule (InceptionV3W
reads `base.layers`) and `forward(img, return_features=False, use_fp16=False, no_output_bias=False)`
that resizes to 299x299, normalises (x - 128) / 128 and returns [N, 2048] features when
return_features is set. It also keeps the last input it received (`seen`), so the test can check
what the network is fed.
"""
import numpy as np
import pytest
import torch

from expertmerge import features as F
from expertmerge.downloads import ChecksumError, file_checksum

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|save|load)` is deprecated:FutureWarning")


class _Layers(torch.nn.Module):
    """[N, 3, 299, 299] -> [N, 2048, 1, 1]: pooled 8x8 colours through a fixed linear map (cheap, content-sensitive)."""

    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(8)
        self.linear = torch.nn.Linear(3 * 8 * 8, 2048)

    def forward(self, x):
        return torch.tanh(self.linear(self.pool(x).flatten(1)))[:, :, None, None]


class _StandIn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _Layers()
        self.output = torch.nn.Linear(2048, 1008)
        self.seen = torch.zeros(0)

    def forward(self, img, return_features: bool = False, use_fp16: bool = False, no_output_bias: bool = False):
        self.seen = img
        x = torch.nn.functional.interpolate(img.to(torch.float32), size=[299, 299], mode="bilinear", align_corners=False)
        features = self.layers.forward((x - 128) / 128).reshape(-1, 2048)
        if return_features:
            return features
        return self.output(features)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A stand-in TorchScript file under a name other than inception-2015-12-05.pt."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "my-inception.pt"
    torch.jit.save(torch.jit.script(_StandIn().eval()), str(path))
    return path


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)


def test_url_matches_clean_fid():
    from cleanfid.downloads_helper import inception_url

    assert F.INCEPTION_URL == inception_url
    assert F.INCEPTION_URL.endswith("/" + F.INCEPTION_FILE)


def test_features_shape_dtype_and_batch_size_invariance(weights, images):
    model = F.load_inception(weights, checksum="sha256:" + file_checksum(weights))
    feats = F.inception_features(model, images, batch_size=200)
    assert feats.shape == (7, 2048) and feats.dtype == np.float64 and np.isfinite(feats).all()
    calls = []
    for batch_size in (1, 3):
        other = F.inception_features(model, images, batch_size=batch_size, progress=lambda d, t: calls.append((d, t)))
        np.testing.assert_allclose(other, feats, rtol=1e-6, atol=1e-6)
    assert calls[-1] == (7, 7) and len(calls) == 7 + 3
    assert not np.allclose(feats[0], feats[1])  # the stand-in does see the images


def test_network_input_matches_clean_fid_pipeline(weights, images, tmp_path):
    """What the network receives, and the features, equal clean-fid's own legacy_tensorflow file pipeline."""
    from cleanfid.fid import get_files_features
    from cleanfid.inception_torchscript import InceptionV3W

    model = F.load_inception(weights)
    ours = F.inception_features(model, images, batch_size=len(images))
    seen = model.base.seen
    # clean-fid's legacy_tensorflow mode feeds float32 NCHW 0..255 at the original size; the network resizes.
    assert seen.dtype == torch.float32 and tuple(seen.shape) == (7, 3, 32, 32)
    assert torch.equal(seen, torch.from_numpy(images).permute(0, 3, 1, 2).float())

    # clean-fid end to end: .npy image files -> ResizeDataset(mode) -> InceptionV3W(resize_inside=True).
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / F.INCEPTION_FILE).symlink_to(weights)
    reference = InceptionV3W(str(folder), download=False, resize_inside=True).eval()
    files = []
    for k, image in enumerate(images):
        files.append(str(tmp_path / f"{k}.npy"))
        np.save(files[-1], image)
    theirs = get_files_features(files, model=reference, num_workers=0, batch_size=len(images),
                                device=torch.device("cpu"), mode="legacy_tensorflow", verbose=False)
    assert torch.equal(reference.base.seen, seen)
    np.testing.assert_array_equal(ours, theirs.astype(np.float64))


def test_grayscale_images_are_repeated_to_rgb(weights, images):
    model = F.load_inception(weights)
    gray = images[..., :1]
    np.testing.assert_array_equal(F.inception_features(model, gray), F.inception_features(model, np.repeat(gray, 3, -1)))


def test_wrong_checksum_raises_before_loading(weights, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the network must not be loaded when the checksum is wrong")

    monkeypatch.setattr(F, "_clean_fid_network", no_load)
    with pytest.raises(ChecksumError, match="my-inception.pt"):
        F.load_inception(weights, checksum="sha256:" + "0" * 64)


def test_missing_file_names_the_path_and_source(tmp_path):
    missing = tmp_path / "nowhere" / F.INCEPTION_FILE
    with pytest.raises(FileNotFoundError) as error:
        F.load_inception(missing, checksum="sha256:" + "0" * 64)
    assert str(missing) in str(error.value) and F.INCEPTION_URL in str(error.value)


def test_file_with_the_standard_name_loads_in_place(weights, images, tmp_path):
    standard = tmp_path / F.INCEPTION_FILE
    standard.write_bytes(weights.read_bytes())
    a = F.inception_features(F.load_inception(standard), images)
    b = F.inception_features(F.load_inception(weights), images)
    np.testing.assert_array_equal(a, b)
