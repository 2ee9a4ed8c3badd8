"""From the spiking graph IR to a Lava process graph with aligned latencies.

Latency: every conv (a Lava synapse) delays by one step; neurons and relays by none.  A
node's *depth* ``d`` is the step at which its first valid input arrives: ``d(image) = 0``,
``d(conv) = d(input) + 1``, otherwise the maximum over its inputs; shorter paths into a
node get a :class:`DelayLine` of the difference.  Neuron group ``n`` integrates spiking
steps ``d(n) .. d(n)+T-1`` of a call and is reset to ``v_init * vth`` (0 unless converted)
when its window opens (``LIFReset`` with ``reset_interval = T`` and phase ``d(n)``): the
staggered reset.  A spike resets ``v`` to 0 or, with ``reset="subtract"``, by ``vth``;
signed neurons (converted models) also send -1 spikes, which their convs read as 2-bit graded
spikes.

Batches are pipelined: image ``b`` of a batch occupies steps ``b*T .. b*T+T-1`` of each
layer's window, so a call on ``B`` images takes ``B*T + depth`` steps (rounded up to a
multiple of ``B*T`` so that every phase repeats identically from call to call).

Constants: conv biases are attached to the node the conv feeds (the neuron's ``bias_mant``,
a junction's ``bias``, a TSM gain's input bias).  The time embedding enters as one graded
input vector ``swish(temb(t))`` feeding every block's projection through a
:class:`ChannelDense` synapse; the projections' biases are neuron biases.

Inputs: the image batch and the time embedding are memory-mapped files (:class:`Probes` with
``prefix="in-"``) that the host writes before each run and :class:`MemmapSource` processes read;
``Var.set`` would move one message per value through the runtime (and the asynchronous protocol
refuses it).

The same factories make the layers of the fused build (:mod:`.fused`), with every depth 0.

:func:`build` runs named passes, in the style of lava-dl's netx (one ``create_*`` per layer type):

0. :func:`fold_input_scale` (through :func:`prepare`, also the fused build's start): the input scale of
   spikingjelly-style LIF groups (``h = decay * v + c * x``, the Spiking-Diffusion models) folded into
   the weights and biases of the convs feeding them, which Lava's LIF (no ``c``) then reads as they are;
1. :func:`plan_timing`: every node's depth, the output junction, the window and run length;
2. :func:`constant_inputs`: the bias pass, each conv's (and time projection's) constant moved
   to the node it feeds;
3. processes: one small factory per IR node type, looked up in :data:`FACTORIES`; the neuron
   groups' and the output junction's probe files are made here (:class:`Probes`);
4. :func:`wire`: the edges, with a delay line wherever a source arrives early.

Upsamplings: ``mode="nearest"`` is :class:`UpsampleNearest`, ``mode="zeros"`` (zero insertion, which with
the stride-1 conv after it is a transposed convolution) :class:`UpsampleZeros`; both relay spikes with
zero latency, and the conv after either reads them as spikes.

``print(net)`` (:meth:`LavaGraph.table`) shows the built network, one row per process.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from sdm.errors import SDMError
from sdm.export.ir import AnalogInput, Conv, IFNeurons, Junction, Node, Output, SNNGraph, TemporalAffine, Upsample

from .lava_runtime import ensure_lava_runtime

if TYPE_CHECKING:
    from lava.magma.core.process.process import AbstractProcess

    from .fixed_point import FixedPointPlan
    from .lava_models.processes import DelayLine, MemmapSource, RecordingLIFReset


class LavaBuildError(SDMError):
    """The graph cannot be mapped to Lava; the message names the node."""


# ----- layouts ------------------------------------------------------------------------------
def whc(a: np.ndarray) -> np.ndarray:
    """(C, H, W) -> Lava's (W, H, C)."""
    return np.ascontiguousarray(np.asarray(a).transpose(2, 1, 0))


def lava_shape(shape) -> tuple[int, int, int]:
    """An IR shape (C, H, W) as Lava's (W, H, C)."""
    c, h, w = shape
    return (w, h, c)


def ir_shape(shape) -> tuple[int, int, int]:
    """A Lava shape (W, H, C) as the IR's (C, H, W)."""
    w, h, c = shape
    return (c, h, w)


def lava_conv_weight(weight: np.ndarray) -> np.ndarray:
    """PyTorch correlation kernel (C_out, C_in, kH, kW) -> Lava convolution kernel (C_out, kW, kH, C_in)."""
    return np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(0, 3, 2, 1))


