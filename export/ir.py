"""The spiking graph IR: one small dataclass per primitive, and the graph that holds them.

This is the single description of a deployed network's structure: NIR files are
written from it and read back into it, the PyTorch executor runs it, and the Lava
builder and energy counter walk it.

Time semantics (shared by every node): the graph runs ``T`` spiking steps per
denoiser call, ``dt = 1`` step.  At each step every node maps the **sum of its
incoming edges** (fan-in sums) to its output, in topological order, with no
delay between nodes.  Shapes are ``(C, H, W)`` without batch.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import ClassVar, Iterator

import numpy as np

from sdm.errors import ConfigError, GraphError
from sdm.train.diffusion import ScheduleConfig
from sdm.train.moments import Moments
from sdm.train.neuron import NeuronParams

Shape = tuple[int, int, int]


def _shape(s) -> Shape:
    try:
        if isinstance(s, (str, bytes)) or not all(_is_int(v) for v in s):
            raise TypeError
        s = tuple(int(v) for v in s)
    except TypeError:
        raise GraphError(f"expected a (C, H, W) shape of integers, got {s!r}") from None
    if len(s) != 3 or min(s) < 1:
        raise GraphError(f"expected a (C, H, W) shape, got {s}")
    return s  # type: ignore[return-value]


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _integer(owner: str, name: str, v, low: int) -> int:
    """``v`` as an int >= ``low``; bools, strings and fractions are refused naming ``owner``'s field ``name``."""
    if not _is_int(v) or v < low:
        raise GraphError(f"{owner}: {name} must be an integer >= {low}, got {v!r}")
    return int(v)


def _number(owner: str, name: str, v, positive: bool = False) -> float:
    """``v`` as a finite float (positive when asked); NaN, Inf, bools and strings are refused."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
            or (positive and not v > 0):
        kind = "a positive finite number" if positive else "a finite number"
        raise GraphError(f"{owner}: {name} must be {kind}, got {v!r}")
    return float(v)


def _array(owner: str, name: str, a, ndim: int | None = None, shape: tuple | None = None) -> np.ndarray:
    """``a`` as a numeric numpy array without NaN or Inf (of ``ndim`` dimensions / ``shape`` when given;
    ``None`` in ``shape`` matches any size), or a :class:`GraphError` naming ``owner``'s field ``name``."""
    owner = f"{owner}: " if owner else ""
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a) if isinstance(a, (list, tuple, numbers.Number)) else np.asarray([a], dtype=object)
        except ValueError:  # a ragged list
            a = np.asarray([None], dtype=object)
    if a.dtype.kind not in "fiu":
        raise GraphError(f"{owner}{name} must be a numeric array, got {a.dtype} data")
    if ndim is not None and a.ndim != ndim:
        raise GraphError(f"{owner}{name} must have {ndim} dimension(s), got shape {list(a.shape)}")
    if shape is not None and (a.ndim != len(shape) or any(w is not None and n != w for n, w in zip(a.shape, shape))):
        want = ", ".join("*" if w is None else str(w) for w in shape)
        raise GraphError(f"{owner}{name} has shape {list(a.shape)}, expected [{want}]")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise GraphError(f"{owner}{name} has {'NaN' if np.isnan(a).any() else 'Inf'}")
    return a


@dataclass(frozen=True)
class Origin:
    """Where a node came from in the trained model: the PyTorch module's name and, for a node
    that holds part of it, the channel range ``[start, stop)`` it covers (a neuron group on one
    part of a concatenation, a conv on one part of its input).  ``channels=None``: all of it."""

    module: str
    channels: tuple[int, int] | None = None

    def __post_init__(self):
        if self.channels is not None:
            start, stop = (int(c) for c in self.channels)
            if not 0 <= start < stop:
                raise GraphError(f"{self.module}: bad channel range {self.channels}")
            object.__setattr__(self, "channels", (start, stop))


