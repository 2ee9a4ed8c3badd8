"""Step-by-step reference implementations of the neuron (``sdm.train.neuron``), written
independently of the fused multi-step code so that each checks the other."""

from __future__ import annotations

import torch

from sdm.train.neuron import ATAN_ALPHA, INHIBIT_MARGIN, atan_surrogate


def if_step(v: torch.Tensor, x: torch.Tensor, theta, decay: float = 1.0, reset: str = "zero",
            count: torch.Tensor | None = None, inhibit_margin: float = INHIBIT_MARGIN):
    """One step of the neuron without gradients: returns ``(spike, v_next, h)``.

    The caller starts ``v`` at ``v_init * theta`` (zeros by default).  A signed neuron passes
    its net spike count ``count`` (zeros at the start), which is updated in place."""
    h = x + v * decay if decay != 1.0 else x + v
    s = (h >= theta).to(x.dtype)
    if count is not None:  # signed: subtractive reset, then take a spike back when net-inhibited
        v_next = h - theta * s
        count.add_(s)
        neg = ((v_next <= -inhibit_margin) & (count > 0)).to(h.dtype)
        count.sub_(neg)
        return s - neg, v_next + theta * neg, h
    if reset == "subtract":
        return s, torch.where(h >= theta, h - theta, h), h
    return s, h * (1.0 - s), h


class _Heaviside(torch.autograd.Function):
    """``H(u)`` (``H(0) = 1``) with the ATan surrogate gradient of width ``alpha``, as spikingjelly."""

    @staticmethod
    def forward(ctx, u, alpha):
        ctx.save_for_backward(u)
        ctx.alpha = alpha
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g * atan_surrogate(u, ctx.alpha), None


def multistep_if_reference(x_seq: torch.Tensor, theta: float = 1.0, decay: float = 1.0,
                           alpha: float = ATAN_ALPHA, reset: str = "zero", v_init: float = 0.0) -> torch.Tensor:
    """Step-by-step autograd version (spikingjelly's formulation); used to test the fused one."""

    v = torch.zeros_like(x_seq[0]) + v_init * theta
    out = []
    for t in range(x_seq.shape[0]):
        h = decay * v + x_seq[t]
        s = _Heaviside.apply(h - theta, alpha)
        v = h - theta * s if reset == "subtract" else h * (1.0 - s)
        out.append(s)
    return torch.stack(out)


def lif_step(v: torch.Tensor, x: torch.Tensor, tau: float = 2.0, theta=1.0):
    """One step of spikingjelly's ``LIFNode`` (``decay_input=True``, hard reset to 0), written as
    spikingjelly writes it: ``h = v + (x - v) / tau``; returns ``(spike, v_next, h)``."""
    h = v + (x - v) / tau
    s = (h >= theta).to(x.dtype)
    return s, h * (1.0 - s), h


def multistep_lif_reference(x_seq: torch.Tensor, tau: float = 2.0, theta: float = 1.0,
                            alpha: float = ATAN_ALPHA) -> torch.Tensor:
    """Step-by-step autograd ``LIFNode`` (spikingjelly's charge ``v + (x - v) / tau``, ATan surrogate,
    hard reset to 0 with the gradient through the reset, ``detach_reset=False``)."""

    v = torch.zeros_like(x_seq[0])
    out = []
    for t in range(x_seq.shape[0]):
        h = v + (x_seq[t] - v) / tau
        s = _Heaviside.apply(h - theta, alpha)
        v = h * (1.0 - s)
        out.append(s)
    return torch.stack(out)