def _is_temb(node: Node) -> bool:
    return isinstance(node, AnalogInput) and node.kind == "temb"


# ----- before anything: the graph against its host section ------------------------------------
def _shape_text(shape) -> str:
    return "x".join(str(int(v)) for v in shape)


def check_host(graph: SNNGraph) -> None:
    """The shapes the host will feed and read must be the graph's, or Lava waits forever for values
    that never come: one image input of the host section's image shape (channels first), a temb
    input per block of the host's projection width, an output of the tail's channel count.  Raises
    :class:`LavaBuildError` naming the node and the two shapes."""
    host = graph.host
    if host is None:
        return
    images = [n for n in graph.of_type(AnalogInput) if n.kind == "image"]
    if len(images) != 1:
        raise LavaBuildError(f"the graph needs exactly one image input, it has {len(images)}")
    node, want = images[0], tuple(host.img_shape)
    if tuple(node.shape) != want:
        what = f"{node.shape[0]} channels, the host section's image has {want[0]}" if node.shape[0] != want[0] \
            else f"{_shape_text(node.shape[1:])} pixels, the host section's image has {_shape_text(want[1:])}"
        raise LavaBuildError(f"{node.name}: image input of shape {_shape_text(node.shape)} (C x H x W) but the host "
                             f"section's image shape is {_shape_text(want)}: {what}")
    for n in graph.of_type(AnalogInput):
        if n.kind != "temb":
            continue
        proj = host.temb_proj.get(n.block)
        if proj is None:
            raise LavaBuildError(f"{n.name}: time-embedding input of block {n.block!r}, which the host section lacks")
        if proj.w.shape[0] != n.shape[0]:
            raise LavaBuildError(f"{n.name}: time-embedding input of {n.shape[0]} channels, the host projection of "
                                 f"block {n.block!r} gives {proj.w.shape[0]}")
    out = graph.output
    if out.shape[0] != host.tail.channels:
        raise LavaBuildError(f"{out.name}: graph output of shape {_shape_text(out.shape)} but the host section's tail "
                             f"reads {host.tail.channels} channels")


# ----- pass 0: the LIF input scale folded into the convs before the neurons ------------------
def _scale_required(graph: SNNGraph, consumer: str) -> float:
    """The input scale consumer ``consumer`` needs on what it reads: an LIF group's, else 1."""
    node = graph.nodes[consumer]
    return node.params.input_scale if isinstance(node, IFNeurons) else 1.0


def _check_scaled_inputs(graph: SNNGraph, name: str) -> None:
    """Every input of scaled neuron group ``name`` must be a conv (whose weights take the scale)."""
    node = graph.nodes[name]
    for src in graph.predecessors(name):
        if not isinstance(graph.nodes[src], Conv):
            kind = "a time-embedding input" if _is_temb(graph.nodes[src]) else type(graph.nodes[src]).__name__
            raise LavaBuildError(
                f"{name}: LIF neurons with input scale {node.params.input_scale:g} read {src} ({kind}), not a conv: "
                "Lava's LIF has no input scale, and it can only be folded into the weights and bias of the convs "
                "that feed the group")


