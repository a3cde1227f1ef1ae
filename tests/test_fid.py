import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from expertmerge import features as F, frechet


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    images = np.round(data.images * 255 / 16).astype(np.uint8)[..., None]  # DESIGN.md section 6
    return train_test_split(images, data.target, test_size=0.2, random_state=0, stratify=data.target)


@pytest.fixture(scope="module")
def classifier(digits):
    x_train, x_test, y_train, y_test = digits
    return F.train_classifier(x_train, y_train, x_test, y_test, seed=0, steps=250)


def random_stats(dim, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    return rng.normal(size=dim), a @ a.T / dim + 0.1 * np.eye(dim)


def test_frechet_identical_is_zero_and_symmetric():
    a, b = random_stats(6, 0), random_stats(6, 1)
    assert abs(frechet.fid(a, a)) < 1e-8
    assert frechet.fid(a, b) == pytest.approx(frechet.fid(b, a), rel=1e-8)
    assert frechet.fid(a, b) > 0


def test_frechet_closed_form_diagonal():
    # d^2 = |mu_a - mu_b|^2 + sum_i (sqrt(v_a,i) - sqrt(v_b,i))^2 for diagonal covariances.
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 1.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet.fid((mu_a, np.diag(var_a)), (mu_b, np.diag(var_b))) == pytest.approx(expected, rel=1e-10)


def test_fid_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="feature size"):
        frechet.fid(random_stats(3, 0), random_stats(4, 0))


def test_statistics_match_numpy_and_roundtrip(tmp_path):
    feats = np.random.default_rng(0).normal(size=(50, 4))
    mu, sigma = frechet.statistics(feats)
    np.testing.assert_allclose(mu, feats.mean(0))
    np.testing.assert_allclose(sigma, np.cov(feats.T))
    frechet.save_statistics(tmp_path / "ref.npz", mu, sigma, num_images=50)
    loaded = frechet.load_statistics(tmp_path / "ref.npz")
    np.testing.assert_array_equal(loaded[0], mu)
    np.testing.assert_array_equal(loaded[1], sigma)
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"]
    with pytest.raises(ValueError, match="N >= 2"):
        frechet.statistics(feats[:1])


def test_classifier_accuracy(digits, classifier):
    _, x_test, _, y_test = digits
    assert F.accuracy(classifier, x_test, y_test) > 0.9
    assert classifier.train_info["val_accuracy"] == F.accuracy(classifier, x_test, y_test)


def test_fid_train_vs_test_small_next_to_noise(digits, classifier):
    x_train, x_test, _, _ = digits
    model = classifier
    reference = frechet.statistics(F.features(model, x_train))
    noise = np.random.default_rng(0).integers(0, 256, size=x_test.shape, dtype=np.uint8)
    fid_test = frechet.fid(reference, frechet.statistics(F.features(model, x_test)))
    fid_noise = frechet.fid(reference, frechet.statistics(F.features(model, noise)))
    assert 0 < fid_test < 0.05 * fid_noise


def test_features_batch_size_invariant(digits, classifier):
    model = classifier
    images = digits[1][:37]
    a = F.features(model, images, batch_size=37)
    b = F.features(model, images, batch_size=5)
    c = np.concatenate([F.features(model, images[i:i + 1], batch_size=1) for i in range(len(images))])
    assert a.dtype == np.float64 and a.shape == (37, model.config["feature_dim"])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_classifier_save_load_roundtrip(tmp_path, digits, classifier):
    model, meta = classifier, {"test_accuracy": 0.5}
    F.save_classifier(tmp_path / "clf", model, meta)
    loaded, loaded_meta = F.load_classifier(tmp_path / "clf")
    assert loaded_meta == meta
    images = digits[1][:10]
    np.testing.assert_array_equal(F.features(model, images), F.features(loaded, images))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.json", "clf.safetensors"]


def test_training_is_deterministic_and_leaves_global_rng(digits):
    x_train, _, y_train, _ = digits
    state = torch.get_rng_state()
    a = F.train_classifier(x_train[:200], y_train[:200], seed=3, steps=3)
    b = F.train_classifier(x_train[:200], y_train[:200], seed=3, steps=3)
    assert torch.equal(state, torch.get_rng_state())
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_seed_spread_of_disjoint_groups(digits, classifier):
    x_train, x_test, _, _ = digits
    model = classifier
    reference = frechet.statistics(F.features(model, x_train))
    groups = frechet.split_seed_groups(F.features(model, x_test), 3)
    spread = frechet.seed_spread(reference, groups)
    assert spread["group_size"] == len(x_test) // 3 and len(spread["fids"]) == 3
    assert spread["mean"] == pytest.approx(np.mean(spread["fids"]))
    assert spread["std"] == pytest.approx(np.std(spread["fids"], ddof=1))
    with pytest.raises(ValueError, match="equal size"):
        frechet.seed_spread(reference, [groups[0], groups[1][:-1]])


def test_bad_inputs_are_named(digits):
    x_train, _, y_train, _ = digits
    with pytest.raises(TypeError, match="uint8"):
        F.features(lambda b: b, x_train.astype(np.float32))
    with pytest.raises(ValueError, match="train_labels"):
        F.train_classifier(x_train, y_train[:-1], steps=1)
    with pytest.raises(ValueError, match="allowed: digits-classifier"):
        F.feature_extractor("inception")


@pytest.mark.parametrize("samples", [500, 40])  # full-rank covariances, and rank-deficient ones (N < F)
def test_frechet_distance_equals_clean_fids(samples):
    from cleanfid.fid import frechet_distance

    rng = np.random.default_rng(samples)
    mixing = rng.standard_normal((64, 64))
    a = frechet.statistics(rng.standard_normal((samples, 64)) @ mixing)
    b = frechet.statistics(rng.standard_normal((samples, 64)) @ mixing + 0.3)
    with warnings.catch_warnings():  # clean-fid passes sqrtm's `disp`, deprecated in SciPy 1.17
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = float(frechet_distance(*a, *b))
    assert frechet.fid(a, b) == pytest.approx(expected, rel=1e-6)
    reference = frechet.FrechetReference(*b)
    assert reference.distance(a) == pytest.approx(expected, rel=1e-6)
    assert abs(reference.distance(b)) < 1e-7 * np.trace(b[1])  # zero up to rounding (sqrt of ~0 eigenvalues)


def test_fid_with_spread_equals_separate_computations():
    rng = np.random.default_rng(0)
    feats = (rng.standard_normal((1003, 16)) @ rng.standard_normal((16, 16)) + 5).astype(np.float32)  # 3 left over
    reference = frechet.statistics(rng.standard_normal((500, 16)) * 2)
    result = frechet.fid_with_spread(reference, feats, 4)
    assert result["fid"] == pytest.approx(frechet.fid(frechet.statistics(feats), reference), rel=1e-9)
    spread = frechet.seed_spread(reference, frechet.split_seed_groups(feats, 4))
    np.testing.assert_allclose(result["fids"], spread["fids"], rtol=1e-9)
    assert result["std"] == pytest.approx(spread["std"], rel=1e-9) and result["group_size"] == 250
