"""Absorbing-state discrete diffusion over a grid of codebook tokens (Austin et al. 2021, as
Unleashing Transformers and Spiking-Diffusion use it; docs/spiking-diffusion.md).

Tokens are ``0 .. K-1``; the absorbing ("mask") token is ``K``.  With ``S`` steps (49 for the
7 x 7 grid of Spiking-Diffusion)::

    forward   t ~ U{1 .. S};  every token is replaced by K independently with probability t / S
    loss      CE of the denoiser's logits on the masked positions only, summed per image, and
                reweighted_elbo:  mean_b (1 - t/S) * CE_b / (ln 2 * N)        (the reference's choice)
                elbo:             mean_b (S / t) * CE_b / (ln 2 * N)          (CE / t / p(t), p(t) = 1/S)
              with N the number of tokens per image (bits per token)
    sampling  start fully masked; for t = S .. 1 every still-masked position is unmasked with
              probability 1/t (so all of them at t = 1), drawn from softmax(logits / temperature);
              a position that is fixed is never drawn again

The denoiser is any module ``denoiser(x_t [B, h, w] long, t [B] long) -> logits [B, K, h, w]``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from sdm.errors import ConfigError

from .config import check_field_types, strict_from_dict

LOSSES = ("reweighted_elbo", "elbo")
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class AbsorbingConfig:
    codebook_size: int = 128  # K; the mask token is K
    steps: int = 49  # S
    loss: str = "reweighted_elbo"

    def __post_init__(self):
        check_field_types(self, "absorbing diffusion", ints=("codebook_size", "steps"), strs=("loss",))
        if self.codebook_size < 2:
            raise ConfigError(f"invalid absorbing diffusion config: codebook_size={self.codebook_size} must be >= 2")
        if self.steps < 1:
            raise ConfigError(f"invalid absorbing diffusion config: steps={self.steps} must be >= 1")
        if self.loss not in LOSSES:
            raise ConfigError(f"invalid absorbing diffusion config: loss={self.loss!r} must be one of "
                              f"{', '.join(LOSSES)}")

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AbsorbingConfig":
        return strict_from_dict(cls, d, "absorbing diffusion")


def _rand(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn by ``generator`` (on its own device), moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def categorical(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``logits [..., K]`` from ``softmax(logits)`` (Gumbel-max: exact, and stable
    for the near-zero temperatures of the reference's sweep)."""
    u = _rand(logits.shape, generator, logits.device).clamp_(min=torch.finfo(torch.float32).tiny, max=1.0 - 1e-7)
    return (logits.float() - torch.log(-torch.log(u))).argmax(-1)


class AbsorbingDiffusion:
    def __init__(self, cfg: AbsorbingConfig | None = None):
        self.cfg = cfg or AbsorbingConfig()

    def sample_t(self, batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        return torch.randint(1, self.cfg.steps + 1, (batch,), generator=generator, device=gen_device).to(device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_t, target, mask)``: every token of ``x0 [B, h, w]`` masked with probability ``t / S``;
        ``target`` is ``x0`` where masked and -1 (ignored) elsewhere."""
        if x0.min() < 0 or x0.max() >= self.cfg.codebook_size:
            raise ConfigError(f"tokens must be in 0..{self.cfg.codebook_size - 1}, got "
                              f"{int(x0.min())}..{int(x0.max())}")
        rate = (t.to(torch.float32) / self.cfg.steps).view(-1, *([1] * (x0.dim() - 1)))
        mask = _rand(x0.shape, generator, x0.device) < rate
        x_t = x0.masked_fill(mask, self.cfg.mask_id)
        target = x0.masked_fill(~mask, -1)
        return x_t, target, mask

    def weights(self, t: torch.Tensor, tokens: int) -> torch.Tensor:
        """Per-image factor on the summed masked CE (module docstring)."""
        t = t.to(torch.float32)
        w = 1.0 - t / self.cfg.steps if self.cfg.loss == "reweighted_elbo" else self.cfg.steps / t
        return w / (math.log(2.0) * tokens)

    def loss(self, denoiser: Denoiser, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        t = self.sample_t(x0.shape[0], generator, x0.device)
        x_t, target, _ = self.q_sample(x0, t, generator)
        logits = denoiser(x_t, t)
        ce = F.cross_entropy(logits.float(), target, ignore_index=-1, reduction="none").flatten(1).sum(1)
        return (self.weights(t, x0[0].numel()) * ce).mean()

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, n: int, shape: tuple[int, int], temperature: float = 1.0,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu",
               on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
        """``n`` token grids ``[n, *shape]`` by the reverse process (module docstring).

        ``on_step(t, x_t, changes)`` (tests, traces) sees the grid after each step and the positions
        that step fixed."""
        if not temperature > 0 or not math.isfinite(temperature):
            raise ConfigError(f"temperature must be a positive number, got {temperature}")
        device = torch.device(device)
        x_t = torch.full((n, *shape), self.cfg.mask_id, dtype=torch.long, device=device)
        unmasked = torch.zeros_like(x_t, dtype=torch.bool)
        for t in range(self.cfg.steps, 0, -1):
            changes = (_rand(x_t.shape, generator, device) < 1.0 / t) & ~unmasked
            unmasked |= changes
            logits = denoiser(x_t, torch.full((n,), t, dtype=torch.long, device=device))
            draw = categorical(logits.movedim(1, -1) / temperature, generator)
            x_t = torch.where(changes, draw, x_t)
            if on_step is not None:
                on_step(t, x_t, changes)
        return x_t
