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
input vector ``swish(temb(t))`` (a RingBuffer set once per call) feeding every block's
projection through a :class:`ChannelDense` synapse; the projections' biases are neuron biases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from sdm.export.ir import AnalogInput, Conv, IFNeurons, Junction, Output, SNNGraph, TemporalAffine, Upsample
from sdm.errors import SDMError


class LavaBuildError(SDMError):
    """The graph cannot be mapped to Lava; the message names the node."""


def whc(a: np.ndarray) -> np.ndarray:
    """(C, H, W) -> Lava's (W, H, C)."""
    return np.ascontiguousarray(np.asarray(a).transpose(2, 1, 0))


def chw_shape(shape) -> tuple[int, int, int]:
    c, h, w = shape
    return (w, h, c)


def lava_conv_weight(weight: np.ndarray) -> np.ndarray:
    """PyTorch correlation kernel (C_out, C_in, kH, kW) -> Lava convolution kernel (C_out, kW, kH, C_in)."""
    return np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(0, 3, 2, 1))


def depths(graph: SNNGraph) -> dict[str, int]:
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


def _spike_source(graph: SNNGraph, conv: str) -> IFNeurons:
    """The neuron group whose spikes a spiking conv reads (through an upsampling, if any)."""
    src = graph.predecessors(conv)[0]
    while isinstance(graph.nodes[src], Upsample):
        src = graph.predecessors(src)[0]
    return graph.nodes[src]


def _is_temb(node) -> bool:
    return isinstance(node, AnalogInput) and node.kind == "temb"


@dataclass
class LavaGraph:
    """The built processes and what the runner needs to drive them."""

    procs: dict
    probes: dict  # IR name -> (window, W, H, C) memory map written by the process
    source: object  # RingBuffer of the image, (W, H, C, B*T)
    temb_source: object  # RingBuffer of swish(temb), (tdim, 1), or None
    output: str  # IR name of the junction whose probe holds the graph output
    neurons: dict  # IR neuron name -> RecordingLIFReset
    depth: dict
    run_length: int
    window: int
    batch: int
    T: int
    delays: list = field(default_factory=list)

    @property
    def num_processes(self) -> int:
        return len(self.procs) + len(self.delays)


