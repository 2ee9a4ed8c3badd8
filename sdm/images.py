"""Turning sample batches into PNG grids."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .files import atomic_write


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` floats to uint8, the same rounding used for data loading."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """``[N, C, H, W]`` in [-1, 1] -> ``[rows*(H+pad)+pad, cols*(W+pad)+pad, C]`` uint8 (C = 1 or 3)."""
    n, c, h, w = images.shape
    cols = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / cols))
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    u8 = to_uint8(images.detach().cpu()).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        grid[y:y + h, x:x + w] = u8[i]
    return grid


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 1) -> Path:
    """Write a PNG grid atomically; ``scale`` enlarges small images with nearest-neighbour."""
    grid = make_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def save_side_by_side(batches: list[torch.Tensor], path: str | os.PathLike, scale: int = 1, gap: int = 8) -> Path:
    """Write one PNG with the grid of each batch side by side (left to right), top-aligned on a
    black canvas and separated by a grey ``gap`` (before scaling); the batches may differ in image
    size and count, not in channels."""
    grids = [make_grid(b) for b in batches]
    if len({g.shape[-1] for g in grids}) != 1:
        raise ValueError("side-by-side grids need the same number of channels")
    height = max(g.shape[0] for g in grids)
    parts = []
    for i, g in enumerate(grids):
        if i:
            parts.append(np.full((height, gap, g.shape[-1]), 128, dtype=np.uint8))
        parts.append(np.pad(g, ((0, height - g.shape[0]), (0, 0), (0, 0))))
    canvas = np.concatenate(parts, axis=1)
    img = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
