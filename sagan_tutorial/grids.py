"""Image grids: many images tiled into one, as a tensor and as an image file.

The trainer writes its sample grids with :func:`save_grid`, the ``sample`` command too; the
book's figures draw them with :func:`sagan_tutorial.viz.plot_images`. Nothing here needs
matplotlib.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image

from ._checks import check_int
from .files import atomic_write

__all__ = ["check_image_path", "image_grid", "save_grid"]


def image_grid(images: torch.Tensor, *, nrow: int, pad: int = 1) -> torch.Tensor:
    """Tile (K, H, W) or (K, C, H, W) images into one (H', W') or (C, H', W') image.

    Images are placed row by row, ``nrow`` per row, separated by ``pad`` pixels of 0; missing
    places in the last row stay 0.
    """
    if not isinstance(images, torch.Tensor) or images.dim() not in (3, 4):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images of shape (K, H, W) or (K, C, H, W), got {got}")
    check_int("nrow", nrow, minimum=1)
    squeeze = images.dim() == 3
    if squeeze:
        images = images.unsqueeze(1)  # K x 1 x H x W
    rows = -(-images.shape[0] // nrow)
    blank = rows * nrow - images.shape[0]
    images = F.pad(images, (0, pad, 0, pad))  # K x C x (H + pad) x (W + pad)
    images = torch.cat([images, images.new_zeros(blank, *images.shape[1:])])
    grid = rearrange(images, "(r c) ch h w -> ch (r h) (c w)", c=nrow)
    grid = grid[:, : grid.shape[1] - pad, : grid.shape[2] - pad]  # no padding after the last
    return grid[0] if squeeze else grid


def check_image_path(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """``path`` if an image can be written there: a file name with an image extension that
    Pillow writes (.png, .jpg, ...), not a folder, not an existing file unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder: expected an image file name such as {path / 'samples.png'}"
        )
    if Image.registered_extensions().get(path.suffix.lower()) not in Image.SAVE:
        raise ValueError(f"expected an image file name ending in .png, .jpg or similar, got {path}")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} exists: pass --overwrite to replace it")
    for parent in path.parents:  # the nearest existing one must be a folder
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise ValueError(f"cannot write {path}: {parent} is not a folder")
            break
    return path


def save_grid(
    images: torch.Tensor, path: str | os.PathLike, columns: int, *, overwrite: bool = True
) -> Path:
    """Tile images (N, C, S, S) in [-1, 1] into one image file, ``columns`` per row, 2 px apart.

    The file is written atomically (the old one, if any, stays whole until the new one is).
    """
    path = check_image_path(path, overwrite=overwrite)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images of shape (N, C, S, S), got {got}")
    bad = int((~torch.isfinite(images.detach())).sum())
    if bad:
        raise ValueError(
            f"{bad} of {images.numel()} pixel values are NaN or infinite: not writing {path}"
        )
    grid = image_grid((images.detach().float().cpu().clamp(-1, 1) + 1) / 2, nrow=columns, pad=2)
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H', W', C)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format=Image.registered_extensions()[path.suffix.lower()])
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, buffer.getbuffer(), overwrite=overwrite)
