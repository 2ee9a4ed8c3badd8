"""Fixed-point (Loihi 2 style) quantisation of a spiking graph for Lava's ``fixed_pt`` models.

Units.  Every current travels as an integer in *state units*: a float current ``I`` becomes
``round(lam * I)`` with ``lam = 2**state_shift`` (default 2^8).  The bit-accurate LIF then
integrates ``v += a_in << 6`` plus its bias and fires when ``v > vth << 6``, so

* threshold:  ``vth = round(lam * theta * threshold_scale)``  (17-bit);
* neuron bias: ``bias_mant << bias_exp = round(64 * lam * b)``, 13-bit mantissa, 3-bit exponent;
* conv weights: 8-bit mantissa with a shared exponent per conv, ``w = mant * 2**exp``
  (``exp`` may be negative: the sum is then shifted right with rounding).  A conv on spikes
  carries ``lam * W`` (a spike is 1); a conv on graded currents (already in state units, e.g.
  a 1x1 shortcut on a residual stream or the first conv on the image) carries ``W``; a conv after
  an upsampling of spikes (nearest or zero insertion) reads spikes too;
* LIF input scale ``c`` (spikingjelly's ``decay_input``): folded into the feeding convs' weights and
  biases before the plan is made (``builder.fold_input_scale``), ``c = 1/2`` moving each exponent by -1;
* decays: ``du = 4095`` (the synaptic current does not persist), ``dv = round(4096 * (1 - decay))``.

The state is 24-bit in the LIF and the LIF's synaptic input port is 16-bit, which bounds the
current to about ``2**15 / lam`` (128 at the default): the plan checks the graph's largest
possible weight sum and warns through ``self.warnings`` when the bound can be exceeded.

:func:`round_shift` is the one integer rescaling of a synapse's sum (``2**exp`` with rounding,
24-bit clamp), used by the fixed-point conv and time-embedding models (``lava_models/``) and by
the host-side first conv of the netx path.  This module is pure numpy: it loads no Lava module.
"""

from __future__ import annotations

import math

import numpy as np

from sdm.errors import ConfigError
from sdm.export.ir import Conv, SNNGraph

WEIGHT_BITS = 8  # mantissa magnitude < 2**8 (Loihi 2: 8-bit weights with sign, plus exponent)
BIAS_MANT_MAX = 4095  # 13-bit signed
BIAS_EXP_MAX = 7
VTH_MAX = 2 ** 17 - 1
ACT_SHIFT = 6
STATE_BITS = 24  # synapse outputs, u and v are 24-bit signed on Loihi 2
STATE_MIN, STATE_MAX = -(2 ** (STATE_BITS - 1)), 2 ** (STATE_BITS - 1) - 1


def round_shift(y: np.ndarray, exp: int) -> np.ndarray:
    """``y * 2**exp`` for an integer array ``y``, clamped to the 24-bit signed range.

    ``exp >= 0``: a left shift.  ``exp < 0``: an arithmetic right shift by ``-exp`` that rounds
    half up (``floor(y / 2**-exp + 1/2)``), the rescaling of an 8-bit mantissa sum with a negative
    shared exponent.  Returns an array of ``y``'s integer type."""
    exp = int(exp)
    y = y << exp if exp >= 0 else (y + (1 << (-exp - 1))) >> -exp
    return np.clip(y, STATE_MIN, STATE_MAX)


def mantissa_exponent(m: np.ndarray, bits: int = WEIGHT_BITS) -> tuple[np.ndarray, int]:
    """``m ~ mant * 2**exp`` with ``|mant| <= 2**bits - 1`` and the smallest such ``exp``."""
    peak = float(np.max(np.abs(m))) if m.size else 0.0
    if peak == 0.0:
        return np.zeros(m.shape, dtype=np.int64), 0
    exp = math.ceil(math.log2(peak / (2 ** bits - 1)))
    mant = np.round(m / 2.0 ** exp).astype(np.int64)
    return np.clip(mant, -(2 ** bits - 1), 2 ** bits - 1), exp


