"""Image grids written to files: what is refused before anything is written."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sagan_tutorial.grids import check_image_path, save_grid


def test_save_grid_writes_the_tiles(tmp_path):
    images = torch.linspace(-1, 1, 6 * 4 * 4).reshape(6, 1, 4, 4)
    path = save_grid(images, tmp_path / "grid.png", 3)
    assert Image.open(path).size == (3 * 4 + 2 * 2, 2 * 4 + 1 * 2)


def test_non_finite_images_are_not_written(tmp_path):
    images = torch.zeros(4, 1, 4, 4)
    images[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"1 of 64 pixel values are NaN or infinite: not writing"):
        save_grid(images, tmp_path / "grid.png", 2)
    assert not list(tmp_path.iterdir())


def test_a_file_in_the_way_of_the_folder_is_named(tmp_path):
    (tmp_path / "a.jpg").write_text("an image, not a folder")
    with pytest.raises(ValueError, match=r"cannot write .*x.png: .*a.jpg is not a folder"):
        check_image_path(tmp_path / "a.jpg" / "b" / "x.png")


def test_bad_names_and_existing_files(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        check_image_path(tmp_path)
    with pytest.raises(ValueError, match=r"ending in .png, .jpg"):
        check_image_path(tmp_path / "grid.txt")
    (tmp_path / "grid.png").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        check_image_path(tmp_path / "grid.png")
    with pytest.raises(ValueError, match=r"expected images of shape \(N, C, S, S\), got \(4, 4\)"):
        save_grid(torch.zeros(4, 4), tmp_path / "x.png", 2)