@dataclass(eq=False)
class Node(ABC):
    """A node of the spiking graph; nodes compare by identity, as NIR's do.

    ``origin`` records the model module a node was lowered from (None for graphs that other
    tools wrote); consumers that map graph nodes back to a model read it instead of parsing names."""

    name: str
    origin: Origin | None = field(default=None, kw_only=True)

    @property
    @abstractmethod
    def shape(self) -> Shape:
        """The output shape (C, H, W)."""

    @property
    def input_shape(self) -> Shape:
        """The shape every incoming edge must have (the fan-in sum's shape)."""
        return self.shape

    @property
    def module(self) -> str:
        """The model module this node came from (its own name when it has no origin)."""
        return self.origin.module if self.origin is not None else self.name


@dataclass(eq=False)
class AnalogInput(Node):
    """Host-provided analog current, identical at every spiking step of a call.

    ``kind == "image"``: the call's main input, direct encoding: the noisy image ``x_t`` of a UNet; for
    Spiking-Diffusion the SDID's token currents, the decoder's code vectors, the encoder's image.
    ``kind == "temb"``: ``temb_proj[block](swish(temb(t)))``, a ``[C]`` vector broadcast over H, W;
    ``block`` names the host-side projection (see :class:`HostParams`).  Inputs take no edges.
    """

    out_shape: Shape
    kind: str = "image"
    block: str = ""

    def __post_init__(self):
        self.out_shape = _shape(self.out_shape)
        if self.kind not in ("image", "temb"):
            raise GraphError(f"{self.name}: unknown analog input kind {self.kind!r}")
        if self.kind == "temb" and not self.block:
            raise GraphError(f"{self.name}: a temb input must name its block")

    @property
    def shape(self) -> Shape:
        return self.out_shape


@dataclass(eq=False)
class Conv(Node):
    """``y = conv2d(x, weight, stride, padding) + bias`` (cross-correlation, PyTorch layout).

    BatchNorm is already folded in: ``weight = s * W``, ``bias = s * b + shift``
    (or ``s * b`` alone when a :class:`TemporalAffine` carries the shift).
    """

    weight: np.ndarray  # (C_out, C_in, kH, kW)
    bias: np.ndarray  # (C_out,)
    stride: int
    padding: int
    in_shape: Shape

    def __post_init__(self):
        self.in_shape = _shape(self.in_shape)
        self.weight = _array(self.name, "weight", self.weight)
        self.bias = _array(self.name, "bias", self.bias)
        if self.weight.ndim != 4 or self.bias.shape != (self.weight.shape[0],):
            raise GraphError(f"{self.name}: weight {self.weight.shape} / bias {self.bias.shape} mismatch")
        if self.weight.shape[1] != self.in_shape[0]:
            raise GraphError(f"{self.name}: weight expects {self.weight.shape[1]} input channels, "
                             f"input has {self.in_shape[0]}")
        self.stride = _integer(self.name, "stride", self.stride, 1)
        self.padding = _integer(self.name, "padding", self.padding, 0)
        if min(self.shape) < 1:
            raise GraphError(f"{self.name}: a {list(self.weight.shape[2:])} kernel with padding {self.padding} "
                             f"does not fit the input {list(self.in_shape)}")

    @property
    def input_shape(self) -> Shape:
        return self.in_shape

    @property
    def shape(self) -> Shape:
        _, h, w = self.in_shape
        k_h, k_w = self.weight.shape[2:]
        out_h = (h + 2 * self.padding - k_h) // self.stride + 1
        out_w = (w + 2 * self.padding - k_w) // self.stride + 1
        return (self.weight.shape[0], out_h, out_w)


