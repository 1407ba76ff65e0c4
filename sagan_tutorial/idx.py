"""MNIST's idx files: a small header that gives the type and the shape, then the raw data.

``read_idx`` trusts nothing in a file: the header is checked, the data it announces is bounded
(:data:`MAX_IDX_BYTES`), and no more is read or decompressed than the header announces, so a
small gzipped file cannot expand into gigabytes.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from contextlib import nullcontext
from pathlib import Path

import numpy as np

__all__ = ["MAX_IDX_BYTES", "labels_file", "read_idx", "read_idx_pair"]

# The most data an idx file may hold (its header is checked before anything is read): 256 MiB of
# images is about 5 times MNIST's 60,000 training digits, and about 1.4 GB once they are floats.
MAX_IDX_BYTES = 2**28
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CHUNK = 1 << 20  # idx data is read (and decompressed) this many bytes at a time


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in an idx file (the MNIST format), gzipped or not.

    Header: two zero bytes, a type byte (0x08 = unsigned byte, ...), the number of dimensions,
    then each dimension as a big-endian 32-bit integer; the data follows, row-major. The data
    may be at most MAX_IDX_BYTES; no more is read (or decompressed) than the header announces.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            gzipped = file.read(2) == b"\x1f\x8b"  # the gzip magic number
            file.seek(0)
            with gzip.GzipFile(fileobj=file) if gzipped else nullcontext(file) as stream:
                return _parse_idx(stream, path)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"cannot read idx file {path}: {error}") from error


def _parse_idx(stream, path: Path) -> np.ndarray:
    head = stream.read(4)
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_TYPES:
        raise ValueError(
            f"{path} is not an idx file: expected a header 00 00 <type> <ndim>, "
            f"got {head.hex(' ') or 'an empty file'}"
        )
    ndim = head[3]
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(f"corrupt idx file {path}: truncated header ({4 + len(dims)} bytes)")
    shape = struct.unpack(f">{ndim}I", dims)
    dtype = np.dtype(_IDX_TYPES[head[2]])
    expected = math.prod(shape) * dtype.itemsize  # a Python int: no overflow
    says = f"the header says shape {shape} ({expected} bytes of data)"
    if expected > MAX_IDX_BYTES:
        raise ValueError(f"idx file {path}: {says}, more than MAX_IDX_BYTES = {MAX_IDX_BYTES}")
    data = bytearray()
    while len(data) <= expected:  # one byte more than announced is enough to tell
        chunk = stream.read(min(_CHUNK, expected + 1 - len(data)))
        if not chunk:
            break
        data += chunk
    if len(data) != expected:
        found = len(data) if len(data) < expected else f"more than {expected}"
        raise ValueError(f"corrupt idx file {path}: {says}, but {found} bytes follow it")
    return np.frombuffer(data, dtype).reshape(shape)


def labels_file(images: Path) -> Path | None:
    """The labels file beside an images idx file: 'images' -> 'labels', 'idx3' -> 'idx1'."""
    name = images.name.replace("images", "labels").replace("idx3", "idx1")
    if name == images.name:
        return None
    stem = name.removesuffix(".gz")
    for candidate in (images.with_name(stem), images.with_name(stem + ".gz")):
        if candidate.is_file():
            return candidate
        if candidate.exists():
            raise ValueError(f"labels file {candidate} is not a regular file")
    return None


def read_idx_pair(path: Path):
    """uint8 (N, 1, H, W) images, labels (N,) and the number of classes from idx files."""
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8 or 0 in images.shape[1:]:
        raise ValueError(
            f"expected an idx file of unsigned-byte images (N, H, W) with H, W >= 1, got {path} "
            f"with shape {images.shape} and type {images.dtype}"
        )
    labels_path = labels_file(path)
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