def fold_input_scale(graph: SNNGraph) -> SNNGraph:
    """The graph with every LIF input scale folded into the convs that feed the neurons (pass 0).

    spikingjelly's LIF (``decay_input``) charges ``h = decay * v + c * x`` with ``c = input_scale``
    (``NeuronParams.lif``: tau 2 -> decay 1/2, c = 1/2); Lava's LIF has no ``c``.  Every conv feeding
    such a group gets ``weight * c`` and ``bias * c`` (its constant, :func:`constant_inputs`) and the group
    is built with ``input_scale = 1``.  Exact in floating point when ``c`` is a power of two (the scaled
    products and sums are the unscaled ones times ``c``, rounding included); otherwise exact up to one
    rounding of each scaled weight.  A conv that also feeds a consumer needing another scale (a junction, a
    group of another scale) is copied: the copy, ``"<conv>:x<c>"``, feeds the group of scale ``c`` and the
    original the others (unscaled, or scaled for its first consumer when none reads it unscaled), so
    nothing is scaled twice or where it must not be.  A scaled group fed by anything but convs (an input,
    a junction, a TSM gain, an upsampling) is a :class:`LavaBuildError` naming the group and its input.

    Returns ``graph`` itself when it has no scaled neurons; otherwise a new :class:`SNNGraph` (the nodes
    are replaced with ``dataclasses.replace``, the input graph is not modified).  Both builds and
    :class:`~.fixed_point.FixedPointPlan` start with it, so the plan's conv mantissas are of the scaled
    weights (a power-of-two scale only moves the exponent)."""
    scaled = [n for n in graph.topological_order()
              if isinstance(graph.nodes[n], IFNeurons) and graph.nodes[n].params.input_scale != 1.0]
    if not scaled:
        return graph
    for name in scaled:
        _check_scaled_inputs(graph, name)
    nodes = dict(graph.nodes)
    renamed: dict[tuple[str, str], str] = {}  # (conv, consumer) -> the node that now feeds the consumer
    copies: dict[str, list[str]] = {}  # conv -> its scaled copies
    for conv in dict.fromkeys(p for n in scaled for p in graph.predecessors(n)):
        node, consumers = graph.nodes[conv], graph.successors(conv)
        scales = list(dict.fromkeys(_scale_required(graph, d) for d in consumers))
        keeps = scales[0] if 1.0 not in scales else 1.0  # the scale the conv keeps its name for
        for c in scales:
            if c == 1.0:
                continue
            copy = conv if c == keeps else f"{conv}:x{c:g}"
            if copy != conv and copy in nodes:
                raise LavaBuildError(f"{conv}: its copy for input scale {c:g} would be named {copy}, which the graph "
                                     "already has")
            nodes[copy] = dataclasses.replace(node, name=copy, weight=node.weight * c, bias=node.bias * c)
            if copy != conv:
                copies.setdefault(conv, []).append(copy)
            renamed.update({(conv, d): copy for d in consumers if _scale_required(graph, d) == c})
    for name in scaled:
        node = graph.nodes[name]
        nodes[name] = dataclasses.replace(node, params=dataclasses.replace(node.params, input_scale=1.0))
    edges = []
    for src, dst in graph.edges:
        edges.append((renamed.get((src, dst), src), dst))
        edges.extend((src, copy) for copy in copies.get(dst, ()))
    return SNNGraph(nodes, edges, graph.host)


# ----- pass 1: timing -----------------------------------------------------------------------
def depths(graph: SNNGraph) -> dict[str, int]:
    """The step at which each node's first valid input arrives (module docstring)."""
    d: dict[str, int] = {}
    for name in graph.topological_order():
        node = graph.nodes[name]
        preds = [p for p in graph.predecessors(name) if not _is_temb(graph.nodes[p])]
        if isinstance(node, AnalogInput):
            d[name] = 0
        elif isinstance(node, Conv):
            d[name] = d[preds[0]] + 1
        else:
            d[name] = max(d[p] for p in preds)
    return d


@dataclass(frozen=True)
class Timing:
    """When things happen in one call: ``window = batch * T`` steps per layer, ``run_length`` Lava
    steps (``window + depth`` of the output, rounded up to a multiple of ``window``)."""

    depth: dict[str, int]
    output: str  # IR name of the junction whose probe holds the graph output
    T: int
    batch: int
    window: int
    run_length: int


def plan_timing(graph: SNNGraph, T: int, batch: int) -> Timing:
    d = depths(graph)
    out_name = graph.output.name
    out_src = graph.predecessors(out_name)
    if len(out_src) != 1 or not isinstance(graph.nodes[out_src[0]], Junction):
        raise LavaBuildError(f"{out_name}: the output must read a single junction node")
    window = batch * T
    run_length = window * -(-(window + d[out_src[0]]) // window)
    return Timing(depth=d, output=out_src[0], T=T, batch=batch, window=window, run_length=run_length)


# ----- pass 2: constants --------------------------------------------------------------------
def constant_inputs(graph: SNNGraph) -> dict[str, np.ndarray]:
    """The constant current ``(C, H, W)`` each node receives from the convs (their bias) and time
    projections (theirs) feeding it; Lava's ``Conv`` has no bias, so the consumer adds it."""
    bias: dict[str, np.ndarray] = {}
    for src, dst in graph.edges:
        node, consumer = graph.nodes[src], graph.nodes[dst]
        if isinstance(node, Conv):
            if isinstance(consumer, (Conv, Upsample)):
                raise LavaBuildError(f"{src} -> {dst}: a conv feeding a conv or upsample is not supported")
            b = node.bias
        elif _is_temb(node):
            b = graph.host.temb_proj[node.block].b
        else:
            continue
        bias[dst] = bias.get(dst, 0) + np.broadcast_to(b.reshape(-1, 1, 1), consumer.shape)
    return bias


# ----- pass 3: one process per node ---------------------------------------------------------
class Probes:
    """``.npy`` memory maps shared with the processes: by default the ``(window, W, H, C)`` records that
    processes write their window into; with ``rows`` given, any ``(rows, *shape)`` file (the inputs)."""

    def __init__(self, directory: str, window: int, prefix: str = ""):
        self.directory = directory
        self.window = window
        self.prefix = prefix
        self.files: dict[str, np.ndarray] = {}  # IR name (or input name) -> memory map

    def add(self, name: str, shape: tuple[int, ...], rows: int | None = None) -> str:
        """Create the file of ``name`` (Lava shape ``shape``) and return its path for the process."""
        path = os.path.join(self.directory, f"{self.prefix}{len(self.files):04d}.npy")
        rows = self.window if rows is None else rows
        self.files[name] = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(rows, *shape))
        return path