@dataclass(eq=False)
class TemporalAffine(Node):
    """TSM gain with the folded BatchNorm shift: ``y[n] = gain[n] * x[n] + offset[c]`` at step n.

    ``gain`` has one value per spiking step (SDM eq. 16); ``offset`` one per channel.
    """

    gain: np.ndarray  # (T,)
    offset: np.ndarray  # (C,)
    out_shape: Shape

    def __post_init__(self):
        self.out_shape = _shape(self.out_shape)
        self.gain = _array(self.name, "gain", self.gain)
        self.offset = _array(self.name, "offset", self.offset)
        if self.gain.ndim != 1 or self.offset.shape != (self.out_shape[0],):
            raise GraphError(f"{self.name}: gain must be (T,) and offset (C,) = ({self.out_shape[0]},), "
                             f"got {self.gain.shape} and {self.offset.shape}")

    @property
    def shape(self) -> Shape:
        return self.out_shape


@dataclass(eq=False)
class IFNeurons(Node):
    """Integrate-and-fire neurons, one per element of ``threshold`` (C, H, W), with the dynamics
    of ``params`` (:class:`sdm.train.neuron.NeuronParams`, the one neuron record)::

        h[n] = decay * v[n-1] + I[n];  s[n] = (h[n] >= threshold);  v[-1] = v_init * threshold
        v[n] = h[n] * (1 - s[n])             reset = "zero" (default)
        v[n] = h[n] - threshold * s[n]       reset = "subtract" (converted models)

    ``signed`` (subtractive reset only) adds inhibitory spikes, with ``c`` the net spike count::

        s-[n] = (h[n] - threshold * s[n] <= -inhibit_margin) and (c[n-1] + s[n] > 0)
        v[n] += threshold * s-[n];  c[n] = c[n-1] + s[n] - s-[n];  output s[n] - s-[n]
    """

    threshold: np.ndarray  # (C, H, W)
    params: NeuronParams = field(default_factory=NeuronParams)

    def __post_init__(self):
        self.threshold = _array(self.name, "threshold", self.threshold)
        if self.threshold.ndim != 3 or not np.all(self.threshold > 0):
            raise GraphError(f"{self.name}: threshold must be a positive (C, H, W) array")
        if not isinstance(self.params, NeuronParams):
            raise GraphError(f"{self.name}: params must be a NeuronParams record")

    decay = property(lambda self: self.params.decay)
    reset = property(lambda self: self.params.reset)
    v_init = property(lambda self: self.params.v_init)
    signed = property(lambda self: self.params.signed)
    inhibit_margin = property(lambda self: self.params.inhibit_margin)

    @property
    def standard(self) -> bool:
        """Whether NIR's own IF/LIF expresses it: hard reset to 0, starting at 0, binary spikes."""
        return self.reset == "zero" and self.v_init == 0.0 and not self.signed

    @property
    def shape(self) -> Shape:
        return _shape(self.threshold.shape)


UPSAMPLE_MODES = ("nearest", "zeros")


@dataclass(eq=False)
class Upsample(Node):
    """Upsampling by an integer ``scale``, output ``(C, scale*H, scale*W)``::

        mode "nearest":  y[c, i, j] = x[c, i // scale, j // scale]
        mode "zeros":    y[c, scale*i, scale*j] = x[c, i, j], 0 elsewhere (zero insertion)

    Zero insertion followed by a stride-1 :class:`Conv` with the flipped kernel is a transposed
    convolution of stride ``scale`` (:func:`sdm.export.lower_sd.transposed_conv`), exactly: the
    inserted zeros carry no spikes and cost no synaptic operations.
    """

    in_shape: Shape
    scale: int = 2
    mode: str = "nearest"

    def __post_init__(self):
        self.in_shape = _shape(self.in_shape)
        self.scale = _integer(self.name, "scale", self.scale, 1)
        if self.mode not in UPSAMPLE_MODES:
            raise GraphError(f"{self.name}: upsample mode must be one of {', '.join(UPSAMPLE_MODES)}, "
                             f"got {self.mode!r}")

    @property
    def input_shape(self) -> Shape:
        return self.in_shape

    @property
    def shape(self) -> Shape:
        c, h, w = self.in_shape
        return (c, h * self.scale, w * self.scale)


