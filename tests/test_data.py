"""Datasets: the embedded digits, image folders and idx files, and their errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from sagan_tutorial.data import (
    SPLITS,
    _mnist5k,
    _mnist5k_path,
    data_fingerprint,
    load_dataset,
    split_indices,
)
from sagan_tutorial.idx import MAX_IDX_BYTES, read_idx


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
        ({"image_size": 2}, ValueError, "image_size must be between 4 and 1024, got 2"),
        ({"image_size": 32.0}, TypeError, "image_size must be an int, got float 32.0"),
        ({"image_size": True}, TypeError, "image_size must be an int, got bool True"),
        ({"channels": 4}, ValueError, "channels must be 1 .grey. or 3 .RGB., got 4"),
        ({"channels": True}, TypeError, "channels must be an int, got bool True"),
        ({"channels": 3.0}, TypeError, "channels must be an int, got float 3.0"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_dataset("mnist5k", **kwargs)
    with pytest.raises(TypeError, match="expected a dataset name or a path, got int"):
        load_dataset(5)


# --- pixel depth: 16-bit, 32-bit and float images are scaled by their range, not clipped

RAMP16 = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
RAMP16_IN_MODEL_RANGE = torch.from_numpy(RAMP16 / 65535 * 2 - 1).float()


@pytest.mark.parametrize(("name", "pixels"), [("a.png", RAMP16), ("b.tif", RAMP16.astype(">u2"))])
def test_folder_16_bit_grey_is_scaled_by_65535(tmp_path, name, pixels):
    Image.fromarray(pixels).save(tmp_path / name)
    with Image.open(tmp_path / name) as image:
        assert image.mode.startswith("I;16")
    data = load_dataset(tmp_path, split="all", image_size=16)
    torch.testing.assert_close(data.images[0, 0], RAMP16_IN_MODEL_RANGE, atol=1e-6, rtol=0)
    small = load_dataset(tmp_path, split="all", image_size=8, channels=3).images[0]
    assert torch.equal(small[0], small[2])  # grey repeated
    assert small.min() >= -1 and small.max() <= 1 and abs(small.mean().item()) < 0.02
    assert small[0, 0].mean() < -0.7 and small[0, -1].mean() > 0.7  # dark top, bright bottom


def test_folder_16_bit_pgm_mode_i(tmp_path):
    (tmp_path / "ramp.pgm").write_bytes(b"P5 16 16 65535\n" + RAMP16.astype(">u2").tobytes())
    with Image.open(tmp_path / "ramp.pgm") as image:
        assert image.mode == "I"
    data = load_dataset(tmp_path, split="all", image_size=16)
    torch.testing.assert_close(data.images[0, 0], RAMP16_IN_MODEL_RANGE, atol=1e-6, rtol=0)
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(
        ValueError,
        match=r"cannot read image .*wide\.tif: 32-bit integer \(mode I\) pixels .* must lie in "
        r"0\.\.65535, got 0 to 70000",
    ):
        load_dataset(tmp_path, split="all")


def test_folder_float_tiff(tmp_path):
    ramp = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "ramp.tif")
    data = load_dataset(tmp_path, split="all", image_size=16)
    torch.testing.assert_close(data.images[0, 0], torch.from_numpy(ramp * 2 - 1), atol=1e-6, rtol=0)
    Image.fromarray(ramp * 255).save(tmp_path / "ramp.tif")
    with pytest.raises(
        ValueError,
        match=r"cannot read image .*ramp\.tif: float \(mode F\) pixels must lie in \[0, 1\], "
        r"got 0 to 255",
    ):
        load_dataset(tmp_path, split="all")
    ramp[0, 0] = np.nan
    Image.fromarray(ramp).save(tmp_path / "ramp.tif")
    with pytest.raises(ValueError, match=r"ramp\.tif: float \(mode F\) pixels must lie in"):
        load_dataset(tmp_path, split="all")


def png_rgb16(path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG (PIL cannot write one): pixels (H, W, 3) uint16."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    height, width, _ = pixels.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16-bit, colour type RGB
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
    )


def test_folder_16_bit_rgb_and_mixed_depths(tmp_path):
    pixels = np.zeros((4, 4, 3), np.uint16)
    pixels[..., 0], pixels[..., 1] = 65535, 32896  # red full, green half (0x8080)
    png_rgb16(tmp_path / "a.png", pixels)
    eight = np.random.default_rng(0).integers(0, 256, (4, 4), dtype=np.uint8)
    save_png(tmp_path / "b.png", eight, "L")
    rgb = load_dataset(tmp_path, split="all", image_size=4, channels=3).images
    assert (rgb[0, 0] == 1).all() and (rgb[0, 2] == -1).all()
    torch.testing.assert_close(rgb[0, 1], torch.full((4, 4), 128 / 127.5 - 1))
    # a 16-bit image in the folder leaves the 8-bit ones exactly as they load alone
    Image.fromarray(RAMP16[:4, :4]).save(tmp_path / "c.png")
    mixed = load_dataset(tmp_path, split="all", image_size=4)
    assert mixed.source == str(tmp_path) and len(mixed) == 3
    (tmp_path / "a.png").unlink()
    (tmp_path / "c.png").unlink()
    alone = load_dataset(tmp_path, split="all", image_size=4)
    order = split_indices(np.zeros(3), "all").tolist()
    assert torch.equal(mixed.images[order.index(1)], alone.images[0])
    torch.testing.assert_close(
        mixed.images[order.index(2), 0], RAMP16_IN_MODEL_RANGE[:4, :4], atol=1e-6, rtol=0
    )


# --- folder discovery: links to folders are followed, loops are not, hidden names are skipped


def symlink(link, target):
    try:
        os.symlink(target, link, target_is_directory=target.is_dir())
    except (OSError, NotImplementedError) as error:
        pytest.skip(f"cannot make symbolic links here: {error}")


def test_folder_follows_links_to_folders_once(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for i in range(3):
        save_png(elsewhere / "cats" / f"{i}.png", np.zeros((4, 4)), "L")
    save_png(elsewhere / "loose.png", np.full((4, 4), 255), "L")
    for i in range(2):
        save_png(data / "dogs" / f"{i}.png", np.full((4, 4), 255), "L")
    symlink(data / "cats", elsewhere / "cats")  # a class folder that is a link
    symlink(data / "dogs" / "loop", data)  # a loop
    symlink(data / "cats_again", elsewhere / "cats")  # a second way to the same folder
    symlink(data / "dogs" / "link.png", elsewhere / "loose.png")  # a link to an image
    symlink(data / "dogs" / "gone.png", elsewhere / "missing.png")  # a broken link
    save_png(data / "dogs" / ".hidden.png", np.zeros((4, 4)), "L")
    save_png(data / "dogs" / ".cache" / "x.png", np.zeros((4, 4)), "L")
    save_png(data / ".trash" / "y.png", np.zeros((4, 4)), "L")
    every = load_dataset(data, split="all", image_size=4)
    assert every.num_classes == 2  # cats, dogs: cats_again adds nothing
    assert torch.bincount(every.labels).tolist() == [3, 3]
    assert (every.images[every.labels == 0] == -1).all()
    assert (every.images[every.labels == 1] == 1).all()
    assert data_fingerprint(data)["files"] == 6


# --- idx files: the header is bounded, and no more than it announces is decompressed


def test_idx_gzip_bomb_is_not_decompressed(tmp_path):
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip
    zeros = bytes(1 << 20)
    header = idx_bytes(np.zeros((1, 4, 4), np.uint8))
    bomb = packer.compress(header) + b"".join(packer.compress(zeros) for _ in range(32))
    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    path.write_bytes(bomb + packer.flush())  # 32 MiB of zeros after the 16 announced bytes
    assert path.stat().st_size < 64 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(
            ValueError,
            match=r"corrupt idx file .*bomb-images-idx3-ubyte\.gz: the header says shape "
            r"\(1, 4, 4\) \(16 bytes of data\), but more than 16 bytes follow it",
        ):
            load_dataset(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


def test_idx_header_is_bounded(tmp_path, monkeypatch):
    huge = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**16, 2**16, 1) + bytes(10)
    path = write(tmp_path / "huge-images-idx3-ubyte.gz", huge, gz=True)
    with pytest.raises(
        ValueError,
        match=r"huge-images-idx3-ubyte\.gz: the header says shape \(65536, 65536, 1\) "
        rf"\(4294967296 bytes of data\), more than MAX_IDX_BYTES = {MAX_IDX_BYTES}$",
    ):
        load_dataset(path)
    n = 2**32 - 1  # sizes are Python ints: np.prod of this shape overflows int64
    path = write(tmp_path / "f", bytes([0, 0, 0x0E, 3]) + struct.pack(">3I", n, n, n), gz=False)
    with pytest.raises(ValueError, match=rf"\({n**3 * 8} bytes of data\), more than"):
        read_idx(path)
    monkeypatch.setattr("sagan_tutorial.idx.MAX_IDX_BYTES", 16)
    path = write(tmp_path / "g", idx_bytes(np.ones((1, 4, 4), np.uint8)), gz=False)
    assert read_idx(path).tolist() == np.ones((1, 4, 4)).tolist()  # at the limit
    path = write(tmp_path / "h", idx_bytes(np.ones((1, 1, 17), np.uint8)), gz=False)
    with pytest.raises(ValueError, match=r"\(17 bytes of data\), more than MAX_IDX_BYTES = 16"):
        read_idx(path)


# --- data_fingerprint: file names and sizes, found as the loader finds them


def fingerprint_of(root, files):
    entries = sorted([p.relative_to(root).as_posix(), p.stat().st_size] for p in files)
    return {
        "files": len(entries),
        "bytes": sum(size for _, size in entries),
        "sha256": hashlib.sha256(json.dumps(entries).encode()).hexdigest(),
    }


def test_data_fingerprint_folder(tmp_path):
    for name, value in (("cats", 0), ("dogs", 255)):
        for i in range(2):
            save_png(tmp_path / name / f"{i}.png", np.full((6, 6), value), "L")
    images = sorted(tmp_path.rglob("*.png"))
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    save_png(tmp_path / "cats" / ".hidden.png", np.zeros((6, 6)), "L")
    first = data_fingerprint(tmp_path)
    assert first == {"source": str(tmp_path), **fingerprint_of(tmp_path, images)}
    assert first["files"] == 4 == len(load_dataset(tmp_path, split="all"))
    assert data_fingerprint(str(tmp_path)) == first  # the same inputs, the same dict
    assert len(first["sha256"]) == 64
    extra = tmp_path / "dogs" / "2.png"
    save_png(extra, np.full((6, 6), 255), "L")
    added = data_fingerprint(tmp_path)
    assert (added["files"], added["bytes"]) == (5, first["bytes"] + extra.stat().st_size)
    extra.unlink()
    assert data_fingerprint(tmp_path) == first  # removed again
    save_png(images[0], np.random.default_rng(0).integers(0, 256, (6, 6)), "L")  # resized
    resized = data_fingerprint(tmp_path)
    assert resized["files"] == 4 and resized["bytes"] != first["bytes"]
    assert resized["sha256"] != first["sha256"]
    save_png(images[0], np.full((6, 6), 0), "L")
    images[0].rename(tmp_path / "cats" / "9.png")
    renamed = data_fingerprint(tmp_path)
    assert (renamed["files"], renamed["bytes"]) == (4, first["bytes"])
    assert renamed["sha256"] != first["sha256"]
    # no image is read: a broken one is counted, while the loader refuses it
    (tmp_path / "cats" / "9.png").write_bytes(b"\x89PNG not really")
    assert data_fingerprint(tmp_path)["files"] == 4
    with pytest.raises(ValueError, match="cannot read image"):
        load_dataset(tmp_path)


def test_data_fingerprint_idx_mnist5k_and_errors(tmp_path):
    images = write(tmp_path / "t-images-idx3-ubyte", idx_bytes(np.zeros((3, 4, 4), np.uint8)), 0)
    assert data_fingerprint(images) == {"source": str(images), **fingerprint_of(tmp_path, [images])}
    labels = write(tmp_path / "t-labels-idx1-ubyte.gz", idx_bytes(np.zeros(3, np.uint8)), gz=True)
    both = data_fingerprint(images)
    assert both == {"source": str(images), **fingerprint_of(tmp_path, [images, labels])}
    assert both["files"] == 2
    embedded = _mnist5k_path()
    assert embedded.name == "mnist_5k.csv.gz"
    assert data_fingerprint("mnist5k") == {
        "source": "mnist5k",
        **fingerprint_of(embedded.parent, [embedded]),
    }
    assert data_fingerprint("mnist5k")["bytes"] > 1_000_000
    with pytest.raises(ValueError, match="no such file or folder"):
        data_fingerprint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found in folder"):
        data_fingerprint(tmp_path / "empty")
    with pytest.raises(TypeError, match="expected a dataset name or a path, got int"):
        data_fingerprint(5)


class FsPath:
    """An os.PathLike that is neither a str nor a Path, and whose str() is not its path."""

    def __init__(self, path):
        self.path = path

    def __fspath__(self):
        return os.fspath(self.path)

    def __str__(self):
        return "mnist5k"


def test_any_path_like(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((4, 4)), "L")
    data = load_dataset(FsPath(tmp_path), split="all", image_size=4)
    assert len(data) == 1 and data.source == str(tmp_path)
    assert len(load_dataset(FsPath(os.fsencode(tmp_path)), split="all", image_size=4)) == 1
    assert data_fingerprint(FsPath(tmp_path)) == data_fingerprint(tmp_path)
    path = write(tmp_path / "x-images-idx3-ubyte", idx_bytes(np.ones((2, 4, 4), np.uint8)), 0)
    assert read_idx(FsPath(path)).shape == (2, 4, 4)
    assert len(load_dataset(FsPath(path), split="all", image_size=4)) == 2
