"""Multi-step integrate-and-fire neurons: the one place where neuron maths lives.

For every spiking step ``t = 0 .. T-1`` of an input current ``x[t]``::

    h[t] = decay * v[t-1] + c * x[t]      charge   (v[-1] = v_init * theta, v_init = 0 by default;
                                                     decay = 1, c = 1 is pure IF; c = input_scale)
    s[t] = H(h[t] - theta)                 fire     (H(0) = 1, as spikingjelly)
    v[t] = h[t] * (1 - s[t])               hard reset to 0          (reset="zero", the default)
    v[t] = h[t] - theta * s[t]             reset by subtraction     (reset="subtract")

With ``signed=True`` (subtractive reset only) a neuron that has fired more
positive than negative spikes also emits an inhibitory spike when its membrane
goes negative after the step's update (the SDM reference code's conversion neuron)::

    n[t] = n[t-1] + s+[t] - s-[t]                                  net count (n[-1] = 0)
    s-[t] = (v'[t] <= -m) and (n[t-1] + s+[t] > 0)             v'[t] = h[t] - theta * s+[t]
    v[t]  = v'[t] + theta * s-[t],     spike s[t] = s+[t] - s-[t] in {-1, 0, 1}

so a neuron that fired too early takes the spike back instead of carrying the
error to its readers: its net count tracks ``k(mean input)`` even when the input
arrives unevenly over the steps.  The margin ``m``
(``inhibit_margin``, 1e-3) keeps rounding noise at 0 from producing inhibition.

The LIF neuron of spikingjelly (``LIFNode``, ``decay_input=True``, the Spiking-Diffusion
family) charges ``h[t] = v[t-1] + (x[t] - v[t-1]) / tau``, which is the same update with
``decay = 1 - 1/tau`` and ``input_scale = 1/tau`` (:meth:`NeuronParams.lif`; tau = 2 gives
decay 1/2 and input scale 1/2).  IF is the special case ``input_scale = 1`` (``tau -> inf``
with the input not decayed).

The subtractive reset with ``v_init = 1/2`` is the neuron of ANN-to-SNN
conversion (Fast-SNN, SDM section 6): with a constant input ``x`` for ``T``
steps it fires ``clamp(floor(T*x/theta + 1/2), 0, T)`` times, the quantised
ReLU of ``train/conversion.py`` with clip ``theta`` and ``T = 2^b - 1`` levels.

``theta`` is the base threshold times a scale that can be changed at inference
(threshold guidance).  Training uses the ATan surrogate of spikingjelly::

    dH/dh ~ sg(h - theta) = alpha / (2 * (1 + (pi/2 * alpha * (h - theta))^2)),  alpha = 2

and, as in the reference (``detach_reset=False``), the gradient also flows
through the reset: ``dv/dh = (1 - s) - h * sg`` (hard reset) or
``dv/dh = 1 - theta * sg`` (subtractive reset); ``dh[t]/dx[t] = input_scale`` and
``dh[t]/dv[t-1] = decay``.

A signed neuron's net count is the quantised ReLU of its mean input, so its
backward pass is that of the rate (straight-through, as PACT without the clip
gradient): every step's spike is taken as ``count / T`` with
``count ~ (theta/2 + sum_t x[t]) / theta``, giving::

    dL/dx[t] = [0 < theta/2 + sum_t x < T * theta] / (T * theta) * sum_t' dL/ds[t']

(The ATan surrogate would see only the positive threshold and miss the inhibitory
spikes.)  ``v_init`` is a constant: no gradient flows to it.

The forward pass runs the T steps without building an autograd graph and keeps
only the pre-reset membrane ``h`` (the spikes are ``h >= theta``); the backward
pass is a hand-written reverse loop.  That replaces the ~10 autograd nodes per
step of a naive implementation by one node per layer, which is where most of
the speed-up over spikingjelly comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from sdm.errors import ConfigError

ATAN_ALPHA = 2.0


def atan_surrogate(u: torch.Tensor, alpha: float = ATAN_ALPHA) -> torch.Tensor:
    """Derivative of the ATan surrogate ``1/pi * atan(pi/2 * alpha * u) + 1/2``."""
    return (alpha / 2.0) / (1.0 + (math.pi / 2.0 * alpha * u).square())


RESETS = ("zero", "subtract")
INHIBIT_MARGIN = 1e-3  # default: a signed neuron inhibits at v <= -margin, so float noise at 0 does not count


@dataclass(frozen=True)
class NeuronParams:
    """The dynamics of a neuron group, everything but its threshold (module docstring)::

        h[t] = decay * v[t-1] + input_scale * x[t];  s[t] = H(h[t] - theta);  v[-1] = v_init * theta
        v[t] = h[t] * (1 - s[t])  (reset "zero")   or   h[t] - theta * s[t]  (reset "subtract")
        signed: s-[t] = (v'[t] <= -inhibit_margin) and (n[t-1] + s+[t] > 0)

    The one record and the one validation of neuron parameters: the PyTorch layer
    (:class:`IFNeuron`), the model configuration and the graph IR's neuron node all build one.
    The threshold is not part of it: a scalar in a PyTorch layer, a per-neuron array in the IR.
    ``input_scale`` (1 for IF) is the LIF's ``1/tau`` on the input: see :meth:`lif`.
    """

    decay: float = 1.0
    reset: str = "zero"
    v_init: float = 0.0  # a fraction of the threshold
    signed: bool = False
    inhibit_margin: float = INHIBIT_MARGIN
    input_scale: float = 1.0  # c in h = decay * v + c * x; 1 / tau for an LIF neuron (lif())

    @classmethod
    def lif(cls, tau: float = 2.0, **kw) -> "NeuronParams":
        """spikingjelly's ``LIFNode(tau, decay_input=True)``: ``h = v + (x - v) / tau``, i.e.
        ``decay = 1 - 1/tau`` and ``input_scale = 1/tau`` (hard reset to 0 unless ``reset`` is given)."""
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or not tau > 1.0:
            raise ConfigError(f"LIF tau must be a finite number > 1, got {tau!r}")
        return cls(decay=1.0 - 1.0 / tau, input_scale=1.0 / tau, **kw)

    @property
    def is_lif(self) -> bool:
        """Whether the input is scaled (an LIF neuron with ``decay_input``); IF and leaky IF are not."""
        return self.input_scale != 1.0

    def __post_init__(self):
        for name in ("decay", "v_init", "inhibit_margin", "input_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"neuron {name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "signed", bool(self.signed))
        if not 0.0 < self.decay <= 1.0:
            raise ConfigError(f"neuron decay must be in (0, 1], got {self.decay}")
        if self.reset not in RESETS:
            raise ConfigError(f"neuron reset must be one of {', '.join(RESETS)}, got {self.reset!r}")
        if self.signed and (self.reset != "subtract" or self.decay != 1.0):
            raise ConfigError("signed spikes need reset='subtract' and decay 1 (an inhibitory spike gives "
                              "theta back, which only a subtractive, non-leaky neuron conserves)")
        if not self.inhibit_margin > 0:
            raise ConfigError(f"neuron inhibit_margin must be positive, got {self.inhibit_margin}")
        if not 0.0 < self.input_scale <= 1.0:
            raise ConfigError(f"neuron input_scale must be in (0, 1] (1 = IF, 1/tau = LIF), got {self.input_scale}")
        if self.signed and self.input_scale != 1.0:
            raise ConfigError("signed spikes need input_scale 1 (the rate backward of a signed neuron counts "
                              "the raw input charge)")


def _signed_update(h: torch.Tensor, pos: torch.Tensor, theta, count: torch.Tensor, margin: float):
    """Subtractive reset plus inhibition (see the module docstring); updates ``count`` in place and
    returns ``(v_next, signed spikes)``."""
    v = h - theta * pos
    count.add_(pos)
    neg = ((v <= -margin) & (count > 0)).to(h.dtype)
    count.sub_(neg)
    return v + theta * neg, pos - neg


class _MultiStepIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_seq: torch.Tensor, theta: float | torch.Tensor, p: "NeuronParams", alpha: float):
        decay, v_init, signed, subtract = p.decay, p.v_init, p.signed, p.reset == "subtract"
        scale = p.input_scale
        h_seq = torch.empty_like(x_seq)
        v = torch.zeros_like(x_seq[0])
        if v_init != 0.0:
            v = v + v_init * theta
        count = torch.zeros_like(v) if signed else None
        neg_seq = torch.zeros_like(x_seq) if signed else None
        for t in range(x_seq.shape[0]):
            h = h_seq[t]
            x = x_seq[t] if scale == 1.0 else x_seq[t] * scale
            if decay == 1.0:
                torch.add(x, v, out=h)
            else:
                torch.add(x, v, alpha=decay, out=h)
            if signed:
                v, s = _signed_update(h, (h >= theta).to(h.dtype), theta, count, p.inhibit_margin)
                neg_seq[t] = s.clamp(max=0.0)
            elif subtract:  # v = h - theta where h >= theta, else h
                v = torch.where(h >= theta, h - theta, h)
            else:  # v = h where h < theta, else 0 (hard reset)
                v = h.masked_fill(h >= theta, 0.0)
        spikes = (h_seq >= theta).to(x_seq.dtype)
        ctx.signed = signed
        if signed:
            spikes = spikes + neg_seq
            charge = x_seq.sum(0) + v_init * theta
            T = x_seq.shape[0]
            ctx.save_for_backward(((charge > 0) & (charge < T * theta)).to(x_seq.dtype) / (T * theta))
        else:
            ctx.save_for_backward(h_seq)
        ctx.theta, ctx.decay, ctx.alpha, ctx.subtract, ctx.scale = theta, decay, alpha, subtract, scale
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor):
        if ctx.signed:  # straight-through rate gradient (module docstring)
            (slope,) = ctx.saved_tensors
            return (grad_spikes.sum(0) * slope).expand_as(grad_spikes).contiguous(), None, None, None
        (h_seq,) = ctx.saved_tensors
        theta, decay, alpha, subtract = ctx.theta, ctx.decay, ctx.alpha, ctx.subtract
        grad_x = torch.empty_like(h_seq)
        grad_v = None
        for t in range(h_seq.shape[0] - 1, -1, -1):
            h = h_seq[t]
            sg = atan_surrogate(h - theta, alpha)
            gh = grad_spikes[t] * sg
            if grad_v is not None:
                if subtract:  # dv/dh = 1 - theta * sg
                    gh = gh + grad_v * (1.0 - theta * sg)
                else:  # dv/dh = (1 - s) - h * sg
                    not_spiked = (h < theta).to(h.dtype)
                    gh = gh + grad_v * (not_spiked - h * sg)
            grad_x[t] = gh
            grad_v = gh * decay if decay != 1.0 else gh
        if ctx.scale != 1.0:  # dh/dx = input_scale
            grad_x.mul_(ctx.scale)
        return grad_x, None, None, None


def multistep_if(
    x_seq: torch.Tensor, theta: float | torch.Tensor = 1.0, decay: float = 1.0, alpha: float = ATAN_ALPHA,
    reset: str = "zero", v_init: float = 0.0, signed: bool = False, params: NeuronParams | None = None,
) -> torch.Tensor:
    """Spikes ``[T, ...]`` of a neuron driven by currents ``x_seq [T, ...]``, starting from
    ``v = v_init * theta`` (0 by default), with ``reset`` "zero" (hard) or "subtract";
    ``signed`` (subtractive reset only) adds inhibitory -1 spikes.  ``params`` gives all of
    these at once (the loose arguments are then ignored).

    ``theta`` is a scalar or a tensor broadcastable to one step (per-neuron thresholds)."""
    if params is None:
        params = NeuronParams(decay=decay, reset=reset, v_init=v_init, signed=signed)
    if not isinstance(theta, torch.Tensor):
        theta = float(theta)
    args = (x_seq, theta, params, float(alpha))
    if x_seq.requires_grad and torch.is_grad_enabled():
        return _MultiStepIF.apply(*args)
    with torch.no_grad():
        return _MultiStepIF.forward(_NoCtx(), *args)


class _NoCtx:
    """Stand-in context so inference reuses the exact forward code without autograd."""

    def save_for_backward(self, *tensors):
        pass


class IFNeuron(nn.Module):
    """Multi-step IF/LIF layer over ``[T, B, ...]`` inputs.

    ``theta`` is the trained threshold; ``threshold_scale`` multiplies it at
    inference (threshold guidance, e.g. 0.997 or 1.003) without retraining.
    The layer has no state between calls: every call starts from
    ``v = v_init * theta`` (0 by default), which is how the membrane is reset
    between denoiser evaluations.  ``reset`` is "zero" (hard reset, the trained
    SNN) or "subtract" (converted models, with ``v_init = 0.5``, optionally
    ``signed``).
    """

    def __init__(self, theta: float = 1.0, decay: float = 1.0, alpha: float = ATAN_ALPHA,
                 reset: str = "zero", v_init: float = 0.0, signed: bool = False, params: NeuronParams | None = None):
        super().__init__()
        if not theta > 0:
            raise ConfigError(f"IF threshold must be positive, got {theta}")
        self.params = params if params is not None else NeuronParams(decay, reset, v_init, signed)
        self.theta = float(theta)
        self.alpha = float(alpha)
        self.threshold_scale = 1.0

    # the record's fields, read where a layer is inspected (lowering, conversion, repr)
    decay = property(lambda self: self.params.decay)
    reset = property(lambda self: self.params.reset)
    v_init = property(lambda self: self.params.v_init)
    signed = property(lambda self: self.params.signed)

    @property
    def effective_threshold(self) -> float:
        return self.theta * self.threshold_scale

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        # The membrane integrates in at least fp32 even under bf16 autocast: an 8-bit
        # mantissa would move spikes, and spikes are exact in any dtype anyway.
        if x_seq.dtype in (torch.bfloat16, torch.float16):
            x_seq = x_seq.float()
        return multistep_if(x_seq, self.effective_threshold, alpha=self.alpha, params=self.params)

    def extra_repr(self) -> str:
        extra = f", reset={self.reset}, v_init={self.v_init}" if self.reset != "zero" or self.v_init else ""
        extra += ", signed" if self.signed else ""
        extra += f", input_scale={self.params.input_scale}" if self.params.is_lif else ""
        return f"theta={self.theta}, decay={self.decay}, threshold_scale={self.threshold_scale}{extra}"


def set_threshold_scale(model: nn.Module, scale: float) -> int:
    """Scale every neuron threshold of ``model`` by ``scale``; returns the number of neurons layers.

    A model without spiking neurons (an ANN) accepts only ``scale = 1``."""
    if not scale > 0:
        raise ConfigError(f"threshold scale must be positive, got {scale}")
    n = 0
    for m in model.modules():
        if isinstance(m, IFNeuron):
            m.threshold_scale = float(scale)
            n += 1
    if n == 0 and scale != 1.0:
        raise ConfigError("threshold scale applies to spiking neurons; this model is an ANN and has none")
    return n
