"""A fast CPU model for Lava's ``Conv`` process: one im2col matrix product per step.

Lava's stock float model calls ``scipy.signal.convolve2d`` once per (input, output) channel
pair, about 30 us each at 32x32; this model gathers the receptive fields once (a strided
view, no Python loop over channels) and does a single BLAS product.  Same process, same
ports and Vars, same one-step latency and the same (true) convolution, so spikes and
currents equal the stock model's (tests/test_lava.py checks it against ``PyConvModelFloat``).

Window gating: the process parameter ``read_window`` (:data:`READ_WINDOW`), a
:class:`ReadWindow` set with :func:`set_read_window` (the builder does, for every conv), names
the steps whose output some consumer reads after latency alignment; outside it the model skips
the product and sends zeros.  A ``Conv`` without it (Lava's own, netx's, ``None``) computes
every step.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.conv.process import Conv

from sdm.neuromorphic.fixed_point import round_shift

READ_WINDOW = "read_window"  # the process parameter of a Conv the fast models read (module docstring)


class ReadWindow(NamedTuple):
    """The output steps of a conv that its consumers read: local steps ``start .. start + length - 1``
    of every run of ``run_length`` Lava steps (local step = ``time_step mod run_length``)."""

    start: int
    length: int
    run_length: int

    def is_read(self, time_step: int) -> bool:
        """Whether a result sent at ``time_step`` (a Lava step, from 1) falls inside the window."""
        return self.start <= time_step % self.run_length < self.start + self.length


def set_read_window(conv: Conv, window: ReadWindow | None) -> None:
    """Give ``conv`` its read window (``None``: compute every step); read by :class:`FastConvModelFloat`
    and :class:`FastConvModelFixed` when the process is compiled."""
    conv.proc_params.overwrite(READ_WINDOW, window)


def correlation_weight(lava_weight: np.ndarray) -> np.ndarray:
    """Lava's (C_out, kW, kH, C_in) convolution kernel as a (kW*kH*C_in, C_out) correlation matrix, its rows
    in (kw, kh, c) order: the order of the patches :func:`conv_whc` gathers."""
    w = lava_weight[:, ::-1, ::-1, :]  # true convolution -> correlation
    return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)


def conv_whc(x: np.ndarray, wmat: np.ndarray, kernel, stride, padding) -> np.ndarray:
    """Correlation of a (..., W, H, C_in) input with ``wmat`` -> (..., W_out, H_out, C_out).

    Channels-last im2col in Lava's own layout: each output position's patch is gathered as
    (kw, kh, c) with the channels contiguous, so neither the input nor the output is transposed, and
    a 1x1 conv multiplies the input as it is.  Leading dimensions (the batch of a fused stage,
    :mod:`.fused_model`) go through the same single product: a batch costs one BLAS call."""
    kw, kh = (int(k) for k in kernel)
    sw, sh = (int(v) for v in stride)
    pw, ph = (int(v) for v in padding)
    if kw == kh == sw == sh == 1 and not (pw or ph):
        return (x.reshape(-1, x.shape[-1]) @ wmat).reshape(*x.shape[:-1], -1)
    if pw or ph:  # zero padding (np.pad's generic machinery costs more than the copy)
        w, h = x.shape[-3:-1]
        padded = np.zeros((*x.shape[:-3], w + 2 * pw, h + 2 * ph, x.shape[-1]), dtype=x.dtype)
        padded[..., pw:pw + w, ph:ph + h, :] = x
        x = padded
    win = np.lib.stride_tricks.sliding_window_view(x, (kw, kh), axis=(-3, -2))[..., ::sw, ::sh, :, :, :]
    wo, ho, c = win.shape[-5:-2]  # win: (..., W_out, H_out, C, kw, kh)
    cols = np.moveaxis(win, -3, -1).reshape(-1, kw * kh * c)
    return (cols @ wmat).reshape(*x.shape[:-3], wo, ho, -1)


class _FastConvBase(PyLoihiProcessModel):
    kernel_size: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    stride: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    padding: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    dilation: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    groups: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)
    num_message_bits: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=5)
    weight_exp: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    num_weight_bits: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=5)

    def _setup(self):
        if np.any(self.dilation != 1) or self.groups[0] != 1:
            raise NotImplementedError("fast conv model: dilation 1 and groups 1 only")
        self._wmat = correlation_weight(np.asarray(self.weight, dtype=self._dtype))
        self._zeros = self._buf = np.zeros(self.a_out.shape, dtype=self._dtype)
        window = self.proc_params.get(READ_WINDOW)  # set by set_read_window; absent on a plain Conv
        self._read_window = None if window is None else ReadWindow(*window)

    def _output_unread(self) -> bool:
        """Whether what this step computes (sent next step, local step ``time_step mod run_length``)
        falls outside the window any consumer reads."""
        return self._read_window is not None and not self._read_window.is_read(self.time_step)

    def run_spk(self) -> None:
        if not hasattr(self, "_wmat"):
            self._setup()
        self.a_out.send(self._buf)
        s_in = self.s_in.recv()
        if self._output_unread():
            # event-driven shortcut: nobody reads this result, so skip the product (zeros instead)
            self._buf = self._zeros
            return
        self._buf = self.synapse(s_in)

    def synapse(self, s_in: np.ndarray) -> np.ndarray:
        """The synapse output of one step's input ``s_in`` (``(..., W, H, C_in)``), without the step of
        latency: what :meth:`run_spk` sends one step later, and what a fused stage uses at once."""
        if not hasattr(self, "_wmat"):
            self._setup()
        if self.num_message_bits.item() == 0:
            s_in = s_in.astype(bool)
        y = conv_whc(s_in.astype(self._dtype), self._wmat, self.kernel_size, self.stride, self.padding)
        return self.finish(y)

    def finish(self, y):
        """The synapse output from the weight sum (float: the sum itself)."""
        return y


@implements(proc=Conv, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class FastConvModelFloat(_FastConvBase):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    a_buf: np.ndarray = LavaPyType(np.ndarray, float)
    weight: np.ndarray = LavaPyType(np.ndarray, float)
    _dtype = np.float64


@implements(proc=Conv, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class FastConvModelFixed(_FastConvBase):
    """Integer version: int64 accumulation, scaled by ``2**weight_exp`` (a right shift with rounding
    for negative exponents: 8-bit mantissas with a shared exponent), output clamped to 24 bits as in
    Lava's ``PyConvModelFixed`` (which itself ignores ``weight_exp``)."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    a_buf: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    weight: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    _dtype = np.int64

    def finish(self, y):
        e = int(self.weight_exp.item()) if np.ndim(self.weight_exp) else int(self.weight_exp)
        return round_shift(y, e).astype(np.int32)
