"""SDID, the spiking denoiser of Spiking-Diffusion's absorbing diffusion (the reference's ``DummyModel``).

``SDID(x_t [B, h, w] long, t [B] long) -> logits [B, K, h, w]``::

    input   raw (the reference): [token value as a float (0..K-1, K = mask), t as a float (1..S)]
            onehot (an option):  [one-hot of the token over K + 1 classes, t / S]
            the same current for T = 16 steps                                       [T, B, C_in, h, w]
    c1..c5  conv 3x3 -> BN -> LIF: 64, 128, 256, 512, 256 channels
    head    conv 3x3 on cat(c5, c1) (320 -> K), no BN or neuron; logits = mean over T

The head is affine and the same at every step, so ``mean_t head(h[t]) = head(mean_t h[t])``: it
runs once, on the time-averaged spikes (exact up to float rounding; 1/T of the reference's work).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from sdm.errors import ConfigError

from .config import check_field_types, strict_from_dict
from .neuron import NeuronParams
from .vqsvae import SpikingConv, repeat_steps

INPUTS = ("raw", "onehot")


@dataclass
class SDIDConfig:
    codebook_size: int = 128  # K (logits), the mask token is K
    steps: int = 49  # S, the diffusion steps (scales t for inputs="onehot")
    T: int = 16
    channels: tuple[int, ...] = (64, 128, 256, 512, 256)
    tau: float = 2.0
    inputs: str = "raw"

    def __post_init__(self):
        check_field_types(self, "SDID", ints=("codebook_size", "steps", "T"), reals=("tau",), strs=("inputs",),
                          int_lists=("channels",))
        rules = (("codebook_size", self.codebook_size >= 2, ">= 2"), ("steps", self.steps >= 1, ">= 1"),
                 ("T", self.T >= 1, ">= 1"), ("tau", self.tau > 1, "> 1"),
                 ("channels", len(self.channels) >= 2 and all(c >= 1 for c in self.channels),
                  "at least two positive ints (the first is the skip to the head)"),
                 ("inputs", self.inputs in INPUTS, f"one of {', '.join(INPUTS)}"))
        bad = [f"{name}={getattr(self, name)!r} must be {rule}" for name, ok, rule in rules if not ok]
        if bad:
            raise ConfigError("invalid SDID config: " + "; ".join(bad))

    @property
    def in_channels(self) -> int:
        return 2 if self.inputs == "raw" else self.codebook_size + 2

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SDIDConfig":
        return strict_from_dict(cls, d, "SDID")


class SDID(nn.Module):
    def __init__(self, cfg: SDIDConfig | None = None):
        super().__init__()
        cfg = cfg or SDIDConfig()
        self.cfg = cfg
        p = NeuronParams.lif(cfg.tau)
        layers, cin = [], cfg.in_channels
        for c in cfg.channels:
            layers.append(SpikingConv(nn.Conv2d(cin, c, 3, padding=1), p))
            cin = c
        self.layers = nn.ModuleList(layers)
        self.head = nn.Conv2d(cfg.channels[-1] + cfg.channels[0], cfg.codebook_size, 3, padding=1)

    def inputs(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The analog input ``[B, C_in, h, w]`` (module docstring)."""
        cfg = self.cfg
        if x_t.min() < 0 or x_t.max() > cfg.codebook_size:
            raise ConfigError(f"SDID tokens must be in 0..{cfg.codebook_size} (mask = {cfg.codebook_size}), "
                              f"got {int(x_t.min())}..{int(x_t.max())}")
        B, h, w = x_t.shape
        dtype = self.head.weight.dtype  # the model's precision (float64 for bit-level checks)
        tt = t.to(dtype).view(B, 1, 1, 1).expand(B, 1, h, w)
        if cfg.inputs == "raw":
            return torch.cat((x_t.to(dtype).unsqueeze(1), tt), 1)
        onehot = F.one_hot(x_t, cfg.codebook_size + 1).permute(0, 3, 1, 2).to(dtype)
        return torch.cat((onehot, tt / cfg.steps), 1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = repeat_steps(self.inputs(x_t, t), self.cfg.T)
        skip = h = self.layers[0](h)
        for layer in self.layers[1:]:
            h = layer(h)
        return self.head(torch.cat((h, skip), 2).mean(0))
