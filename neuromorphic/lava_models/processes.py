"""Lava processes the spiking UNet and the Spiking-Diffusion models need beyond Lava's core set, and their CPU models.

Timing conventions (Lava's LoihiProtocol): a synapse process (Conv, Dense, Sparse) sends
in step k what it computed from its input of step k-1, so every synapse stage adds one
step of latency.  Neurons and the relays below receive and send within the same step
(zero latency), as Lava's LIF does.  All vectors are in Lava's (W, H, C) layout.

Process                Loihi 2 counterpart (docs/lava-mapping.md)
---------------------  ---------------------------------------------------------------
RecordingLIFReset      LIF with periodic reset (Lava's ``LIFReset`` dynamics) + a probe
AnalogJunction         dendritic accumulation of several synaptic inputs plus a bias,
                       forwarded as graded spikes
TemporalGain           per-time-step synaptic scaling (TSM gain) of graded spikes
UpsampleNearest        fan-out connectivity of nearest-neighbour upsampling
UpsampleZeros          connectivity of zero insertion (each spike to one position of the
                       s-times larger grid; with the next conv, a transposed convolution)
DelayLine              synaptic delay of graded values (Loihi 2: per-synapse delays)
MemmapSource           host input (image, time embedding) read from a memory-mapped file
ChannelDense           a Dense synapse whose weights a channel's neurons share (time embedding)

The synapse models (``FastConvModel*``, ``ChannelDense``) also expose their arithmetic without the
step of latency (``synapse``), and every model here takes a leading batch dimension, so that a
fused stage (:mod:`.fused_model`) runs these same models layer after layer.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import AbstractPyLifModelFixed, AbstractPyLifModelFloat
from lava.proc.lif.process import LIFReset

from sdm.neuromorphic.fixed_point import round_shift


def open_probe(path: str) -> np.ndarray:
    """A probe file made by the host with ``np.lib.format.open_memmap``, opened for writing.

    Probes bypass Lava's Var.get, which moves large arrays in many small messages (seconds per
    call for a UNet's spikes); a blocking ``run`` returns only after every process model has
    finished its steps, so the host reads complete records."""
    return np.load(path, mmap_mode="r+")


class RecordingLIFReset(LIFReset):
    """``LIFReset`` that also records, for the current run, each spike of its window
    (``record="spikes"``: a ``(window, W, H, C)`` probe file at ``probe``), or nothing.

    The window of a run starts at local step ``window_start`` (the layer's depth) and lasts
    ``window`` steps; ``run_length`` is the number of Lava steps of one run.

    ``reset`` and ``v_init`` are the IR neuron's (``train/neuron.py``): at each window reset
    ``u = 0, v = v_init * vth``; after a spike ``v = 0`` (``reset="zero"``, Lava's LIF) or
    ``v = v - vth`` (``reset="subtract"``, converted models).  ``signed`` neurons also send -1
    (a 2-bit graded spike on Loihi 2) when ``v <= -inhibit_margin`` after the step while their
    net spike count of the window is positive, and take ``vth`` back (``train/neuron.py``);
    ``inhibit_margin`` is in state units.
    """

    def __init__(self, *, window_start: int, window: int, run_length: int, probe: str = "",
                 reset: str = "zero", v_init: float = 0.0, signed: bool = False, inhibit_margin: float = 0.0,
                 **kwargs):
        if reset not in ("zero", "subtract"):
            raise ValueError(f"reset must be zero or subtract, got {reset!r}")
        if signed and reset != "subtract":
            raise ValueError("signed spikes need reset='subtract'")
        super().__init__(**kwargs)
        self.proc_params["window_start"] = window_start
        self.proc_params["window"] = window
        self.proc_params["run_length"] = run_length
        self.proc_params["probe"] = probe
        self.proc_params["reset"] = reset
        self.proc_params["v_init"] = float(v_init)
        self.proc_params["signed"] = bool(signed)
        self.proc_params["inhibit_margin"] = inhibit_margin


class _RecordingMixin:
    """LIFReset's step (reset at the window phase, integrate, fire, reset spiking neurons),
    plus the record.  Lava forbids subclassing its decorated models, so the LIFReset
    specifics (reset schedule, threshold test) are restated here on Lava's abstract bases."""

    def _init_recording(self, proc_params):
        self.reset_interval = proc_params["reset_interval"]
        self.reset_offset = proc_params["reset_offset"] % self.reset_interval
        self.window_start = proc_params["window_start"]
        self.window = proc_params["window"]
        self.run_length = proc_params["run_length"]
        self.probe = open_probe(proc_params["probe"]) if proc_params["probe"] else None
        self.subtract = proc_params.get("reset", "zero") == "subtract"
        self.v_init = proc_params.get("v_init", 0.0)
        self.signed = proc_params.get("signed", False)
        self.inhibit_margin = proc_params.get("inhibit_margin", 0.0)
        self.net_count = None  # signed neurons: spikes minus inhibitory spikes in the current window

    def _before_dynamics(self):
        pass

    def _threshold(self):
        """The threshold ``v`` is compared with (state units)."""
        return self.vth

    def _window_reset(self):
        self.u *= 0
        self.v *= 0
        if self.v_init:
            self.v += self._start_voltage()
        if self.signed:
            self.net_count = np.zeros(self.v.shape, dtype=np.int64)

    def _start_voltage(self):
        return self.v_init * self._threshold()

    def _record(self, s_out):
        if self.probe is None:
            return
        i = (self.time_step - 1) % self.run_length - self.window_start
        if 0 <= i < self.window:
            self.probe[i] = s_out

    def run_spk(self):
        a_in = self.a_in.recv()
        self._before_dynamics()
        if (self.time_step % self.reset_interval) == self.reset_offset:
            self._window_reset()
        self.subthr_dynamics(activation_in=a_in)
        s_out = self.spiking_activation()
        if self.subtract:
            self.v[s_out] -= self._threshold()
        else:
            self.reset_voltage(spike_vector=s_out)
        if self.signed:
            s_out = self._inhibit(s_out)
        self._record(s_out)
        self.s_out.send(s_out)

    def _inhibit(self, pos):
        """Inhibitory spikes of a signed neuron: returns ``pos - neg`` as integers."""
        if self.net_count is None:
            self.net_count = np.zeros(self.v.shape, dtype=np.int64)
        self.net_count += pos
        neg = (self.v <= -self.inhibit_margin) & (self.net_count > 0)
        self.v[neg] += self._threshold()
        self.net_count -= neg
        return pos.astype(np.int64) - neg


@implements(proc=RecordingLIFReset, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyRecordingLIFResetFloat(_RecordingMixin, AbstractPyLifModelFloat):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    vth: float = LavaPyType(float, float)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self._init_recording(proc_params)

    def spiking_activation(self):
        return self.v > self.vth


@implements(proc=RecordingLIFReset, protocol=LoihiProtocol)
@requires(CPU)
@tag("bit_accurate_loihi", "fixed_pt")
class PyRecordingLIFResetFixed(_RecordingMixin, AbstractPyLifModelFixed):
    """Loihi's integer LIF (24-bit u, v; 12-bit decays; 13-bit bias mantissa; threshold << 6)."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    vth: int = LavaPyType(int, np.int32, precision=17)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self._init_recording(proc_params)
        self.effective_vth = 0

    def scale_threshold(self):
        self.effective_vth = np.left_shift(self.vth, self.vth_shift)
        self.isthrscaled = True

    def spiking_activation(self):
        return self.v > self.effective_vth

    def _threshold(self):
        return self.effective_vth

    def _start_voltage(self):
        return int(round(self.v_init * self.effective_vth))

    def _before_dynamics(self):
        # bias is rescaled every step because it is set between runs
        self.scale_bias()
        if not self.isthrscaled:
            self.scale_threshold()


# ----- graded relays ----------------------------------------------------------------------
class _Relay(AbstractProcess):
    def __init__(self, *, shape, out_shape=None, **kwargs):
        super().__init__(shape=shape, **kwargs)
        self.a_in = InPort(shape=shape)
        self.a_out = OutPort(shape=out_shape or shape)


class AnalogJunction(_Relay):
    """``y = sum of inputs + bias``: a residual stream (float current) with its constant part.

    With a ``probe`` file it also records its output over the run's window (the graph output)."""

    def __init__(self, *, shape, bias=None, window_start=0, window=0, run_length=1, probe="", **kwargs):
        super().__init__(shape=shape, window_start=window_start, window=window, run_length=run_length,
                         probe=probe, **kwargs)
        self.bias = Var(shape=shape, init=np.zeros(shape) if bias is None else bias)


class _PyAnalogJunction(PyLoihiProcessModel):
    def run_spk(self):
        y = self.a_in.recv() + self.bias
        if self.proc_params["probe"]:
            if not hasattr(self, "_probe"):
                self._probe = open_probe(self.proc_params["probe"])
            i = (self.time_step - 1) % self.proc_params["run_length"] - self.proc_params["window_start"]
            if 0 <= i < self.proc_params["window"]:
                self._probe[i] = y
        self.a_out.send(y)


@implements(proc=AnalogJunction, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyAnalogJunctionFloat(_PyAnalogJunction):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    bias: np.ndarray = LavaPyType(np.ndarray, float)


@implements(proc=AnalogJunction, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyAnalogJunctionFixed(_PyAnalogJunction):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    bias: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)


class TemporalGain(_Relay):
    """TSM: ``y = gain[n] * (x + bias_in) + bias_out`` with ``n = (local step - window_start) mod T``."""

    def __init__(self, *, shape, gain, bias_in, bias_out, window_start, **kwargs):
        super().__init__(shape=shape, window_start=window_start, **kwargs)
        self.gain = Var(shape=gain.shape, init=gain)
        self.bias_in = Var(shape=shape, init=bias_in)
        self.bias_out = Var(shape=shape, init=bias_out)


class _PyTemporalGain(PyLoihiProcessModel):
    def run_spk(self):
        n = (self.time_step - 1 - self.proc_params["window_start"]) % len(self.gain)
        self.a_out.send(self.finish(self.gain[n] * (self.a_in.recv() + self.bias_in)) + self.bias_out)

    def finish(self, y):
        return y


@implements(proc=TemporalGain, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTemporalGainFloat(_PyTemporalGain):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    gain: np.ndarray = LavaPyType(np.ndarray, float)
    bias_in: np.ndarray = LavaPyType(np.ndarray, float)
    bias_out: np.ndarray = LavaPyType(np.ndarray, float)


@implements(proc=TemporalGain, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTemporalGainFixed(_PyTemporalGain):
    """Graded values in state units; the gain product is rounded back to an integer."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    gain: np.ndarray = LavaPyType(np.ndarray, float)
    bias_in: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    bias_out: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def finish(self, y):
        return np.round(y).astype(np.int32)


class UpsampleNearest(_Relay):
    """``y[i, j, c] = x[i // s, j // s, c]`` (spikes stay binary)."""

    def __init__(self, *, shape, scale=2, **kwargs):
        w, h, c = shape
        super().__init__(shape=shape, out_shape=(w * scale, h * scale, c), scale=scale, **kwargs)


class _PyUpsampleNearest(PyLoihiProcessModel):
    def run_spk(self):
        s = self.proc_params["scale"]
        # W and H counted from the end: a fused stage's leading batch dimension passes through
        self.a_out.send(self.a_in.recv().repeat(s, axis=-3).repeat(s, axis=-2))


@implements(proc=UpsampleNearest, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyUpsampleNearestFloat(_PyUpsampleNearest):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)


@implements(proc=UpsampleNearest, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyUpsampleNearestFixed(_PyUpsampleNearest):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)


class UpsampleZeros(_Relay):
    """Zero insertion: ``y[s*i, s*j, c] = x[i, j, c]``, 0 elsewhere; output ``(s*W, s*H, C)`` (the IR's
    ``Upsample(mode="zeros")``).  Before a stride-1 conv with the flipped kernel it makes a transposed
    convolution of stride ``s``; the inserted zeros are no spikes (spikes stay binary, or 2-bit signed)."""

    def __init__(self, *, shape, scale=2, **kwargs):
        w, h, c = shape
        super().__init__(shape=shape, out_shape=(w * scale, h * scale, c), scale=scale, **kwargs)


class _PyUpsampleZeros(PyLoihiProcessModel):
    def run_spk(self):
        s, x = self.proc_params["scale"], self.a_in.recv()
        # W and H counted from the end: a fused stage's leading batch dimension passes through
        y = np.zeros((*x.shape[:-3], x.shape[-3] * s, x.shape[-2] * s, x.shape[-1]), dtype=x.dtype)
        y[..., ::s, ::s, :] = x
        self.a_out.send(y)


@implements(proc=UpsampleZeros, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyUpsampleZerosFloat(_PyUpsampleZeros):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)


@implements(proc=UpsampleZeros, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyUpsampleZerosFixed(_PyUpsampleZeros):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)


class DelayLine(_Relay):
    """``y[k] = x[k - delay]`` (zeros for the first ``delay`` steps)."""

    def __init__(self, *, shape, delay: int, **kwargs):
        if delay < 1:
            raise ValueError(f"delay must be >= 1, got {delay}")
        super().__init__(shape=shape, delay=delay, **kwargs)


class _PyDelayLine(PyLoihiProcessModel):
    def run_spk(self):
        if not hasattr(self, "_fifo"):
            zero = np.zeros(self.a_out.shape, dtype=self._dtype)
            self._fifo = deque(zero.copy() for _ in range(self.proc_params["delay"]))
        self._fifo.append(self.a_in.recv())
        self.a_out.send(self._fifo.popleft())


@implements(proc=DelayLine, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyDelayLineFloat(_PyDelayLine):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    _dtype = np.float64


@implements(proc=DelayLine, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyDelayLineFixed(_PyDelayLine):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    _dtype = np.int32


# ----- inputs through memory-mapped files --------------------------------------------------------
class MemmapSource(AbstractProcess):
    """A graded input read from a ``.npy`` file the host writes before every run (no ``Var.set``).

    The file holds ``(images, *shape)``; in step ``k`` (from 1) of a run the process sends image
    ``((k - 1) mod (images * repeat)) // repeat``: each image is repeated for ``repeat`` steps (the
    T spiking steps of direct encoding), then the next one of the batch, as the window of a
    pipelined batch expects.  ``repeat = images = 1``: the same vector every step (the time embedding).

    ``Var.set`` moves one message per value through the runtime service (0.1-0.6 s per call for
    an image and the time embedding) and is refused under the asynchronous protocol; the file is
    shared memory, read in the step that needs it."""

    def __init__(self, *, shape, path: str, images: int = 1, repeat: int = 1, **kwargs):
        super().__init__(shape=shape, path=path, images=images, repeat=repeat, **kwargs)
        self.s_out = OutPort(shape=shape)


class _PyMemmapSource(PyLoihiProcessModel):
    def run_spk(self):
        if not hasattr(self, "_data"):
            self._data = np.load(self.proc_params["path"], mmap_mode="r")
        p = self.proc_params
        self.s_out.send(self._data[((self.time_step - 1) % (p["images"] * p["repeat"])) // p["repeat"]])


@implements(proc=MemmapSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyMemmapSourceFloat(_PyMemmapSource):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)


@implements(proc=MemmapSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyMemmapSourceFixed(_PyMemmapSource):
    """Integer state units (the host quantised them; as Lava's fixed-point RingBuffer, int32)."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32)


# ----- time-embedding synapse ----------------------------------------------------------------
class ChannelDense(AbstractProcess):
    """Dense synapse whose output is one value per channel, repeated over all (W, H) positions:
    ``a_out[w, h, c] = sum_k weight[c, k] * s_in[k]``, one step of latency like Lava's Dense.

    It carries a block's time-embedding projection (graded input ``swish(temb)``) to every
    neuron of a channel; on Loihi 2 this is a Dense layer whose weights are shared by the
    neurons of a channel."""

    def __init__(self, *, weight, out_shape, weight_exp: int = 0, **kwargs):
        super().__init__(out_shape=out_shape, **kwargs)
        self.s_in = InPort(shape=(weight.shape[1],))
        self.a_out = OutPort(shape=out_shape)
        self.weight = Var(shape=weight.shape, init=weight)
        self.weight_exp = Var(shape=(1,), init=weight_exp)


class _PyChannelDense(PyLoihiProcessModel):
    def run_spk(self):
        if not hasattr(self, "_buf"):
            self._buf = np.zeros(self.a_out.shape, dtype=self._dtype)
        self.a_out.send(self._buf)
        self._buf = self.synapse(self.s_in.recv())

    def synapse(self, s_in: np.ndarray) -> np.ndarray:
        """The output for input ``s_in`` without the step of latency (what a fused stage uses at once)."""
        y = self.weight.astype(self._dtype) @ s_in.astype(self._dtype)
        return np.broadcast_to(self.scale(y), self.a_out.shape).copy()

    def scale(self, y):
        return y


@implements(proc=ChannelDense, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyChannelDenseFloat(_PyChannelDense):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    weight: np.ndarray = LavaPyType(np.ndarray, float)
    weight_exp: np.ndarray = LavaPyType(np.ndarray, np.int32)
    _dtype = np.float64


@implements(proc=ChannelDense, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyChannelDenseFixed(_PyChannelDense):
    """Integer weights (mantissa) times graded input, scaled by ``2**weight_exp`` with rounding."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    weight: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=9)
    weight_exp: np.ndarray = LavaPyType(np.ndarray, np.int32)
    _dtype = np.int64

    def scale(self, y):
        return round_shift(y, int(self.weight_exp[0])).astype(np.int32)