def build(graph: SNNGraph, T: int, probe_dir: str, batch: int = 1, record_spikes: bool = True,
          threshold_scale: float = 1.0, plan=None) -> LavaGraph:
    """Create (not yet compile) the Lava processes of ``graph``.

    Probe files (``.npy`` memory maps) for the output and, with ``record_spikes``, for every
    neuron group's window spikes are created in ``probe_dir``.

    With a :class:`~sdm.neuromorphic.fixed_point.FixedPointPlan` the parameters are integers
    for Lava's ``fixed_pt`` models; without one they are used as they are (``floating_pt``)."""
    from lava.proc.conv.process import Conv as LavaConv
    from lava.proc.io.source import RingBuffer

    from .lava_models.processes import (AnalogJunction, ChannelDense, DelayLine, RecordingLIFReset, TemporalGain,
                                        UpsampleNearest)

    probes: dict[str, np.ndarray] = {}

    def probe(name: str, shape) -> str:
        path = os.path.join(probe_dir, f"{len(probes):04d}.npy")
        probes[name] = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(window, *shape))
        return path

    cur = plan.current if plan is not None else (lambda a: np.asarray(a, dtype=float))

    d = depths(graph)
    out_name = graph.output.name
    out_src = graph.predecessors(out_name)
    if len(out_src) != 1 or not isinstance(graph.nodes[out_src[0]], Junction):
        raise LavaBuildError(f"{out_name}: the output must read a single junction node")
    depth = d[out_src[0]]
    window = batch * T
    run_length = window * -(-(window + depth) // window)

    # constant inputs each node receives from the convs feeding it
    bias: dict[str, np.ndarray] = {}
    for src, dst in graph.edges:
        node = graph.nodes[src]
        if isinstance(node, Conv):
            shape = graph.nodes[dst].shape if not isinstance(graph.nodes[dst], (Conv, Upsample)) else None
            if shape is None:
                raise LavaBuildError(f"{src} -> {dst}: a conv feeding a conv or upsample is not supported")
            b = np.broadcast_to(node.bias.reshape(-1, 1, 1), shape)
            bias[dst] = bias.get(dst, 0) + b
        elif _is_temb(node):
            b_proj = graph.host.temb_proj[node.block].b
            bias[dst] = bias.get(dst, 0) + np.broadcast_to(b_proj.reshape(-1, 1, 1), graph.nodes[dst].shape)

    procs, neurons = {}, {}
    source = temb_source = None
    dtype = float if plan is None else int
    for name in graph.topological_order():
        node = graph.nodes[name]
        shape = chw_shape(node.shape)
        if isinstance(node, AnalogInput):
            if node.kind == "image":
                if source is not None:
                    raise LavaBuildError(f"{name}: only one image input is supported")
                source = procs[name] = RingBuffer(data=np.zeros((*shape, window), dtype=dtype))
                continue
            w_proj = graph.host.temb_proj[node.block].w
            if temb_source is None:
                temb_source = RingBuffer(data=np.zeros((w_proj.shape[1], 1), dtype=dtype))
            w, exp = (w_proj, 0) if plan is None else plan.graded_weight(w_proj)
            procs[name] = ChannelDense(weight=w, weight_exp=exp, out_shape=shape, name=name)
            temb_source.s_out.connect(procs[name].s_in)
            continue
        if isinstance(node, Conv):
            w, exp = (node.weight, 0) if plan is None else (plan.conv_mant[name], plan.conv_exp[name])
            spiking_in = isinstance(graph.nodes[graph.predecessors(name)[0]], (IFNeurons, Upsample))
            # binary spikes: 0 message bits; signed spikes (-1/0/1) are 2-bit graded spikes; currents 24 bits
            bits = (2 if _spike_source(graph, name).signed else 0) if spiking_in else 24
            procs[name] = LavaConv(weight=lava_conv_weight(w), weight_exp=exp, input_shape=chw_shape(node.in_shape),
                                   padding=node.padding, stride=node.stride, num_message_bits=bits, name=name)
            # the steps whose output the consumers read (after alignment): the fast conv model skips the rest
            procs[name].proc_params["read_window"] = (d[name], window, run_length)
        elif isinstance(node, IFNeurons):
            th = node.threshold
            if not np.all(th == th.flat[0]):
                raise LavaBuildError(f"{name}: per-neuron thresholds are not supported (Lava LIF has one vth)")
            b = whc(bias.get(name, np.zeros(node.shape)))
            if plan is None:
                du, dv, vth = 1.0, 1.0 - node.decay, float(th.flat[0]) * threshold_scale
                bias_mant, bias_exp = b, 0
            else:
                (du, dv), vth = plan.decays(node.decay), plan.threshold(float(th.flat[0]) * threshold_scale)
                bias_mant, bias_exp = plan.neuron_bias(b)
            neurons[name] = procs[name] = RecordingLIFReset(
                shape=shape, du=du, dv=dv, vth=vth, bias_mant=bias_mant, bias_exp=bias_exp,
                reset_interval=T, reset_offset=(d[name] + 1) % T,
                window_start=d[name], window=window, run_length=run_length,
                probe=probe(name, shape) if record_spikes else "",
                reset=node.reset, v_init=node.v_init, signed=node.signed,
                inhibit_margin=node.inhibit_margin if plan is None else plan.inhibit_margin(node.inhibit_margin),
                name=name)
        elif isinstance(node, Junction):
            rec = name == out_src[0]
            procs[name] = AnalogJunction(shape=shape, bias=cur(whc(bias.get(name, np.zeros(node.shape)))),
                                         window_start=d[name] if rec else 0, window=window if rec else 0,
                                         run_length=run_length, probe=probe(name, shape) if rec else "", name=name)
        elif isinstance(node, TemporalAffine):
            if len(node.gain) != T:
                raise LavaBuildError(f"{name}: TSM gain has {len(node.gain)} steps, the graph runs {T}")
            procs[name] = TemporalGain(shape=shape, gain=np.asarray(node.gain, dtype=float),
                                       bias_in=cur(whc(bias.get(name, np.zeros(node.shape)))),
                                       bias_out=cur(whc(np.broadcast_to(node.offset.reshape(-1, 1, 1), node.shape))),
                                       window_start=d[name], name=name)
        elif isinstance(node, Upsample):
            procs[name] = UpsampleNearest(shape=chw_shape(node.in_shape), scale=node.scale, name=name)
        elif isinstance(node, Output):
            continue
        else:
            raise LavaBuildError(f"{name}: no Lava mapping for {type(node).__name__}")
    if source is None:
        raise LavaBuildError("the graph has no image input")

    delays = []
    for src, dst in graph.edges:
        if isinstance(graph.nodes[dst], Output):
            continue
        if _is_temb(graph.nodes[src]):  # constant over the call: no alignment needed
            procs[src].a_out.connect(procs[dst].a_in)
            continue
        out_port = procs[src].s_out if isinstance(graph.nodes[src], (IFNeurons, AnalogInput)) else procs[src].a_out
        in_port = procs[dst].s_in if isinstance(graph.nodes[dst], Conv) else procs[dst].a_in
        lag = d[dst] - d[src] - (1 if isinstance(graph.nodes[dst], Conv) else 0)
        if lag < 0:
            raise LavaBuildError(f"{src} -> {dst}: negative latency {lag}")
        if lag:
            line = DelayLine(shape=chw_shape(graph.nodes[src].shape), delay=lag, name=f"delay:{src}->{dst}")
            out_port.connect(line.a_in)
            out_port = line.a_out
            delays.append(line)
        out_port.connect(in_port)
    if temb_source is not None:
        procs["temb"] = temb_source
    return LavaGraph(procs=procs, probes=probes, source=source, temb_source=temb_source, output=out_src[0],
                     neurons=neurons, depth=d, run_length=run_length, window=window, batch=batch, T=T,
                     delays=delays)