@dataclass
class BuildContext:
    """What the node factories share: the graph, the passes' results and the build options."""

    graph: SNNGraph
    timing: Timing
    constants: dict[str, np.ndarray]
    probes: Probes
    inputs: Probes  # the host's input files: "image" (B, W, H, C), "temb" (1, width)
    plan: FixedPointPlan | None = None  # fixed_pt parameters; None: floating_pt
    threshold_scale: float = 1.0
    record_spikes: bool = True
    varying_input: bool = False  # the image input changes from step to step (a [T, ...] input, B*T rows)
    source: MemmapSource | None = None  # the image input, once made
    temb_source: MemmapSource | None = None  # swish(temb), once a temb input is made

    def current(self, a) -> np.ndarray:
        """A float current in the mode's units (fixed point: integer state units)."""
        return self.plan.current(a) if self.plan is not None else np.asarray(a, dtype=float)

    def constant(self, name: str) -> np.ndarray:
        """The constant input of node ``name`` in Lava's layout, float (zeros if it has none)."""
        return whc(self.constants.get(name, np.zeros(self.graph.nodes[name].shape)))

    @property
    def mode(self) -> str:
        """The tag of the process models this context's parameters are for."""
        return "floating_pt" if self.plan is None else "fixed_pt"


Factory = Callable[[BuildContext, Node], "AbstractProcess | None"]


def _input(ctx: BuildContext, node: AnalogInput) -> AbstractProcess:
    """The image: a :class:`MemmapSource` of the batch file, each image repeated for T steps (with
    ``varying_input``: ``B*T`` rows, image ``b`` at step ``n`` in row ``b*T + n``).  A temb
    input: its block's ChannelDense synapse, fed by the one MemmapSource of ``swish(temb)`` (made with
    the first temb input)."""
    from .lava_models.processes import ChannelDense, MemmapSource

    shape, t = lava_shape(node.shape), ctx.timing
    if node.kind == "image":
        if ctx.source is not None:
            raise LavaBuildError(f"{node.name}: only one image input is supported")
        rows, repeat = (t.batch * t.T, 1) if ctx.varying_input else (t.batch, t.T)
        path = ctx.inputs.add("image", shape, rows=rows)
        ctx.source = MemmapSource(shape=shape, path=path, images=rows, repeat=repeat, name=node.name)
        return ctx.source
    w_proj = ctx.graph.host.temb_proj[node.block].w
    if ctx.temb_source is None:
        path = ctx.inputs.add("temb", (w_proj.shape[1],), rows=1)
        ctx.temb_source = MemmapSource(shape=(w_proj.shape[1],), path=path, name="(temb)")
    w, exp = (w_proj, 0) if ctx.plan is None else ctx.plan.graded_weight(w_proj)
    return ChannelDense(weight=w, weight_exp=exp, out_shape=shape, name=node.name)


