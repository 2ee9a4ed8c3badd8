"""From the spiking graph IR to a Lava process graph with aligned latencies.

Latency: every conv (a Lava synapse) delays by one step; neurons and relays by none.  A
node's *depth* ``d`` is the step at which its first valid input arrives: ``d(image) = 0``,
``d(conv) = d(input) + 1``, otherwise the maximum over its inputs; shorter paths into a
node get a :class:`DelayLine` of the difference.  Neuron group ``n`` integrates spiking
steps ``d(n) .. d(n)+T-1`` of a call and is reset to 0 when its window opens
(``LIFReset`` with ``reset_interval = T`` and phase ``d(n)``): the staggered reset.

Batches are pipelined: image ``b`` of a batch occupies steps ``b*T .. b*T+T-1`` of each
layer's window, so a call on ``B`` images takes ``B*T + depth`` steps (rounded up to a
multiple of ``B*T`` so that every phase repeats identically from call to call).

Constants: conv biases are attached to the node the conv feeds (the neuron's ``bias_mant``,
a junction's ``bias``, a TSM gain's input bias); time-embedding currents become neuron
biases, set before every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sdm.export.ir import AnalogInput, Conv, IFNeurons, Junction, Output, SNNGraph, TemporalAffine, Upsample


class LavaBuildError(ValueError):
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


def _is_temb(node) -> bool:
    return isinstance(node, AnalogInput) and node.kind == "temb"


@dataclass
class LavaGraph:
    """The built processes and what the runner needs to drive them."""

    procs: dict
    source: object
    output: object  # AnalogJunction recording the graph output
    neurons: dict  # IR neuron name -> RecordingLIFReset
    static_bias: dict  # IR neuron name -> (W, H, C) constant bias
    temb_of: dict  # IR neuron name -> list of temb input names
    depth: dict
    run_length: int
    window: int
    batch: int
    T: int
    delays: list = field(default_factory=list)

    @property
    def num_processes(self) -> int:
        return len(self.procs) + len(self.delays)


def build(graph: SNNGraph, T: int, batch: int = 1, record_spikes: bool = False,
          threshold_scale: float = 1.0, plan=None) -> LavaGraph:
    """Create (not yet compile) the Lava processes of ``graph``.

    With a :class:`~sdm.neuromorphic.fixed_point.FixedPointPlan` the parameters are integers
    for Lava's ``fixed_pt`` models; without one they are used as they are (``floating_pt``)."""
    from lava.proc.conv.process import Conv as LavaConv
    from lava.proc.io.source import RingBuffer

    from .lava_models.processes import AnalogJunction, DelayLine, RecordingLIFReset, TemporalGain, UpsampleNearest

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

    procs, neurons, static_bias, temb_of = {}, {}, {}, {}
    source = None
    for name in graph.topological_order():
        node = graph.nodes[name]
        shape = chw_shape(node.shape)
        if isinstance(node, AnalogInput):
            if node.kind == "image":
                if source is not None:
                    raise LavaBuildError(f"{name}: only one image input is supported")
                source = procs[name] = RingBuffer(data=np.zeros((*shape, window), dtype=float if plan is None else int))
            continue
        if isinstance(node, Conv):
            w, exp = (node.weight, 0) if plan is None else (plan.conv_mant[name], plan.conv_exp[name])
            spiking_in = isinstance(graph.nodes[graph.predecessors(name)[0]], (IFNeurons, Upsample))
            procs[name] = LavaConv(weight=lava_conv_weight(w), weight_exp=exp, input_shape=chw_shape(node.in_shape),
                                   padding=node.padding, stride=node.stride,
                                   num_message_bits=0 if spiking_in else 24, name=name)
        elif isinstance(node, IFNeurons):
            th = node.threshold
            if not np.all(th == th.flat[0]):
                raise LavaBuildError(f"{name}: per-neuron thresholds are not supported (Lava LIF has one vth)")
            static_bias[name] = whc(bias.get(name, np.zeros(node.shape)))
            temb_of[name] = [p for p in graph.predecessors(name) if _is_temb(graph.nodes[p])]
            if plan is None:
                du, dv, vth = 1.0, 1.0 - node.decay, float(th.flat[0]) * threshold_scale
                bias_mant, bias_exp = static_bias[name].copy(), 0
            else:
                (du, dv), vth = plan.decays(node.decay), plan.threshold(float(th.flat[0]) * threshold_scale)
                bias_mant, bias_exp = plan.neuron_bias(static_bias[name])
            neurons[name] = procs[name] = RecordingLIFReset(
                shape=shape, du=du, dv=dv, vth=vth, bias_mant=bias_mant, bias_exp=bias_exp,
                reset_interval=T, reset_offset=(d[name] + 1) % T,
                window_start=d[name], window=window, run_length=run_length, record_spikes=record_spikes,
                name=name)
        elif isinstance(node, Junction):
            rec = name == out_src[0]
            procs[name] = AnalogJunction(shape=shape, bias=cur(whc(bias.get(name, np.zeros(node.shape)))),
                                         window_start=d[name] if rec else 0, window=window if rec else 0,
                                         run_length=run_length, name=name)
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
        if _is_temb(graph.nodes[src]) or isinstance(graph.nodes[dst], Output):
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
    return LavaGraph(procs=procs, source=source, output=procs[out_src[0]], neurons=neurons,
                     static_bias=static_bias, temb_of=temb_of, depth=d, run_length=run_length,
                     window=window, batch=batch, T=T, delays=delays)