@dataclass(eq=False)
class _Stream(Node):
    """A node that passes on the sum of its inputs unchanged."""

    out_shape: Shape

    def __post_init__(self):
        self.out_shape = _shape(self.out_shape)

    @property
    def shape(self) -> Shape:
        return self.out_shape


@dataclass(eq=False)
class Junction(_Stream):
    """A float current that is the sum of its inputs (a residual stream); computes nothing else."""


@dataclass(eq=False)
class Output(_Stream):
    """The graph's per-step analog output, read by the host-side tail."""


NODE_TYPES = (AnalogInput, Conv, TemporalAffine, IFNeurons, Upsample, Junction, Output)


class _RecordError(GraphError):
    """A host record's problem: ``detail`` without the record's name, so a reader can name it its way."""

    def __init__(self, label: str, detail: str):
        super().__init__(f"{label}: {detail}")
        self.detail = detail


class _Arrays:
    """A record of named arrays (host-side layers); ``arrays()`` is how files store it.  Every array is
    numeric and finite, with the shapes its record's ``_check`` requires (checked on construction)."""

    label: ClassVar[str] = "host arrays"
    optional: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        for f in fields(self):
            if getattr(self, f.name) is not None or f.name not in self.optional:
                setattr(self, f.name, self._array(f.name, getattr(self, f.name)))
        self._check()

    def _check(self) -> None:
        """The record's shape rules (each raises through :meth:`_fail`)."""

    def _array(self, name: str, a, shape: tuple | None = None, note: str = "") -> np.ndarray:
        try:
            return _array("", name, a, shape=shape)
        except GraphError as e:
            raise _RecordError(self.label, f"{e} {note}".strip()) from None

    def _fail(self, detail: str):
        raise _RecordError(self.label, detail)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], what: str):
        """The record of a file's ``arrays``; every problem (unknown or missing arrays, shapes, NaN) is a
        :class:`GraphError` that starts with ``what``."""
        if not isinstance(arrays, dict):
            raise GraphError(f"{what}: expected a group of arrays, got {type(arrays).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(arrays) - names
        if unknown:
            raise GraphError(f"{what}: unknown arrays {sorted(unknown)}")
        missing = sorted(names - set(arrays) - set(cls.optional))
        if missing:
            raise GraphError(f"{what}: missing arrays {missing}")
        try:
            return cls(**{k: np.asarray(v) if not isinstance(v, dict) else v for k, v in arrays.items()})
        except _RecordError as e:
            raise GraphError(f"{what}: {e.detail}") from None


@dataclass(eq=False)
class TimeMLP(_Arrays):
    """``temb = fc2_w @ swish(fc1_w @ table[t] + fc1_b) + fc2_b``, once per denoiser call."""

    table: np.ndarray  # [diffusion steps, ch] sinusoid table
    fc1_w: np.ndarray  # [tdim, ch]
    fc1_b: np.ndarray  # [tdim]
    fc2_w: np.ndarray  # [width, tdim]
    fc2_b: np.ndarray  # [width]

    label: ClassVar[str] = "host time_mlp"

    def _check(self) -> None:
        if self.table.ndim != 2:
            self._fail(f"table must be a [steps, ch] array, got shape {list(self.table.shape)}")
        tdim = self._array("fc1_w", self.fc1_w, (None, self.table.shape[1]),
                           f"(the table has {self.table.shape[1]} columns)").shape[0]
        self._array("fc1_b", self.fc1_b, (tdim,), f"(fc1_w has {tdim} rows)")
        width = self._array("fc2_w", self.fc2_w, (None, tdim), f"(fc1_w has {tdim} rows)").shape[0]
        self._array("fc2_b", self.fc2_b, (width,), f"(fc2_w has {width} rows)")

    @property
    def width(self) -> int:
        """The size of ``temb``, what every block projection reads."""
        return int(self.fc2_w.shape[0])


@dataclass(eq=False)
class BlockProjection(_Arrays):
    """A residual block's time-embedding current ``w @ swish(temb) + b`` (``[C]``, broadcast over H, W)."""

    w: np.ndarray  # [C, temb width]
    b: np.ndarray  # [C]

    label: ClassVar[str] = "host temb_proj"

    def _check(self) -> None:
        if self.w.ndim != 2:
            self._fail(f"w must be a [C, temb width] array, got shape {list(self.w.shape)}")
        self._array("b", self.b, (self.w.shape[0],), f"(w has {self.w.shape[0]} rows)")


@dataclass(eq=False)
class Tail(_Arrays):
    """The analog readout after the spiking graph, per spiking step::

        h = gain * conv(swish(bn_scale * x + bn_shift))          (gain = conv_gain[t], TSM; else 1)
        h = h + swish(out_bn_scale * out_conv(h) + out_bn_shift)
    """

    bn_scale: np.ndarray  # [ch]: the graph's output channels
    bn_shift: np.ndarray  # [ch]
    conv_w: np.ndarray  # [img_ch, ch, k, k], k odd
    conv_b: np.ndarray  # [img_ch]
    out_w: np.ndarray  # [img_ch, img_ch, k, k], k odd
    out_b: np.ndarray  # [img_ch]
    out_bn_scale: np.ndarray  # [img_ch]
    out_bn_shift: np.ndarray  # [img_ch]
    conv_gain: np.ndarray | None = None  # [T] TSM gain of the tail conv

    label: ClassVar[str] = "host tail"
    optional: ClassVar[tuple[str, ...]] = ("conv_gain",)

    def _check(self) -> None:
        if self.bn_scale.ndim != 1:
            self._fail(f"bn_scale must be a [ch] array, got shape {list(self.bn_scale.shape)}")
        ch = self.bn_scale.shape[0]
        self._array("bn_shift", self.bn_shift, (ch,))
        img_ch = self._array("conv_w", self.conv_w, (None, ch, None, None), f"(bn_scale has {ch} channels)").shape[0]
        note = f"(conv_w writes {img_ch} channel(s))"
        self._array("out_w", self.out_w, (img_ch, img_ch, None, None), note)
        for name in ("conv_w", "out_w"):
            k = getattr(self, name).shape[2:]
            if k[0] != k[1] or k[0] % 2 == 0:
                self._fail(f"{name} must have a square kernel of odd size, got {list(k)}")
        for name in ("conv_b", "out_b", "out_bn_scale", "out_bn_shift"):
            self._array(name, getattr(self, name), (img_ch,), note)
        if self.conv_gain is not None and self.conv_gain.ndim != 1:
            self._fail(f"conv_gain must be a [T] array, got shape {list(self.conv_gain.shape)}")

    @property
    def channels(self) -> int:
        return int(self.bn_scale.size)


READOUTS = ("membrane", "mean")


@dataclass(eq=False)
class HostParams:
    """Everything that runs on the host around the spiking graph, once per denoiser call.

    The time embedding (:class:`TimeMLP`) feeds each block's projection (``temb_proj[block]``,
    a :class:`BlockProjection`), the graph's per-step output goes through the :class:`Tail`,
    then ``eps = sum_t readout_decay^(T-1-t) h[t]``.  ``readout = "mean"`` (converted models):
    the tail runs once on ``mean_t x[t]`` and ``eps`` is its output.  ``schedule`` is the
    diffusion schedule the model was trained with; ``moments`` the model's noise moments for
    Analytic-DPM (:mod:`sdm.train.moments`), when ``sdm moments`` has estimated them.

    Construction checks every field and the records against each other (:meth:`check`); the
    checks against the spiking graph are :meth:`SNNGraph.validate`'s.
    """

    T: int
    img_shape: Shape
    time_mlp: TimeMLP
    temb_proj: dict[str, BlockProjection]
    tail: Tail
    readout_decay: float = 0.8
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    theta: float = 1.0
    threshold_scale: float = 1.0
    readout: str = "membrane"  # membrane | mean
    moments: Moments | None = None

    def __post_init__(self):
        try:
            self.img_shape = _shape(self.img_shape)
        except GraphError as e:
            raise GraphError(f"host: img_shape: {e}") from None
        self.T = _integer("host", "T", self.T, 1)
        self.readout_decay = _number("host", "readout_decay", self.readout_decay)
        self.theta = _number("host", "theta", self.theta, positive=True)
        self.threshold_scale = _number("host", "threshold_scale", self.threshold_scale, positive=True)
        if self.readout not in READOUTS:
            raise GraphError(f"host: readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")
        self.check()

    def check(self) -> None:
        """The records' types and their agreement: the time-embedding table covers the schedule, every
        projection reads the time MLP's output, the tail writes the image's channels, the TSM gain has T
        steps and the moments lie within the schedule."""
        for name, cls in (("time_mlp", TimeMLP), ("tail", Tail), ("schedule", ScheduleConfig)):
            if not isinstance(getattr(self, name), cls):
                raise GraphError(f"host: {name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.temb_proj, dict) or not all(isinstance(p, BlockProjection)
                                                            for p in self.temb_proj.values()):
            raise GraphError("host: temb_proj must map block names to BlockProjection records")
        rows, steps = self.time_mlp.table.shape[0], self.schedule.steps
        if rows < steps:
            raise GraphError(f"host: time_mlp table has {rows} rows, fewer than the schedule's {steps} steps")
        for block, proj in self.temb_proj.items():
            if proj.w.shape[1] != self.time_mlp.width:
                raise GraphError(f"host: temb_proj {block} w has shape {list(proj.w.shape)}: it must read the "
                                 f"time MLP's {self.time_mlp.width} outputs")
        if self.tail.conv_w.shape[0] != self.img_shape[0]:
            raise GraphError(f"host: tail conv_w has shape {list(self.tail.conv_w.shape)}: it must write the "
                             f"image's {self.img_shape[0]} channel(s) (img_shape {list(self.img_shape)})")
        gain = self.tail.conv_gain
        if gain is not None and gain.shape[0] != self.T:
            raise GraphError(f"host: tail conv_gain has {gain.shape[0]} steps, T is {self.T}")
        if self.moments is not None:
            if not isinstance(self.moments, Moments):
                raise GraphError(f"host: moments must be a Moments record, got {type(self.moments).__name__}")
            try:
                self.moments.check_schedule(steps)
            except ConfigError as e:
                raise GraphError(f"host: {e}") from None


@dataclass(eq=False)
class SNNGraph:
    nodes: dict[str, Node]
    edges: list[tuple[str, str]]
    host: HostParams | None = None  # None for plain spiking networks (no denoiser host side)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check names, edges and shapes; raises :class:`GraphError` naming the node."""
        for name, node in self.nodes.items():
            if name != node.name:
                raise GraphError(f"node key {name!r} differs from its name {node.name!r}")
            if not isinstance(node, NODE_TYPES):
                raise GraphError(f"{name}: unsupported node type {type(node).__name__}")
        seen = set()
        for src, dst in self.edges:
            for end in (src, dst):
                if end not in self.nodes:
                    raise GraphError(f"edge ({src} -> {dst}) names unknown node {end!r}")
            if (src, dst) in seen:
                raise GraphError(f"duplicate edge ({src} -> {dst})")
            seen.add((src, dst))
            if isinstance(self.nodes[dst], AnalogInput):
                raise GraphError(f"edge ({src} -> {dst}): inputs take no edges")
            expected = self.input_shape(dst)
            if self.nodes[src].shape != expected:
                raise GraphError(f"shape mismatch on edge ({src} -> {dst}): {list(self.nodes[src].shape)} "
                                 f"-> {list(expected)}")
        for name, node in self.nodes.items():
            if not isinstance(node, AnalogInput) and not self.predecessors(name):
                raise GraphError(f"{name}: has no input edges")
        self.topological_order()  # raises on cycles
        if self.host is not None:
            self._validate_host()

    def _validate_host(self) -> None:
        """The host side against the graph: the tail reads the graph's output channels and writes an
        image-sized eps, the image input is ``img_shape``, every time-embedding input has a projection of
        its channel count, and every TSM gain has ``T`` steps."""
        host = self.host
        if not isinstance(host, HostParams):
            raise GraphError(f"host must be a HostParams record, got {type(host).__name__}")
        host.check()
        out = self.output
        c, h, w = out.shape
        if host.tail.channels != c:
            raise GraphError(f"host: tail conv_w reads {host.tail.channels} channels, the graph output {out.name!r} "
                             f"has {c}")
        if (h, w) != host.img_shape[1:]:
            raise GraphError(f"the graph output {out.name!r} is {h}x{w}, host img_shape is {list(host.img_shape)}")
        for node in self.of_type(AnalogInput):
            if node.kind == "image" and node.shape != host.img_shape:
                raise GraphError(f"input {node.name!r} has shape {list(node.shape)}, host img_shape is "
                                 f"{list(host.img_shape)}")
            if node.kind != "temb":
                continue
            proj = host.temb_proj.get(node.block)
            if proj is None:
                raise GraphError(f"input {node.name!r} names block {node.block!r} with no projection in host temb_proj")
            if proj.w.shape[0] != node.shape[0]:
                raise GraphError(f"host: temb_proj {node.block} w has shape {list(proj.w.shape)}: it must write the "
                                 f"{node.shape[0]} channels of input {node.name!r}")
        for node in self.of_type(TemporalAffine):
            if node.gain.shape[0] != host.T:
                raise GraphError(f"{node.name}: gain has {node.gain.shape[0]} steps, host T is {host.T}")

    def input_shape(self, name: str) -> Shape:
        return self.nodes[name].input_shape

    def predecessors(self, name: str) -> list[str]:
        return [s for s, d in self.edges if d == name]

    def successors(self, name: str) -> list[str]:
        return [d for s, d in self.edges if s == name]

    def topological_order(self) -> list[str]:
        indeg = {n: 0 for n in self.nodes}
        for _, d in self.edges:
            indeg[d] += 1
        ready = [n for n in self.nodes if indeg[n] == 0]
        order = []
        while ready:
            n = ready.pop(0)
            order.append(n)
            for d in self.successors(n):
                indeg[d] -= 1
                if indeg[d] == 0:
                    ready.append(d)
        if len(order) != len(self.nodes):
            raise GraphError("the graph has a cycle; recurrent graphs are not supported")
        return order

    def of_type(self, cls) -> Iterator[Node]:
        return (n for n in self.nodes.values() if isinstance(n, cls))

    @property
    def output(self) -> Output:
        outs = list(self.of_type(Output))
        if len(outs) != 1:
            raise GraphError(f"expected one Output node, found {len(outs)}")
        return outs[0]

    def spike_source(self, conv: str) -> tuple[IFNeurons, Upsample | None] | None:
        """The neuron group whose spikes conv ``conv`` reads, directly or through an upsampling
        (returned too); None for a conv on analog currents."""
        src = self.nodes[self.predecessors(conv)[0]]
        up = None
        if isinstance(src, Upsample):
            up, src = src, self.nodes[self.predecessors(src.name)[0]]
        return (src, up) if isinstance(src, IFNeurons) else None

    def num_parameters(self) -> int:
        n = 0
        for node in self.nodes.values():
            if isinstance(node, Conv):
                n += node.weight.size + node.bias.size
            elif isinstance(node, TemporalAffine):
                n += node.gain.size + node.offset.size
        return n