def _conv(ctx: BuildContext, node: Conv) -> AbstractProcess:
    """Lava's ``Conv`` with the flipped kernel, gated to the steps its consumers read."""
    from lava.proc.conv.process import Conv as LavaConv

    from .lava_models.conv_model import ReadWindow, set_read_window

    w, exp = (node.weight, 0) if ctx.plan is None else (ctx.plan.conv_mant[node.name], ctx.plan.conv_exp[node.name])
    spikes = ctx.graph.spike_source(node.name)
    # binary spikes: 0 message bits; signed spikes (-1/0/1) are 2-bit graded spikes; currents 24 bits
    bits = 24 if spikes is None else (2 if spikes[0].signed else 0)
    proc = LavaConv(weight=lava_conv_weight(w), weight_exp=exp, input_shape=lava_shape(node.in_shape),
                    padding=node.padding, stride=node.stride, num_message_bits=bits, name=node.name)
    t = ctx.timing
    set_read_window(proc, ReadWindow(t.depth[node.name], t.window, t.run_length))
    return proc


def _neurons(ctx: BuildContext, node: IFNeurons) -> AbstractProcess:
    """``RecordingLIFReset`` reset at the opening of its window, with the constant input as bias."""
    from .lava_models.processes import RecordingLIFReset

    th = node.threshold
    if node.params.input_scale != 1.0:  # fold_input_scale has run on every graph the builds take
        raise LavaBuildError(f"{node.name}: input scale {node.params.input_scale:g} left unfolded (build the graph "
                             "through build / build_fused, which start with fold_input_scale)")
    if not np.all(th == th.flat[0]):
        raise LavaBuildError(f"{node.name}: per-neuron thresholds are not supported (Lava LIF has one vth)")
    theta, b, plan = float(th.flat[0]) * ctx.threshold_scale, ctx.constant(node.name), ctx.plan
    if plan is None:
        du, dv, vth, (bias_mant, bias_exp), margin = 1.0, 1.0 - node.decay, theta, (b, 0), node.inhibit_margin
    else:
        (du, dv), vth = plan.decays(node.decay), plan.threshold(theta)
        (bias_mant, bias_exp), margin = plan.neuron_bias(b), plan.inhibit_margin(node.inhibit_margin)
    shape, d, t = lava_shape(node.shape), ctx.timing.depth[node.name], ctx.timing
    return RecordingLIFReset(
        shape=shape, du=du, dv=dv, vth=vth, bias_mant=bias_mant, bias_exp=bias_exp,
        reset_interval=t.T, reset_offset=(d + 1) % t.T, window_start=d, window=t.window, run_length=t.run_length,
        probe=ctx.probes.add(node.name, shape) if ctx.record_spikes else "",
        reset=node.reset, v_init=node.v_init, signed=node.signed, inhibit_margin=margin, name=node.name)


def _junction(ctx: BuildContext, node: Junction) -> AbstractProcess:
    """``AnalogJunction``: sum plus constant; the output junction also records its window."""
    from .lava_models.processes import AnalogJunction

    shape, t = lava_shape(node.shape), ctx.timing
    rec = node.name == t.output
    return AnalogJunction(shape=shape, bias=ctx.current(ctx.constant(node.name)),
                          window_start=t.depth[node.name] if rec else 0, window=t.window if rec else 0,
                          run_length=t.run_length, probe=ctx.probes.add(node.name, shape) if rec else "",
                          name=node.name)


def _temporal_affine(ctx: BuildContext, node: TemporalAffine) -> AbstractProcess:
    """``TemporalGain``: the TSM gain of the step, the conv's constant before it, the BN shift after."""
    from .lava_models.processes import TemporalGain

    if len(node.gain) != ctx.timing.T:
        raise LavaBuildError(f"{node.name}: TSM gain has {len(node.gain)} steps, the graph runs {ctx.timing.T}")
    offset = whc(np.broadcast_to(node.offset.reshape(-1, 1, 1), node.shape))
    return TemporalGain(shape=lava_shape(node.shape), gain=np.asarray(node.gain, dtype=float),
                        bias_in=ctx.current(ctx.constant(node.name)), bias_out=ctx.current(offset),
                        window_start=ctx.timing.depth[node.name], name=node.name)


def _upsample(ctx: BuildContext, node: Upsample) -> AbstractProcess:
    """``UpsampleNearest`` (mode ``nearest``) or ``UpsampleZeros`` (mode ``zeros``, zero insertion: with the
    stride-1 conv after it a transposed convolution); zero latency, what it reads passes on unscaled."""
    from .lava_models.processes import UpsampleNearest, UpsampleZeros

    relays = {"nearest": UpsampleNearest, "zeros": UpsampleZeros}
    if node.mode not in relays:
        raise LavaBuildError(f"{node.name}: upsample mode {node.mode!r} has no Lava mapping")
    return relays[node.mode](shape=lava_shape(node.in_shape), scale=node.scale, name=node.name)


