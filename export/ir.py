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

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

Shape = tuple[int, int, int]


def _shape(s) -> Shape:
    s = tuple(int(v) for v in s)
    if len(s) != 3 or min(s) < 1:
        raise ValueError(f"expected a (C, H, W) shape, got {s}")
    return s  # type: ignore[return-value]


@dataclass
class Node:
    name: str

    @property
    def shape(self) -> Shape:  # output shape
        raise NotImplementedError


@dataclass
class AnalogInput(Node):
    """Host-provided analog current, identical at every spiking step of a call.

    ``kind == "image"``: the noisy image ``x_t`` (direct encoding).
    ``kind == "temb"``: ``temb_proj[block](swish(temb(t)))``, a ``[C]`` vector broadcast over H, W;
    ``block`` names the host-side projection (see :class:`HostParams`).
    """

    out_shape: Shape
    kind: str = "image"
    block: str = ""

    def __post_init__(self):
        self.out_shape = _shape(self.out_shape)
        if self.kind not in ("image", "temb"):
            raise ValueError(f"{self.name}: unknown analog input kind {self.kind!r}")
        if self.kind == "temb" and not self.block:
            raise ValueError(f"{self.name}: a temb input must name its block")

    @property
    def shape(self) -> Shape:
        return self.out_shape


@dataclass
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
            raise ValueError(f"{self.name}: weight {self.weight.shape} / bias {self.bias.shape} mismatch")
        if self.weight.shape[1] != self.in_shape[0]:
            raise ValueError(f"{self.name}: weight expects {self.weight.shape[1]} input channels, "
                             f"input has {self.in_shape[0]}")
        if self.stride < 1 or self.padding < 0:
            raise ValueError(f"{self.name}: bad stride {self.stride} / padding {self.padding}")

    @property
    def shape(self) -> Shape:
        _, h, w = self.in_shape
        k_h, k_w = self.weight.shape[2:]
        out_h = (h + 2 * self.padding - k_h) // self.stride + 1
        out_w = (w + 2 * self.padding - k_w) // self.stride + 1
        return (self.weight.shape[0], out_h, out_w)


@dataclass
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
            raise ValueError(f"{self.name}: gain must be (T,) and offset (C,) = ({self.out_shape[0]},), "
                             f"got {self.gain.shape} and {self.offset.shape}")

    @property
    def shape(self) -> Shape:
        return self.out_shape


@dataclass
class IFNeurons(Node):
    """Integrate-and-fire neurons, one per element of ``threshold`` (C, H, W)::

        h[n] = decay * v[n-1] + I[n];  s[n] = (h[n] >= threshold);  v[-1] = v_init * threshold
        v[n] = h[n] * (1 - s[n])             reset = "zero" (default)
        v[n] = h[n] - threshold * s[n]       reset = "subtract" (converted models)

    ``signed`` (subtractive reset only) adds inhibitory spikes, with ``c`` the net spike count::

        s-[n] = (h[n] - threshold * s[n] <= -1e-3) and (c[n-1] + s[n] > 0)
        v[n] += threshold * s-[n];  c[n] = c[n-1] + s[n] - s-[n];  output s[n] - s-[n]
    """

    threshold: np.ndarray  # (C, H, W)
    decay: float = 1.0
    reset: str = "zero"
    v_init: float = 0.0  # fraction of the threshold
    signed: bool = False

    def __post_init__(self):
        if self.threshold.ndim != 3 or not np.all(self.threshold > 0):
            raise ValueError(f"{self.name}: threshold must be a positive (C, H, W) array")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"{self.name}: decay must be in (0, 1], got {self.decay}")
        if self.reset not in ("zero", "subtract"):
            raise ValueError(f"{self.name}: reset must be zero or subtract, got {self.reset!r}")
        if self.signed and self.reset != "subtract":
            raise ValueError(f"{self.name}: signed spikes need reset = subtract")

    @property
    def shape(self) -> Shape:
        return _shape(self.threshold.shape)


@dataclass
class Upsample(Node):
    """Nearest-neighbour upsampling: ``y[c, i, j] = x[c, i // scale, j // scale]``."""

    in_shape: Shape
    scale: int = 2

    def __post_init__(self):
        self.in_shape = _shape(self.in_shape)
        if self.scale < 1:
            raise ValueError(f"{self.name}: scale must be >= 1")

    @property
    def shape(self) -> Shape:
        c, h, w = self.in_shape
        return (c, h * self.scale, w * self.scale)


