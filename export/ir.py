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

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Iterator

import numpy as np

from sdm.errors import GraphError
from sdm.train.diffusion import ScheduleConfig
from sdm.train.moments import Moments
from sdm.train.neuron import NeuronParams

Shape = tuple[int, int, int]


def _shape(s) -> Shape:
    s = tuple(int(v) for v in s)
    if len(s) != 3 or min(s) < 1:
        raise GraphError(f"expected a (C, H, W) shape, got {s}")
    return s  # type: ignore[return-value]


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

    ``kind == "image"``: the noisy image ``x_t`` (direct encoding).
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
        if self.weight.ndim != 4 or self.bias.shape != (self.weight.shape[0],):
            raise GraphError(f"{self.name}: weight {self.weight.shape} / bias {self.bias.shape} mismatch")
        if self.weight.shape[1] != self.in_shape[0]:
            raise GraphError(f"{self.name}: weight expects {self.weight.shape[1]} input channels, "
                             f"input has {self.in_shape[0]}")
        if self.stride < 1 or self.padding < 0:
            raise GraphError(f"{self.name}: bad stride {self.stride} / padding {self.padding}")

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


@dataclass(eq=False)
class Upsample(Node):
    """Nearest-neighbour upsampling: ``y[c, i, j] = x[c, i // scale, j // scale]``."""

    in_shape: Shape
    scale: int = 2

    def __post_init__(self):
        self.in_shape = _shape(self.in_shape)
        if self.scale < 1:
            raise GraphError(f"{self.name}: scale must be >= 1")

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


class _Arrays:
    """A record of named arrays (host-side layers); ``arrays()`` is how files store it."""

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], what: str):
        names = {f.name for f in fields(cls)}
        unknown = set(arrays) - names
        if unknown:
            raise GraphError(f"{what}: unknown arrays {sorted(unknown)}")
        return cls(**{k: np.asarray(v) for k, v in arrays.items()})


@dataclass(eq=False)
class TimeMLP(_Arrays):
    """``temb = fc2_w @ swish(fc1_w @ table[t] + fc1_b) + fc2_b``, once per denoiser call."""

    table: np.ndarray  # [diffusion steps, ch] sinusoid table
    fc1_w: np.ndarray
    fc1_b: np.ndarray
    fc2_w: np.ndarray
    fc2_b: np.ndarray


@dataclass(eq=False)
class BlockProjection(_Arrays):
    """A residual block's time-embedding current ``w @ swish(temb) + b`` (``[C]``, broadcast over H, W)."""

    w: np.ndarray
    b: np.ndarray


@dataclass(eq=False)
class Tail(_Arrays):
    """The analog readout after the spiking graph, per spiking step::

        h = gain * conv(swish(bn_scale * x + bn_shift))          (gain = conv_gain[t], TSM; else 1)
        h = h + swish(out_bn_scale * out_conv(h) + out_bn_shift)
    """

    bn_scale: np.ndarray
    bn_shift: np.ndarray
    conv_w: np.ndarray
    conv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    out_bn_scale: np.ndarray
    out_bn_shift: np.ndarray
    conv_gain: np.ndarray | None = None  # [T] TSM gain of the tail conv

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
        self.img_shape = _shape(self.img_shape)
        if self.T < 1:
            raise GraphError(f"host: T must be >= 1, got {self.T}")
        if self.readout not in READOUTS:
            raise GraphError(f"host: readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")


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