def _no_process(ctx: BuildContext, node: Output) -> None:
    """The output is read from the probe of the junction before it."""
    return None


FACTORIES: dict[type[Node], Factory] = {
    AnalogInput: _input,
    Conv: _conv,
    IFNeurons: _neurons,
    Junction: _junction,
    TemporalAffine: _temporal_affine,
    Upsample: _upsample,
    Output: _no_process,
}


def _factory(node: Node) -> Factory:
    for cls in type(node).__mro__:
        if cls in FACTORIES:
            return FACTORIES[cls]
    raise LavaBuildError(f"{node.name}: no Lava mapping for {type(node).__name__}")


def make_processes(ctx: BuildContext) -> dict[str, AbstractProcess]:
    """IR name -> its process, in topological order (the Output has none)."""
    procs = {}
    for name in ctx.graph.topological_order():
        node = ctx.graph.nodes[name]
        proc = _factory(node)(ctx, node)
        if proc is not None:
            procs[name] = proc
    if ctx.source is None:
        raise LavaBuildError("the graph has no image input")
    return procs


# ----- pass 4: wiring and delays ------------------------------------------------------------
@dataclass
class Wire:
    """An edge as built: ``delay`` steps of ``line`` between the two processes (0 and None: direct)."""

    src: str
    dst: str
    delay: int = 0
    line: DelayLine | None = None


def _ports(graph: SNNGraph, procs: dict[str, AbstractProcess], src: str, dst: str):
    s, d = graph.nodes[src], graph.nodes[dst]
    out_port = procs[src].s_out if isinstance(s, (IFNeurons, AnalogInput)) and not _is_temb(s) else procs[src].a_out
    in_port = procs[dst].s_in if isinstance(d, Conv) else procs[dst].a_in
    return out_port, in_port


def wire(graph: SNNGraph, procs: dict[str, AbstractProcess], depth: dict[str, int],
         temb_source: MemmapSource | None = None) -> list[Wire]:
    """Connect the processes along the graph's edges, delaying every input that arrives before its
    destination's depth (a conv's own step of latency counted)."""
    from .lava_models.processes import DelayLine

    if temb_source is not None:
        for name in graph.topological_order():
            if _is_temb(graph.nodes[name]):
                temb_source.s_out.connect(procs[name].s_in)
    wires = []
    for src, dst in graph.edges:
        if isinstance(graph.nodes[dst], Output):
            continue
        out_port, in_port = _ports(graph, procs, src, dst)
        if _is_temb(graph.nodes[src]):  # constant over the call: no alignment needed
            out_port.connect(in_port)
            wires.append(Wire(src, dst))
            continue
        lag = depth[dst] - depth[src] - (1 if isinstance(graph.nodes[dst], Conv) else 0)
        if lag < 0:
            raise LavaBuildError(f"{src} -> {dst}: negative latency {lag}")
        line = None
        if lag:
            line = DelayLine(shape=lava_shape(graph.nodes[src].shape), delay=lag, name=f"delay:{src}->{dst}")
            out_port.connect(line.a_in)
            out_port = line.a_out
        out_port.connect(in_port)
        wires.append(Wire(src, dst, lag, line))
    return wires