class FixedPointPlan:
    """The integer parameters of ``graph`` for Lava's ``fixed_pt`` models (module docstring).

    The plan is of the graph the builders run: ``graph`` after the builder's
    :func:`~sdm.neuromorphic.builder.fold_input_scale` (``self.graph``; ``graph`` itself when it has no
    LIF input scale), so an LIF group's input scale is in its convs' mantissas and exponents (a
    power-of-two scale changes only the exponent).  A conv reads spikes (and carries ``lam * W``) when
    :meth:`~sdm.export.ir.SNNGraph.spike_source` finds a neuron group before it, directly or through an
    upsampling, nearest or zero insertion (whose inserted zeros are no spikes); else graded currents."""

    def __init__(self, graph: SNNGraph, state_shift: int = 8):
        from .builder import fold_input_scale  # the builders' pass 0; builder.py loads Lava only on demand

        self.graph = graph = fold_input_scale(graph)
        self.lam = float(2 ** state_shift)
        self.conv_mant: dict[str, np.ndarray] = {}
        self.conv_exp: dict[str, int] = {}
        self.warnings: list[str] = []
        for name, node in graph.nodes.items():
            if isinstance(node, Conv):
                spiking = graph.spike_source(name) is not None
                mant, exp = mantissa_exponent(node.weight * (self.lam if spiking else 1.0))
                self.conv_mant[name], self.conv_exp[name] = mant, exp
                if spiking:
                    worst = float(np.abs(mant).sum(axis=(1, 2, 3)).max()) * 2.0 ** exp
                    if worst >= 2 ** 15:
                        self.warnings.append(f"{name}: worst-case input sum {worst:.0f} exceeds the 16-bit LIF input")

    def graded_weight(self, w: np.ndarray) -> tuple[np.ndarray, int]:
        """Weights applied to graded inputs already in state units (mantissa, exponent)."""
        return mantissa_exponent(np.asarray(w, dtype=np.float64))

    # ----- parameters -------------------------------------------------------------------------
    def current(self, x: np.ndarray) -> np.ndarray:
        """Float currents -> integer state units."""
        return np.round(np.asarray(x, dtype=np.float64) * self.lam).astype(np.int64)

    def threshold(self, theta: float) -> int:
        vth = int(round(theta * self.lam))
        if not 0 < vth <= VTH_MAX:
            raise ConfigError(f"threshold {theta} does not fit 17 bits at scale {self.lam}")
        return vth

    def inhibit_margin(self, margin: float) -> int:
        """A signed neuron's inhibition margin (``IFNeurons.inhibit_margin``) in the LIF's ``v`` units, at least 1."""
        return max(1, int(round(margin * self.lam * (1 << ACT_SHIFT))))

    @staticmethod
    def decays(decay: float) -> tuple[int, int]:
        return 4095, int(round(4096 * (1.0 - decay)))

    def neuron_bias(self, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float bias current -> (13-bit mantissa, exponent) arrays, ``mant << exp ~ 64 * lam * b``."""
        v = np.asarray(b, dtype=np.float64) * self.lam * (1 << ACT_SHIFT)
        exp = np.zeros(v.shape, dtype=np.int64)
        big = np.abs(v) > BIAS_MANT_MAX
        if np.any(big):
            exp[big] = np.minimum(np.ceil(np.log2(np.abs(v[big]) / BIAS_MANT_MAX)), BIAS_EXP_MAX)
        mant = np.clip(np.round(v / 2.0 ** exp), -BIAS_MANT_MAX - 1, BIAS_MANT_MAX).astype(np.int64)
        return mant, exp

    def quantize_input(self, data: np.ndarray) -> np.ndarray:
        return self.current(data)

    def dequantize_output(self, rec: np.ndarray) -> np.ndarray:
        return np.asarray(rec, dtype=np.float64) / self.lam
