import json

import numpy as np
import pytest

from expertmerge.datasets import SPLITS, digits_to_uint8, load_digits_splits, load_splits, load_splits_meta, save_splits


@pytest.fixture(scope="module")
def splits():
    return load_digits_splits(seed=0, val_fraction=0.1, test_fraction=0.15)


def test_level_mapping_is_round_v_times_255_over_16():
    levels = np.arange(17)
    assert digits_to_uint8(levels).tolist() == [round(v * 255 / 16) for v in levels]
    assert digits_to_uint8(levels).dtype == np.uint8 and digits_to_uint8(levels)[-1] == 255


def test_split_sizes_dtypes_and_shapes(splits):
    sizes = {name: len(splits[name]) for name in SPLITS}
    assert sizes == {"train": 1797 - 180 - 270, "val": 180, "test": 270}
    for name in SPLITS:
        assert splits[name].dtype == np.uint8 and splits[name].shape[1:] == (8, 8, 1)
        assert splits[f"{name}_labels"].shape == (sizes[name],) and splits[f"{name}_labels"].max() <= 9
        assert splits[f"{name}_indices"].dtype == np.int64


def test_splits_are_disjoint_cover_everything_and_match_sklearn(splits):
    from sklearn.datasets import load_digits

    indices = [set(splits[f"{name}_indices"].tolist()) for name in SPLITS]
    assert sum(map(len, indices)) == 1797 and set.union(*indices) == set(range(1797))
    digits = load_digits()
    test_rows = splits["test_indices"]
    expected = np.rint(digits.images[test_rows] * 255 / 16).astype(np.uint8)[..., None]
    assert np.array_equal(splits["test"], expected)
    assert np.array_equal(splits["test_labels"], digits.target[test_rows])


def test_splits_are_deterministic_and_depend_on_seed(splits):
    again = load_digits_splits(seed=0)
    other = load_digits_splits(seed=1)
    assert all(np.array_equal(splits[key], again[key]) for key in splits)
    assert not np.array_equal(splits["test_indices"], other["test_indices"])


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError, match="val_fraction"):
        load_digits_splits(val_fraction=0.0)
    with pytest.raises(ValueError, match="for training"):
        load_digits_splits(val_fraction=0.6, test_fraction=0.5)


def test_save_and_load_round_trip(tmp_path, splits):
    path = save_splits(tmp_path / "digits" / "splits.npz", splits, {"source": "sklearn digits", "seed": 0})
    loaded = load_splits(path)
    assert set(loaded) == set(splits)
    assert all(np.array_equal(loaded[key], splits[key]) and loaded[key].dtype == splits[key].dtype for key in splits)
    record = load_splits_meta(path)
    assert record["meta"]["seed"] == 0 and record["sizes"]["test"] == 270
    assert record["indices"]["val"] == splits["val_indices"].tolist()
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["splits.json", "splits.npz"]  # no temp files


def test_load_rejects_missing_garbled_or_inconsistent_files(tmp_path, splits):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_splits(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match=".npz"):
        save_splits(tmp_path / "splits.bin", splits)
    garbled = tmp_path / "garbled.npz"
    garbled.write_bytes(b"not a zip file")
    garbled.with_suffix(".json").write_text("{}")
    with pytest.raises(ValueError, match="cannot read splits"):
        load_splits(garbled)
    path = save_splits(tmp_path / "splits.npz", splits)
    record = json.loads(path.with_suffix(".json").read_text())
    record["sizes"]["test"] = 1
    path.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="JSON records"):
        load_splits(path)
