"""Spiking-Diffusion checkpoints and generation: the VQ-SVAE and the absorbing-diffusion model read
back from ``model.pt``, the two-stage sampler, reconstruction error.

Both stages write ordinary project checkpoints (``train.checkpoint.save_checkpoint``, loaded with
``weights_only=True``) told apart by ``model_kind``:

- ``"vq-svae"``: ``model_config`` (a :class:`VQSVAEConfig`), ``model``, ``data_variance``, training state;
- ``"absorbing"``: ``model_config`` (an :class:`SDIDConfig`), ``absorbing`` (an :class:`AbsorbingConfig`),
  ``model`` (the SDID), ``tokens`` (the training set's code grids), ``vqvae`` (the frozen first stage:
  ``model_config``, ``model``, ``data_variance``, ``source``), training state.

So an absorbing checkpoint is self-contained: it samples and decodes without the VQ-SVAE file.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from sdm.errors import ConfigError

from .absorbing import AbsorbingConfig, AbsorbingDiffusion
from .checkpoint import CheckpointError, load_checkpoint, load_weights, uses_ema
from .sdid import SDID, SDIDConfig
from .vqsvae import VQSVAE, VQSVAEConfig

KIND_KEY = "model_kind"
VQSVAE_KIND = "vq-svae"
ABSORBING_KIND = "absorbing"
KINDS = (VQSVAE_KIND, ABSORBING_KIND)


def checkpoint_kind(ckpt: dict[str, Any]) -> str | None:
    """``"vq-svae"`` or ``"absorbing"`` for a checkpoint of this family, ``None`` for any other (a UNet)."""
    kind = ckpt.get(KIND_KEY)
    return kind if kind in KINDS else None


def open_checkpoint(path_or_ckpt: str | os.PathLike | dict[str, Any], kind: str | None = None
                    ) -> tuple[dict[str, Any], str]:
    """``(checkpoint dict, name for messages)`` of a path or an already loaded dict, of ``kind`` when given."""
    if isinstance(path_or_ckpt, dict):
        ckpt, source = path_or_ckpt, "checkpoint"
    else:
        ckpt, source = load_checkpoint(path_or_ckpt), str(path_or_ckpt)
    found = ckpt.get(KIND_KEY)
    if found is not None and found not in KINDS:
        raise CheckpointError(f"{source}: unknown model_kind {found!r} (known: {', '.join(KINDS)})")
    if kind is not None and found != kind:
        what = f"a {found} checkpoint" if found else "not a Spiking-Diffusion checkpoint (a spiking UNet?)"
        raise CheckpointError(f"{source}: is {what}; expected a {kind} checkpoint")
    return ckpt, source


def section_config(cls, section: Any, what: str, source: str):
    if not isinstance(section, dict):
        raise CheckpointError(f"{source}: {what} must be a mapping, found {type(section).__name__}")
    try:
        return cls.from_dict(section)
    except ConfigError as e:
        raise CheckpointError(f"{source}: {what}: {e}") from None


def _positive(value: Any, what: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise CheckpointError(f"{source}: {what} must be a positive number, got {value!r}")
    return float(value)


def build_vqsvae(section: dict[str, Any], source: str, use_ema: bool = True) -> tuple[VQSVAE, float]:
    """``(VQSVAE in eval mode, data variance)`` from a section holding ``model_config``, ``model``
    (and ``ema`` when trained with one; used unless ``use_ema=False``) and ``data_variance`` (a
    VQ-SVAE checkpoint, or the ``vqvae`` section of an absorbing one, which holds the weights its
    tokens were encoded with)."""
    cfg = section_config(VQSVAEConfig, section.get("model_config"), "VQ-SVAE model_config", source)
    model = VQSVAE(cfg)
    if not isinstance(section.get("model"), dict):
        raise CheckpointError(f"{source}: VQ-SVAE weights missing or not a state dict")
    load_weights(model, section, "ema" if uses_ema(section, use_ema) else "model", source)
    return model.eval(), _positive(section.get("data_variance"), "data_variance", source)


def sd_modules(path_or_ckpt: str | os.PathLike | dict[str, Any], use_ema: bool = True
               ) -> tuple[VQSVAE, SDID | None, "SpikingDiffusion | None"]:
    """``(VQ-SVAE, SDID, generator)`` of an absorbing checkpoint, ``(VQ-SVAE, None, None)`` of a VQ-SVAE one
    (eval mode; EMA weights when present and ``use_ema``)."""
    ckpt, _ = open_checkpoint(path_or_ckpt)
    if ckpt.get(KIND_KEY) == ABSORBING_KIND:
        model = load_absorbing(ckpt, use_ema=use_ema)
        return model.vqsvae, model.denoiser, model
    return vqsvae_from_checkpoint(ckpt, use_ema=use_ema)[0], None, None


def vqsvae_from_checkpoint(path_or_ckpt: str | os.PathLike | dict[str, Any], use_ema: bool = True
                           ) -> tuple[VQSVAE, float]:
    """The VQ-SVAE of a ``vq-svae`` checkpoint (its EMA weights when it has them and ``use_ema``)
    or the frozen one inside an ``absorbing`` checkpoint."""
    return _vqsvae_of(*open_checkpoint(path_or_ckpt), use_ema=use_ema)


def _vqsvae_of(ckpt: dict[str, Any], source: str, use_ema: bool = True) -> tuple[VQSVAE, float]:
    kind = ckpt.get(KIND_KEY)
    if kind == ABSORBING_KIND:
        if not isinstance(ckpt.get("vqvae"), dict):
            raise CheckpointError(f"{source}: vqvae must be a mapping (the embedded VQ-SVAE)")
        return build_vqsvae(ckpt["vqvae"], f"{source} (vqvae)")
    if kind != VQSVAE_KIND:
        raise CheckpointError(f"{source}: not a Spiking-Diffusion checkpoint (a spiking UNet?); expected vq-svae")
    return build_vqsvae(ckpt, source, use_ema)


def check_tokens(tokens: Any, codebook_size: int, grid: int, source: str) -> torch.Tensor:
    """The ``tokens`` section: an integer tensor ``[N, grid, grid]`` of codes ``0 .. K-1``."""
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.dim() != 3 or \
            tuple(tokens.shape[1:]) != (grid, grid) or tokens.shape[0] == 0:
        found = f"{tokens.dtype} {list(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise CheckpointError(f"{source}: tokens must be an integer tensor [N, {grid}, {grid}], found {found}")
    if int(tokens.min()) < 0 or int(tokens.max()) >= codebook_size:
        raise CheckpointError(f"{source}: tokens must be codes 0..{codebook_size - 1}, found "
                              f"{int(tokens.min())}..{int(tokens.max())}")
    return tokens


class SpikingDiffusion(nn.Module):
    """The generator of Spiking-Diffusion: absorbing diffusion with the SDID denoiser over the
    VQ-SVAE's token grid, decoded by the VQ-SVAE (lookup -> ASG -> decoder -> readout)."""

    def __init__(self, vqsvae: VQSVAE, denoiser: SDID, diffusion_cfg: AbsorbingConfig):
        super().__init__()
        check_stages(vqsvae.cfg, denoiser.cfg, diffusion_cfg)
        self.vqsvae, self.denoiser = vqsvae, denoiser
        self.diffusion = AbsorbingDiffusion(diffusion_cfg)

    @property
    def token_shape(self) -> tuple[int, int]:
        return (self.vqsvae.cfg.latent_size,) * 2

    @torch.no_grad()
    def sample_tokens(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        self.eval()
        device = next(self.denoiser.parameters()).device
        return self.diffusion.sample(self.denoiser, n, self.token_shape, temperature, generator, device)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        self.eval()
        return self.vqsvae.tokens_to_images(tokens)


def check_stages(vq: VQSVAEConfig, sdid: SDIDConfig, diffusion: AbsorbingConfig) -> None:
    """The three configurations of a generator agree (K, and the steps SDID scales t by)."""
    if not vq.codebook_size == sdid.codebook_size == diffusion.codebook_size:
        raise ConfigError(f"codebook sizes differ: VQ-SVAE {vq.codebook_size}, SDID {sdid.codebook_size}, "
                          f"diffusion {diffusion.codebook_size}")
    if sdid.steps != diffusion.steps:
        raise ConfigError(f"SDID steps={sdid.steps} differ from the diffusion's steps={diffusion.steps}")


def load_absorbing(path_or_ckpt: str | os.PathLike | dict[str, Any], device: str | torch.device = "cpu",
                   use_ema: bool = True) -> SpikingDiffusion:
    """The generator of an ``absorbing`` checkpoint, in eval mode on ``device``: SDID's EMA weights
    when it has them and ``use_ema``, decoded by the VQ-SVAE its tokens came from."""
    ckpt, source = open_checkpoint(path_or_ckpt, ABSORBING_KIND)
    sdid_cfg = section_config(SDIDConfig, ckpt["model_config"], "model_config", source)
    diffusion_cfg = section_config(AbsorbingConfig, ckpt.get("absorbing"), "absorbing", source)
    vq, _ = _vqsvae_of(ckpt, source)
    denoiser = SDID(sdid_cfg)
    load_weights(denoiser, ckpt, "ema" if uses_ema(ckpt, use_ema) else "model", source)
    try:
        model = SpikingDiffusion(vq, denoiser, diffusion_cfg)
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return model.to(device).eval()


def sample_absorbing(ckpt_or_model: str | os.PathLike | dict[str, Any] | SpikingDiffusion, n: int,
                     temperature: float = 1.0, seed: int = 0, device: str | torch.device | None = None,
                     batch_size: int = 64, return_tokens: bool = False, use_ema: bool = True):
    """``n`` generated images ``[n, C, H, W]`` in [-1, 1] (and their token grids ``[n, h, w]`` with
    ``return_tokens``), drawn in batches of ``batch_size`` with one CPU generator seeded by ``seed``:
    the same (seed, batch_size) gives the same images on any device."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"number of samples must be a positive integer, got {n!r}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if isinstance(ckpt_or_model, SpikingDiffusion):
        model = ckpt_or_model if device is None else ckpt_or_model.to(device)
    else:
        model = load_absorbing(ckpt_or_model, device or "cpu", use_ema)
    gen = torch.Generator().manual_seed(int(seed))
    images, tokens = [], []
    for first in range(0, n, batch_size):
        tok = model.sample_tokens(min(batch_size, n - first), temperature, gen)
        tokens.append(tok.cpu())
        images.append(model.decode(tok).cpu())
    images = torch.cat(images)
    return (images, torch.cat(tokens)) if return_tokens else images


@torch.no_grad()
def reconstruction_mse(vq: VQSVAE, images: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Reconstruction error of the VQ-SVAE (eval mode) on ``images [N, C, H, W]`` in [-1, 1]:
    ``mse`` in model space (the reference's number, on [-0.5, 0.5] with the default scale),
    ``mse_data`` on the [-1, 1] images after clipping, ``codes_used`` the distinct codes seen."""
    vq.eval()
    device = next(vq.parameters()).device
    sq_model = sq_data = 0.0
    codes = set()
    for first in range(0, images.shape[0], batch_size):
        x = images[first:first + batch_size].to(device)
        out = vq(x)
        sq_model += float((out.recon - x * vq.cfg.data_scale).double().square().sum())
        sq_data += float((vq.to_images(out.recon) - x).double().square().sum())
        codes.update(out.indices.unique().tolist())
    count = images.numel()
    return {"mse": sq_model / count, "mse_data": sq_data / count, "codes_used": len(codes)}

