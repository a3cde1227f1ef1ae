"""The digits splits, and the CIFAR-10 tarball and ImageNet32 readers on files made here in the distributed formats."""
import io
import json
import pickle
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from expertmerge.datasets import (SPLITS, digits_to_uint8, load_array_pickle, load_digits_splits, load_splits,
                                  load_splits_meta, read_cifar10_tarball, read_imagenet32, save_splits)
from expertmerge.safe_pickle import RefusedGlobalError


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


# A Python 2 cPickle writer for the few types CIFAR-10's batches hold (protocol 2 opcodes, as the
# official files: U/T strings, K/M/J ints, numpy arrays via numpy.core.multiarray._reconstruct).


def _py2_str(data: bytes) -> bytes:
    return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data


def _py2_int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    return b"J" + struct.pack("<i", n)


def _py2_uint8_array(array: np.ndarray) -> bytes:
    assert array.dtype == np.uint8 and array.ndim == 2
    dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
             + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b")
            + b"\x87R" + b"(" + _py2_int(1) + _py2_int(array.shape[0]) + _py2_int(array.shape[1]) + b"\x86"
            + dtype + b"\x89" + _py2_str(array.tobytes()) + b"tb")


def _py2_value(value) -> bytes:
    if isinstance(value, bytes):
        return _py2_str(value)
    if isinstance(value, int):
        return _py2_int(value)
    if isinstance(value, np.ndarray):
        return _py2_uint8_array(value)
    assert isinstance(value, list)
    return b"]" + (b"(" + b"".join(_py2_value(v) for v in value) + b"e" if value else b"")


def py2_pickle(batch: dict) -> bytes:
    return b"\x80\x02}(" + b"".join(_py2_str(k) + _py2_value(v) for k, v in batch.items()) + b"u."


def cifar_pixel(h, w, c, image):
    return (image * 41 + h * 5 + w * 3 + c * 101) % 256


def cifar_rows(first_image: int, count: int) -> np.ndarray:
    """Rows in CIFAR's documented order: 1024 red (row-major 32x32), then green, then blue."""
    return np.array([[cifar_pixel(h, w, c, first_image + i) for c in range(3) for h in range(32) for w in range(32)]
                     for i in range(count)], dtype=np.uint8)


def cifar_batch(first_image: int, count: int, name: bytes) -> bytes:
    labels = [(first_image + i) % 10 for i in range(count)]
    return py2_pickle({b"data": cifar_rows(first_image, count), b"labels": labels, b"batch_label": name,
                       b"filenames": [b"img_%d.png" % (first_image + i) for i in range(count)]})


def write_cifar_tarball(path, count=2, replace=None):
    members = {f"data_batch_{k}": cifar_batch((k - 1) * count, count, b"training batch %d of 5" % k) for k in range(1, 6)}
    members["test_batch"] = cifar_batch(100, count, b"testing batch 1 of 1")
    members["batches.meta"] = py2_pickle({b"num_cases_per_batch": count, b"num_vis": 3072,
                                          b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer",
                                                           b"dog", b"frog", b"horse", b"ship", b"truck"]})
    members.update(replace or {})
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_py2_pickle_matches_python_unpickling():
    rows = cifar_rows(0, 2)
    loaded = pickle.loads(py2_pickle({b"data": rows, b"labels": [3, 4]}), encoding="bytes")
    assert np.array_equal(loaded[b"data"], rows) and loaded[b"labels"] == [3, 4]


def test_cifar_tarball_layout_and_labels(tmp_path):
    write_cifar_tarball(tmp_path / "cifar-10-python.tar.gz", count=2)
    data = read_cifar10_tarball(tmp_path / "cifar-10-python.tar.gz")
    assert data["train"].shape == (10, 32, 32, 3) and data["test"].shape == (2, 32, 32, 3)
    assert data["train"].dtype == data["test"].dtype == np.uint8 and data["train"].flags.c_contiguous
    for image in (0, 7):  # batch 1 and batch 4: batches concatenated in order
        for h, w, c in ((0, 0, 0), (0, 1, 0), (1, 0, 0), (31, 30, 2), (5, 17, 1)):
            assert data["train"][image, h, w, c] == cifar_pixel(h, w, c, image)
    assert data["test"][1, 3, 4, 2] == cifar_pixel(3, 4, 2, 101)
    assert data["train_labels"].tolist() == [i % 10 for i in range(10)]
    assert data["test_labels"].tolist() == [0, 1] and data["test_labels"].dtype == np.uint8


def test_cifar_python3_protocol2_pickle_is_read():
    rows = cifar_rows(0, 3)
    batch = load_array_pickle(pickle.dumps({b"data": rows, b"labels": [1, 2, 3]}, protocol=2))
    assert np.array_equal(batch[b"data"], rows)


def test_malicious_pickle_in_tarball_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    write_cifar_tarball(tmp_path / "c.tar.gz", replace={"test_batch": evil})
    with pytest.raises(RefusedGlobalError, match=r"os\.system"):
        read_cifar10_tarball(tmp_path / "c.tar.gz")
    assert not marker.exists()
    with pytest.raises(RefusedGlobalError, match=r"builtins\.eval"):
        load_array_pickle(b"\x80\x02cbuiltins\neval\nX\x03\x00\x00\x001+1\x85R.")


def test_cifar_tarball_errors(tmp_path):
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
        pass
    with pytest.raises(ValueError, match="missing data_batch_1"):
        read_cifar10_tarball(tmp_path / "empty.tar.gz")
    bad = py2_pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    write_cifar_tarball(tmp_path / "bad.tar.gz", replace={"data_batch_3": bad})
    with pytest.raises(ValueError, match=r"data_batch_3\[b'data'\] must be a uint8 array \[N, 3072\]"):
        read_cifar10_tarball(tmp_path / "bad.tar.gz")


def _imagenet_images(n):
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_imagenet32_png_tar_and_directory(tmp_path):
    images = _imagenet_images(3)
    folder = tmp_path / "valid_32x32"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:08d}.png")
    with tarfile.open(tmp_path / "valid_32x32.tar", "w") as archive:
        archive.add(folder, arcname="valid_32x32")
    assert np.array_equal(read_imagenet32(tmp_path / "valid_32x32.tar"), images)
    assert np.array_equal(read_imagenet32(folder), images)


def test_imagenet32_npz_layouts(tmp_path):
    images = _imagenet_images(5)
    rows = images.transpose(0, 3, 1, 2).reshape(5, 3072)
    np.savez(tmp_path / "a.npz", x=images)
    assert np.array_equal(read_imagenet32(tmp_path / "a.npz"), images)
    folder = tmp_path / "batches"
    folder.mkdir()
    np.savez(folder / "batch_0.npz", data=rows[:2])
    np.savez(folder / "batch_1.npz", x=images[2:])
    assert np.array_equal(read_imagenet32(folder), images)
    np.savez(tmp_path / "nchw.npz", x=images.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"must be NHWC \[N, 32, 32, 3\] or channel-major rows"):
        read_imagenet32(tmp_path / "nchw.npz")
    np.savez(tmp_path / "float.npz", x=images.astype(np.float32))
    with pytest.raises(ValueError, match="must be uint8"):
        read_imagenet32(tmp_path / "float.npz")
    with pytest.raises(FileNotFoundError):
        read_imagenet32(tmp_path / "missing.tar")
