"""Generating images from a checkpoint: model loading, threshold guidance, grids."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sdm.images import save_grid

from .checkpoint import build_denoiser, check_state_dict, checkpoint_weights, denoiser_configs, load_checkpoint
from .diffusion import GaussianDiffusion
from .moments import Moments
from .neuron import set_threshold_scale
from .samplers import sample
from .unet import SpikingUNet


def model_from_checkpoint(path: str | os.PathLike, use_ema: bool = True, device: str = "cpu",
                          ckpt: dict | None = None) -> tuple[SpikingUNet, GaussianDiffusion, dict]:
    """Rebuild the eval-mode denoiser and its schedule; EMA weights when the checkpoint has them.

    Beyond :func:`~sdm.train.checkpoint.load_checkpoint`'s checks, the configuration must describe a
    spiking UNet whose time-embedding table covers the schedule, and every tensor of ``model`` and
    ``ema`` must fit it (a :class:`~sdm.train.checkpoint.CheckpointError` names the first that does not)."""
    ckpt = ckpt if ckpt is not None else load_checkpoint(path)
    cfg, schedule = denoiser_configs(ckpt, path)
    model = build_denoiser(cfg, path)
    for section in ("model", "ema"):  # both must fit the architecture, whichever is used
        if ckpt.get(section) is not None:
            check_state_dict(ckpt[section], model.state_dict(), section, path)
    model.load_state_dict(checkpoint_weights(ckpt, use_ema))
    return model.to(device).eval(), GaussianDiffusion(schedule), ckpt


def generate(model: SpikingUNet, diffusion: GaussianDiffusion, n: int, sampler: str = "ddim", steps: int = 50,
             eta: float = 0.0, seed: int = 0, threshold_scale: float = 1.0, batch_size: int = 64,
             device: str = "cpu", progress: bool = True, order: int = 2,
             moments: Moments | None = None) -> torch.Tensor:
    """``n`` samples in [-1, 1] with the sampler called ``sampler`` (:func:`~sdm.train.samplers.make_sampler`;
    ``moments`` for the analytic ones); the same seed gives the same starting noise whatever the threshold."""
    set_threshold_scale(model, threshold_scale)
    cfg = model.cfg
    gen = torch.Generator(device=device).manual_seed(seed)
    x_T = torch.randn((n, cfg.img_ch, cfg.img_size, cfg.img_size), generator=gen, device=device)
    out = []
    for i in range(0, n, batch_size):
        xb = x_T[i:i + batch_size]
        out.append(sample(model, diffusion, xb.shape, sampler=sampler, steps=steps, eta=eta, order=order,
                          moments=moments, generator=gen, device=device, progress=progress, x_T=xb))
    set_threshold_scale(model, 1.0)
    return torch.cat(out)


def sweep_paths(out: str | os.PathLike, scales: list[float]) -> list[Path]:
    """``grid.png`` -> ``grid_th0.997.png``, ``grid_th1.png``, ... one file per threshold scale."""
    out = Path(out)
    return [out.with_name(f"{out.stem}_th{s:g}{out.suffix or '.png'}") for s in scales]


__all__ = ["model_from_checkpoint", "generate", "save_grid", "sweep_paths"]
