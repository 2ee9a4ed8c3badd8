"""Layers of the spiking UNet that act on ``[T, B, ...]`` sequences.

Convolutions and BatchNorm run on the flattened ``[T*B, ...]`` view, as in the
reference: BatchNorm statistics are shared over spiking steps and batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class TSMConv2d(nn.Conv2d):
    """Conv2d over ``[T, B, C, H, W]`` with an optional temporal-wise spiking gain.

    With TSM on, the output of spiking step ``n`` is ``p[n] * (W * x[n] + b)``
    (SDM eq. 16): one learnable scalar per layer and per step, initialised to 1,
    applied before BatchNorm.  The gain exists only once :meth:`enable_tsm` has
    been called, so a plain model has exactly the reference parameter count.
    """

    tsm_gain: nn.Parameter | None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tsm_gain = None

    def enable_tsm(self, T: int) -> None:
        if self.tsm_gain is None:
            self.tsm_gain = nn.Parameter(torch.ones(T, device=self.weight.device))

    def forward_seq(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        y = self(x.flatten(0, 1))  # through __call__, so forward hooks (profilers, counters) see it
        y = y.view(T, B, *y.shape[1:])
        if self.tsm_gain is not None:
            y = y * self.tsm_gain.view(T, 1, 1, 1, 1).to(y.dtype)
        return y


class SeqBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d on ``[T, B, C, H, W]`` with statistics over T·B."""

    def forward_seq(self, x: torch.Tensor) -> torch.Tensor:
        return self(x.reshape(-1, *x.shape[2:])).view(x.shape)


class MembraneReadout(nn.Module):
    """Non-spiking output neuron: ``eps = sum_t decay^(T-1-t) * h[t]`` (FSVAE/SDDPM readout)."""

    def __init__(self, T: int, decay: float = 0.8):
        super().__init__()
        self.T = T
        self.decay = decay

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # weights computed in float64 and cast, so every dtype sees correctly rounded 0.8^k
        w = self.decay ** torch.arange(self.T - 1, -1, -1, dtype=torch.float64, device=h.device)
        return torch.einsum("t,t...->...", w.to(h.dtype), h)
