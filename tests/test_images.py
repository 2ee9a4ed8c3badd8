"""Sample grids as pictures (sdm/images.py): where each image lands, side-by-side panels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdm.images import make_grid, save_side_by_side


def test_grid_places_each_image():
    images = torch.stack([torch.full((1, 3, 3), v) for v in (-1.0, 0.0, 1.0)])
    grid = make_grid(images, pad=1)  # 2 columns, 2 rows
    assert grid.shape == (2 * 4 + 1, 2 * 4 + 1, 1)
    assert (grid[1:4, 1:4] == 0).all() and (grid[1:4, 5:8] == 128).all() and (grid[5:8, 1:4] == 255).all()
    assert (grid[5:8, 5:8] == 0).all()  # the empty fourth cell stays black


def test_side_by_side_panels_of_different_sizes(tmp_path):
    left = torch.ones(4, 1, 8, 8)  # white 8 px images, 2 x 2
    right = -torch.ones(1, 1, 5, 5)  # one black 5 px image
    path = save_side_by_side([left, right], tmp_path / "both.png", scale=2, gap=3)
    img = np.asarray(Image.open(path))
    w_left, w_right = 2 * 10 + 2, 5 + 4
    assert img.shape == (2 * (2 * 10 + 2), 2 * (w_left + 3 + w_right))
    assert img[4, 4] == 255 and (img[:, 2 * w_left:2 * (w_left + 3)] == 128).all()
    assert (img[:, 2 * (w_left + 3):] < 255).all()  # the right panel is black and padded below
    with pytest.raises(ValueError, match="channels"):
        save_side_by_side([left, torch.ones(1, 3, 4, 4)], tmp_path / "x.png")