# ----- the result ---------------------------------------------------------------------------
@dataclass
class LavaGraph:
    """The built processes and what the runner needs to drive them."""

    procs: dict[str, AbstractProcess]  # IR name -> process (the Output node has none)
    probes: dict[str, np.ndarray]  # IR name -> (window, W, H, C) memory map written by the process
    inputs: dict[str, np.ndarray]  # "image": (B, W, H, C), "temb": (1, width) memory maps the host writes
    source: MemmapSource  # the image input; the runtime is run and stopped through it
    temb_source: MemmapSource | None  # swish(temb); None without a time embedding
    output: str  # IR name of the junction whose probe holds the graph output
    neurons: dict[str, RecordingLIFReset]  # IR neuron name -> its process
    depth: dict[str, int]
    run_length: int
    window: int
    batch: int
    T: int
    wires: list[Wire] = field(default_factory=list)

    @property
    def delays(self) -> list[DelayLine]:
        return [w.line for w in self.wires if w.line is not None]

    @property
    def num_processes(self) -> int:
        return len(self.procs) + len(self.delays) + (self.temb_source is not None)

    def processes(self) -> list[AbstractProcess]:
        """Every Lava process of the network (each needs its model: ``lava_models.catalog.model_map``)."""
        extra = [self.temb_source] if self.temb_source is not None else []
        return list(self.procs.values()) + self.delays + extra

    def table(self) -> str:
        """The network, one row per process: IR name, Lava process, output shape (W, H, C), depth,
        latency (1: a synapse, which sends in step k what it got in step k-1) and the delay lines on
        its inputs (``source+steps``); then the totals."""
        from lava.proc.conv.process import Conv as LavaConv

        from .lava_models.processes import ChannelDense

        delayed: dict[str, list[str]] = {}
        for w in self.wires:
            if w.line is not None:
                delayed.setdefault(w.dst, []).append(f"{w.src}+{w.delay}")
        named = list(self.procs.items())
        if self.temb_source is not None:
            named.append(("(temb)", self.temb_source))
        rows = [("name", "process", "shape", "depth", "lat", "delay lines")]
        for name, proc in named:
            shape = "x".join(str(v) for v in proc.out_ports.members[0].shape)
            lat = 1 if isinstance(proc, (LavaConv, ChannelDense)) else 0
            rows.append((name, type(proc).__name__, shape, str(self.depth.get(name, 0)), str(lat),
                         ", ".join(delayed.get(name, []))))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(v.ljust(n) if i < 3 or i == 5 else v.rjust(n) for i, (v, n) in enumerate(zip(r, widths)))
                 .rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * n for n in widths))
        lines.append(f"{self.num_processes} Lava processes ({len(self.delays)} delay lines); {self.run_length} "
                     f"steps per call: {self.batch} image(s) x T {self.T}, output depth {self.depth[self.output]}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def prepare(graph: SNNGraph, plan: FixedPointPlan | None) -> tuple[SNNGraph, FixedPointPlan | None]:
    """Where both builds start: the graph after :func:`fold_input_scale` and the fixed-point plan of that
    graph (``plan`` itself when it was made from it or from the unfolded graph: ``FixedPointPlan`` folds
    too, deterministically, so its conv names and mantissas are the folded graph's)."""
    folded = fold_input_scale(graph)
    if plan is None or plan.graph is folded:
        return folded, plan
    for name, node in folded.nodes.items():
        if not isinstance(node, Conv):
            continue
        planned = plan.graph.nodes.get(name)
        if name not in plan.conv_mant or not isinstance(planned, Conv) or not np.array_equal(planned.weight,
                                                                                            node.weight):
            raise LavaBuildError(f"{name}: the fixed-point plan was made for other weights of this conv (a plan of "
                                 "another graph, or of the graph before its input scales were folded)")
    return folded, plan


def build(graph: SNNGraph, T: int, probe_dir: str, batch: int = 1, record_spikes: bool = True,
          threshold_scale: float = 1.0, plan: FixedPointPlan | None = None, varying_input: bool = False) -> LavaGraph:
    """Create (not yet compile) the Lava processes of ``graph`` (the passes of the module docstring).

    Probe files (``.npy`` memory maps) for the output and, with ``record_spikes``, for every
    neuron group's window spikes are created in ``probe_dir``.

    With a :class:`~sdm.neuromorphic.fixed_point.FixedPointPlan` the parameters are integers
    for Lava's ``fixed_pt`` models; without one they are used as they are (``floating_pt``)."""
    ensure_lava_runtime()
    graph, plan = prepare(graph, plan)
    timing = plan_timing(graph, T, batch)
    ctx = BuildContext(graph, timing, constant_inputs(graph), Probes(probe_dir, timing.window),
                       Probes(probe_dir, timing.window, prefix="in-"), plan=plan, threshold_scale=threshold_scale,
                       record_spikes=record_spikes, varying_input=varying_input)
    procs = make_processes(ctx)
    wires = wire(graph, procs, timing.depth, ctx.temb_source)
    neurons = {name: p for name, p in procs.items() if isinstance(graph.nodes[name], IFNeurons)}
    return LavaGraph(procs=procs, probes=ctx.probes.files, inputs=ctx.inputs.files, source=ctx.source,
                     temb_source=ctx.temb_source,
                     output=timing.output, neurons=neurons, depth=timing.depth, run_length=timing.run_length,
                     window=timing.window, batch=batch, T=T, wires=wires)