@dataclass
class Junction(Node):
    """A float current that is the sum of its inputs (a residual stream); computes nothing else."""

    out_shape: Shape

    def __post_init__(self):
        self.out_shape = _shape(self.out_shape)

    @property
    def shape(self) -> Shape:
        return self.out_shape


@dataclass
class Output(Node):
    """The graph's per-step analog output, read by the host-side tail."""

    out_shape: Shape

    def __post_init__(self):
        self.out_shape = _shape(self.out_shape)

    @property
    def shape(self) -> Shape:
        return self.out_shape


NODE_TYPES = (AnalogInput, Conv, TemporalAffine, IFNeurons, Upsample, Junction, Output)


@dataclass
class HostParams:
    """Everything that runs on the host around the spiking graph, once per denoiser call.

    ``time_mlp``: ``table [N, ch]``, ``fc1_w/b``, ``fc2_w/b``: temb = fc2(swish(fc1(table[t]))).
    ``temb_proj[block]``: ``(w, b)``: the block's current ``w @ swish(temb) + b``.
    ``tail``: ``bn_scale/bn_shift`` (folded BatchNorm), ``conv_w/b``, optional ``conv_gain [T]``,
    ``out_w/b``, ``out_bn_scale/shift``: per step ``h = gain*conv(swish(bn(x)))``, ``h += swish(out_bn(out_conv(h)))``;
    then ``eps = sum_t readout_decay^(T-1-t) h[t]``.  ``readout = "mean"`` (converted models): the
    tail runs once on ``mean_t x[t]`` and ``eps`` is its output.
    """

    T: int
    img_shape: Shape
    time_mlp: dict[str, np.ndarray]
    temb_proj: dict[str, tuple[np.ndarray, np.ndarray]]
    tail: dict[str, np.ndarray]
    readout_decay: float = 0.8
    schedule: dict[str, float] = field(default_factory=lambda: {"steps": 1000, "beta_start": 1e-4, "beta_end": 0.02})
    theta: float = 1.0
    threshold_scale: float = 1.0
    readout: str = "membrane"  # membrane | mean


@dataclass
class SNNGraph:
    nodes: dict[str, Node]
    edges: list[tuple[str, str]]
    host: HostParams | None = None  # None for plain spiking networks (no denoiser host side)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check names, edges and shapes; raises ValueError naming the node."""
        for name, node in self.nodes.items():
            if name != node.name:
                raise ValueError(f"node key {name!r} differs from its name {node.name!r}")
            if not isinstance(node, NODE_TYPES):
                raise ValueError(f"{name}: unsupported node type {type(node).__name__}")
        seen = set()
        for src, dst in self.edges:
            for end in (src, dst):
                if end not in self.nodes:
                    raise ValueError(f"edge ({src} -> {dst}) names unknown node {end!r}")
            if (src, dst) in seen:
                raise ValueError(f"duplicate edge ({src} -> {dst})")
            seen.add((src, dst))
            if isinstance(self.nodes[dst], AnalogInput):
                raise ValueError(f"edge ({src} -> {dst}): inputs take no edges")
            expected = self.input_shape(dst)
            if self.nodes[src].shape != expected:
                raise ValueError(f"shape mismatch on edge ({src} -> {dst}): {list(self.nodes[src].shape)} "
                                 f"-> {list(expected)}")
        for name, node in self.nodes.items():
            if not isinstance(node, AnalogInput) and not self.predecessors(name):
                raise ValueError(f"{name}: has no input edges")
        self.topological_order()  # raises on cycles

    def input_shape(self, name: str) -> Shape:
        node = self.nodes[name]
        if isinstance(node, (Conv, Upsample)):
            return node.in_shape
        return node.shape

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
            raise ValueError("the graph has a cycle; recurrent graphs are not supported")
        return order

    def of_type(self, cls) -> Iterator[Node]:
        return (n for n in self.nodes.values() if isinstance(n, cls))

    @property
    def output(self) -> Output:
        outs = list(self.of_type(Output))
        if len(outs) != 1:
            raise ValueError(f"expected one Output node, found {len(outs)}")
        return outs[0]

    def num_parameters(self) -> int:
        n = 0
        for node in self.nodes.values():
            if isinstance(node, Conv):
                n += node.weight.size + node.bias.size
            elif isinstance(node, TemporalAffine):
                n += node.gain.size + node.offset.size
        return n
