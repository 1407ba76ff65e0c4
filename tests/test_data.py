"""Datasets: the embedded digits, image folders and idx files, and their errors."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from sagan_tutorial.data import SPLITS, _mnist5k, load_dataset, read_idx, split_indices


@pytest.fixture(scope="module")
def mnist():
    return {split: load_dataset("mnist5k", split=split) for split in ("train", "test", "all")}


def test_mnist5k_shapes_ranges_labels(mnist):
    train, test, every = mnist["train"], mnist["test"], mnist["all"]
    assert (len(train), len(test), len(every)) == (4000, 1000, 5000)
    image, label = train[0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and label.dim() == 0
    assert every.images.min() == -1.0 and every.images.max() == 1.0
    assert every.num_classes == 10
    assert torch.bincount(train.labels).tolist() == [400] * 10  # stratified
    assert torch.bincount(test.labels).tolist() == [100] * 10
    # padded 28 -> 32 with background: the 2-pixel border is black everywhere
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (every.images[:, 0, border] == -1.0).all()


def test_mnist5k_split_is_disjoint_fixed_and_complete(mnist):
    train, test, every = mnist["train"], mnist["test"], mnist["all"]
    _, source_labels = _mnist5k()  # in file order: sorted by digit
    train_index, test_index, all_index = (split_indices(source_labels, s) for s in SPLITS)
    assert not set(train_index) & set(test_index)
    assert sorted([*train_index, *test_index]) == sorted(all_index) == list(range(5000))
    for data, index in ((train, train_index), (test, test_index), (every, all_index)):
        assert data.labels.tolist() == source_labels[index].tolist()
    assert set(train.labels[:50].tolist()) == set(range(10))  # shuffled: the first hold every digit
    # and by content: no digit of the test split appears in the training split
    train_rows = {x.numpy().tobytes() for x in train.images}
    assert not any(x.numpy().tobytes() in train_rows for x in test.images)
    again = load_dataset("mnist5k", split="test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def test_mnist5k_resized_and_rgb(mnist):
    big = load_dataset("mnist5k", split="test", image_size=64, channels=3)
    assert big.images.shape == (1000, 3, 64, 64)
    assert big.images.min() >= -1.0 and big.images.max() <= 1.0
    assert torch.equal(big.images[:, 0], big.images[:, 2])  # grey repeated
    assert torch.equal(big.labels, mnist["test"].labels)
    # the same digit: averaging 2x2 blocks of the 64 px image gives back the 32 px one, roughly
    small = torch.nn.functional.avg_pool2d(big.images[:, :1], 2)
    assert (small - mnist["test"].images).abs().mean() < 0.05


def save_png(path, array, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode=mode).save(path)


def test_folder_flat_rgb_to_grey_crop_resize(tmp_path):
    # 40 wide x 20 high: centre crop keeps columns 10..29, which are red; the sides are blue
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :, 2] = 255
    image[:, 10:30] = (255, 0, 0)
    save_png(tmp_path / "a.png", image, "RGB")
    save_png(tmp_path / "b.png", np.full((8, 8), 255), "L")
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_dataset(tmp_path, split="all", image_size=16, channels=1)
    assert data.images.shape == (2, 1, 16, 16)
    assert data.num_classes == 0 and data.labels.tolist() == [0, 0]
    red_as_grey = round(255 * 299 / 1000) / 127.5 - 1  # ITU-R 601 luma of pure red
    assert data.images[0].flatten().tolist() == pytest.approx([red_as_grey] * 256, abs=1 / 127.5)
    assert (data.images[1] == 1.0).all()
    rgb = load_dataset(tmp_path, split="all", image_size=16, channels=3)
    assert rgb.images.shape == (2, 3, 16, 16)
    assert (rgb.images[0, 0] == 1.0).all() and (rgb.images[0, 2] == -1.0).all()  # red, no blue


def test_folder_class_subfolders_and_split(tmp_path):
    for name, value in (("cats", 0), ("dogs", 255)):
        for i in range(5):
            save_png(tmp_path / name / f"{i}.png", np.full((6, 6), value), "L")
    every = load_dataset(tmp_path, split="all", image_size=8)
    assert every.num_classes == 2
    assert torch.bincount(every.labels).tolist() == [5, 5]
    assert (every.images[every.labels == 0] == -1).all()
    assert (every.images[every.labels == 1] == 1).all()
    train, test = (load_dataset(tmp_path, split=s, image_size=8) for s in ("train", "test"))
    assert torch.bincount(train.labels).tolist() == [4, 4]
    assert torch.bincount(test.labels).tolist() == [1, 1]


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file or folder"):
        load_dataset(tmp_path / "missing")
    with pytest.raises(ValueError, match=f"no images found in folder {tmp_path}"):
        load_dataset(tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        load_dataset(tmp_path, split="all")
    bad.unlink()
    save_png(tmp_path / "top.png", np.zeros((4, 4)), "L")
    save_png(tmp_path / "ones" / "a.png", np.zeros((4, 4)), "L")
    with pytest.raises(ValueError, match=r"both directly \(top\.png, \.\.\.\) and in class sub"):
        load_dataset(tmp_path)


def test_empty_split(tmp_path):
    save_png(tmp_path / "only.png", np.zeros((4, 4)), "L")
    assert len(load_dataset(tmp_path, split="train", image_size=4)) == 1
    with pytest.raises(ValueError, match=r"split 'test' of .* is empty \(1 images in all\)"):
        load_dataset(tmp_path, split="test", image_size=4)


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, payload, gz):
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (25, 28, 28), dtype=np.uint8)
    labels = np.arange(25, dtype=np.uint8) % 5
    suffix = ".gz" if gz else ""
    path = write(tmp_path / f"train-images-idx3-ubyte{suffix}", idx_bytes(images), gz)
    write(tmp_path / f"train-labels-idx1-ubyte{suffix}", idx_bytes(labels), gz)
    assert np.array_equal(read_idx(path), images)
    data = load_dataset(path, split="all")
    order = split_indices(labels, "all")  # the fixed shuffled order of every split
    assert data.num_classes == 5 and data.labels.tolist() == labels[order].tolist()
    assert data.images.shape == (25, 1, 32, 32)
    # 28x28 is padded to 32x32 like mnist5k: the centre holds the pixels unchanged
    expected = torch.from_numpy(images[order]) / 127.5 - 1
    torch.testing.assert_close(data.images[:, 0, 2:30, 2:30], expected)
    assert len(load_dataset(path, split="test")) == 5  # one of each label


def test_idx_without_labels_and_other_sizes(tmp_path):
    images = np.full((3, 10, 12), 255, np.uint8)
    path = write(tmp_path / "digits.idx", idx_bytes(images), gz=False)
    data = load_dataset(path, split="all", image_size=8, channels=3)
    assert data.num_classes == 0 and data.labels.tolist() == [0, 0, 0]
    assert data.images.shape == (3, 3, 8, 8)
    torch.testing.assert_close(data.images, torch.ones(3, 3, 8, 8))  # cropped 10x10, resized


def test_idx_corrupt(tmp_path):
    images = np.zeros((4, 28, 28), np.uint8)
    truncated = write(tmp_path / "a-images-idx3-ubyte", idx_bytes(images)[:-10], gz=False)
    with pytest.raises(
        ValueError,
        match=r"corrupt idx file .*a-images-idx3-ubyte: the header says "
        r"shape \(4, 28, 28\) \(3136 bytes of data\), but 3126",
    ):
        load_dataset(truncated)
    not_idx = write(tmp_path / "b-images-idx3-ubyte", b"\x01\x02\x03\x04rest", gz=False)
    with pytest.raises(ValueError, match=r"b-images-idx3-ubyte is not an idx file: .*got 01 02 03"):
        load_dataset(not_idx)
    bad_gzip = tmp_path / "c-images-idx3-ubyte.gz"
    bad_gzip.write_bytes(gzip.compress(idx_bytes(images))[:30])
    with pytest.raises(ValueError, match=r"cannot read idx file .*c-images-idx3-ubyte\.gz"):
        load_dataset(bad_gzip)
    good = write(tmp_path / "d-images-idx3-ubyte", idx_bytes(images), gz=False)
    write(tmp_path / "d-labels-idx1-ubyte", idx_bytes(np.zeros(3, np.uint8)), gz=False)
    with pytest.raises(ValueError, match=r"d-labels-idx1-ubyte should hold 4 integer labels"):
        load_dataset(good)
    floats = idx_bytes(np.zeros((2, 4, 4), np.float32), 0x0D)
    floats = write(tmp_path / "e-images", floats, gz=False)
    with pytest.raises(ValueError, match="expected an idx file of unsigned-byte images"):
        load_dataset(floats)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"split": "val"}, ValueError, r"split must be one of \('train', 'test', 'all'\), got 'v"),
        ({"image_size": 2}, ValueError, "image_size must be an int of at least 4, got 2"),
        ({"channels": 4}, ValueError, "channels must be 1 .grey. or 3 .RGB., got 4"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_dataset("mnist5k", **kwargs)
    with pytest.raises(TypeError, match="expected a dataset name or a path, got int"):
        load_dataset(5)
