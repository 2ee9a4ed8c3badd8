"""lava-dl netx for purely sequential spiking graphs: the hdf5 file, and running it in Lava.

A cross-check, not a deployment path: only ``tests/test_netx.py`` uses this module (``sdm
simulate`` runs the builder's process graph, :mod:`.builder`).  It lives here, beside the
builder and the fixed-point plan it checks, because it shares their layouts and integers.

Where a graph is a single chain (a non-residual :class:`~sdm.testing.spiking_cnn.SpikingCNN`)
it is also written in lava-dl's netx hdf5 format and run through the unmodified
``lava.lib.dl.netx.hdf5.Network`` in ``fixed_pt``; ``tests/test_netx.py`` checks that every
neuron group spikes exactly as in our own builder (:mod:`.builder`) under the same plan.
Networks with skips, upsampling, TSM or a time embedding are refused: netx wires
``layers[i-1].out -> layers[i].inp`` and nothing else.

Shared integers (:class:`NetxPlan`).  netx casts every weight to ``int`` and builds its
``Conv`` synapses with ``weight_exp = 0``, and its CUBA neurons with ``bias_exp = 6``.  So
the plan both paths use keeps the project's state units (``lam = 2**state_shift``, a
current ``I`` is ``round(lam * I)``, ``vth = round(lam * theta)``) but gives every conv on
spikes the exponent 0, ``mant = round(lam * W)`` with ``|mant| <= 255``, and every neuron
bias the mantissa ``round(lam * b)`` at exponent 6 (``mant << 6 = 64 * round(lam * b)``:
exactly what our junction adds as ``round(lam * b)`` before the LIF's ``<< 6``).
Precision trade-off: with one global exponent the weight step is ``1 / lam`` for every
conv, and ``lam`` is capped by the largest weight of the network (``lam * max|W| <= 255``)
where :class:`FixedPointPlan` gives each conv its own exponent (8 significant bits per
conv, finer steps for convs with small weights).  ``state_shift`` is therefore chosen per
network, the largest up to ``max_state_shift`` (default 8, the project's unit) at which
the weights, biases and threshold fit.

File layout (``layer/0 .. n-1``, no edge list):

* ``layer/0``: ``type = 'input'`` whose neuron is the network's **first IF group**.  netx
  has no analog first conv (the input block's ``inp`` port is left dangling by netx), so
  the host computes the first conv: the standard netx input convention is to set the
  input current as ``net.in_layer.neuron.bias_mant`` (as lava-dl's own ``test_tinynet``
  does).  :func:`first_layer_current` computes it in integer state units exactly as our
  fixed-point Lava path does (quantised image, 8-bit mantissa conv with rounding shift,
  24-bit clamp, plus the conv's and BN's constant ``round(lam * b)``); its parameters are
  stored under ``host/input_conv`` (ignored by netx) so that the file is self-contained.
* ``layer/i`` (``i >= 1``): ``type = 'conv'``, one per (conv on spikes -> IF group) pair,
  with PyTorch-layout integer weights ``(Cout, Cin, kH, kW)`` (netx flips and transposes
  them to Lava's ``(Cout, kW, kH, Cin)`` exactly as :func:`~.builder.lava_conv_weight`
  does), ``bias = round(lam * b)`` and the CUBA neuron ``{iDecay: 4096, vDecay, vThMant}``.
* The graph's final conv has no neuron after it (it produces the analog output); netx
  cannot express a neuronless layer, so it is not exported, and the two paths are compared
  on the spikes of every IF group.

Timing: netx gives layer ``i`` ``reset_offset + 1 + i``; with ``reset_offset = 1`` (the
first conv's one step of latency in our builder, which the host takes over here) layer
``i`` resets at ``time_step % T == (i + 2) % T``, the phase at which our builder's neuron
group ``i`` (depth ``i + 1``) opens its window, and records steps ``i + 2 .. i + T + 1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from sdm.errors import SDMError
from sdm.export.ir import AnalogInput, Conv, IFNeurons, Junction, Output, SNNGraph

from .builder import ir_shape, lava_conv_weight, whc
from .fixed_point import BIAS_MANT_MAX, VTH_MAX, FixedPointPlan, round_shift
from .lava_models.conv_model import conv_whc, correlation_weight
from .lava_runtime import ensure_lava_runtime

NETX_BIAS_EXP = 6  # netx's get_neuron_params hard-codes bias_exp=6 for CUBA neurons
NETX_WEIGHT_MAX = 255  # 8-bit mantissa magnitude, as FixedPointPlan
INPUT_CURRENT_MAX = BIAS_MANT_MAX  # the first layer's current is a 13-bit bias mantissa


class NetxExportError(SDMError):
    """The graph cannot be expressed as a netx network; the message names the node."""


# ----- structure -----------------------------------------------------------------------------
@dataclass
class SequentialChain:
    """A chain ``x -> first_conv -> [junction] -> neurons[0] -> convs[0] -> [junction] -> neurons[1]
    -> ... -> neurons[k-1] -> convs[k-1] -> [junction] -> output``.

    A junction there sums one conv only (a conv's constant lands on it in our builder).
    ``convs[i]`` is the conv on ``neurons[i]``'s spikes; ``convs[-1]`` is the neuronless
    final conv, which netx cannot express and which is not exported."""

    image: str
    first_conv: str
    neurons: list[str]
    convs: list[str]
    output: str


def sequential_chain(graph: SNNGraph) -> SequentialChain:
    """The graph as a chain; raises :class:`NetxExportError` naming the first offending node."""
    order = graph.topological_order()
    for name in order:
        node = graph.nodes[name]
        if isinstance(node, AnalogInput) and node.kind != "image":
            raise NetxExportError(f"{name}: a {node.kind} input is not sequential (netx has one input layer)")
        if not isinstance(node, (AnalogInput, Conv, Junction, IFNeurons, Output)):
            raise NetxExportError(f"{name}: {type(node).__name__} has no netx layer")
    for name in order:
        preds = graph.predecessors(name)
        if len(preds) > 1:
            raise NetxExportError(f"{name}: sums {len(preds)} inputs ({', '.join(preds)}); a skip/residual "
                                  "connection is not sequential (netx wires one chain)")
    for name in order:
        succ = graph.successors(name)
        if len(succ) > 1:
            raise NetxExportError(f"{name}: fans out to {', '.join(succ)}; not a sequential network")

    inputs = [n for n in order if isinstance(graph.nodes[n], AnalogInput)]
    if len(inputs) != 1:
        raise NetxExportError(f"expected one image input, found {len(inputs)}")
    chain = [inputs[0]]
    while graph.successors(chain[-1]):
        chain.append(graph.successors(chain[-1])[0])
    if len(chain) != len(graph.nodes):
        stray = sorted(set(graph.nodes) - set(chain))
        raise NetxExportError(f"{stray[0]}: not on the chain from the image input")

    # grammar: image, Conv, ([Junction], IF, Conv)+, [Junction], Output; a junction sums one conv only
    kinds = []
    for name in chain:
        node = graph.nodes[name]
        if isinstance(node, Junction):
            if not isinstance(graph.nodes[graph.predecessors(name)[0]], Conv):
                raise NetxExportError(f"{name}: a junction must follow a conv in a netx chain")
            continue
        kinds.append((name, node))
    image, first = kinds[0][0], kinds[1]
    if not isinstance(first[1], Conv):
        raise NetxExportError(f"{first[0]}: the image must feed a conv")
    neurons, convs = [], []
    rest = kinds[2:]
    while len(rest) >= 2 and isinstance(rest[0][1], IFNeurons):
        if not isinstance(rest[1][1], Conv):
            raise NetxExportError(f"{rest[1][0]}: expected a conv after neuron group {rest[0][0]}, "
                                  f"found {type(rest[1][1]).__name__}")
        neurons.append(rest[0][0])
        convs.append(rest[1][0])
        rest = rest[2:]
    if len(rest) != 1 or not isinstance(rest[0][1], Output):
        bad = rest[0][0] if rest else chain[-1]
        raise NetxExportError(f"{bad}: unexpected {type(graph.nodes[bad]).__name__} in a netx chain "
                              "(image -> conv -> [IF -> conv]+ -> output)")
    if not neurons:
        raise NetxExportError(f"{first[0]}: the chain has no neuron group")
    for n in neurons:
        th = graph.nodes[n].threshold
        if not np.all(th == th.flat[0]):
            raise NetxExportError(f"{n}: per-neuron thresholds are not supported (netx vThMant is one value)")
        if graph.nodes[n].reset != "zero" or graph.nodes[n].v_init != 0.0:
            raise NetxExportError(f"{n}: subtractive reset / initial membrane (converted models) are not "
                                  "supported by netx export")
    return SequentialChain(image, first[0], neurons, convs, rest[0][0])


def is_sequential(graph: SNNGraph) -> bool:
    """Whether ``graph`` is a single chain netx can express (see :func:`sequential_chain`)."""
    try:
        sequential_chain(graph)
    except NetxExportError:
        return False
    return True


# ----- the shared integer plan ----------------------------------------------------------------
def _spiking_convs(graph: SNNGraph) -> list[str]:
    return [n for n, node in graph.nodes.items() if isinstance(node, Conv)
            and isinstance(graph.nodes[graph.predecessors(n)[0]], IFNeurons)]


def choose_state_shift(graph: SNNGraph, max_state_shift: int = 8) -> int:
    """The largest ``s <= max_state_shift`` with ``round(2**s * |W|) <= 255`` for every conv on spikes,
    ``|round(2**s * b)| <= 4095`` for every conv bias and ``round(2**s * theta) <= 2**17 - 1``."""
    w_peak = max((float(np.max(np.abs(graph.nodes[n].weight))) for n in _spiking_convs(graph)), default=0.0)
    b_peak = max((float(np.max(np.abs(node.bias))) for node in graph.of_type(Conv)), default=0.0)
    th_peak = max((float(np.max(node.threshold)) for node in graph.of_type(IFNeurons)), default=0.0)
    for s in range(max_state_shift, -9, -1):
        lam = 2.0 ** s
        if (round(lam * w_peak) <= NETX_WEIGHT_MAX and round(lam * b_peak) <= INPUT_CURRENT_MAX
                and 0 < round(lam * th_peak) <= VTH_MAX):
            return s
    raise NetxExportError("no state scale fits the weights, biases and thresholds of this graph")


class NetxPlan(FixedPointPlan):
    """:class:`FixedPointPlan` restricted to what netx can represent, used by both paths.

    * convs on spikes: ``weight_exp = 0``, ``mant = clip(round(lam * W), -255, 255)``
      (clipping only with an explicit ``state_shift`` too large; it is listed in ``warnings``);
    * neuron biases: ``(round(lam * b), 6)``;
    * convs on graded currents (the first conv, computed by the host for netx) keep
      :class:`FixedPointPlan`'s 8-bit mantissa with a per-conv exponent.
    """

    def __init__(self, graph: SNNGraph, state_shift: int | None = None, max_state_shift: int = 8):
        if state_shift is None:
            state_shift = choose_state_shift(graph, max_state_shift)
        super().__init__(graph, state_shift)
        self.state_shift = state_shift
        self.warnings = []
        for name in _spiking_convs(graph):
            exact = np.round(graph.nodes[name].weight.astype(np.float64) * self.lam)
            mant = np.clip(exact, -NETX_WEIGHT_MAX, NETX_WEIGHT_MAX).astype(np.int64)
            if np.any(mant != exact):
                self.warnings.append(f"{name}: weights clipped to +-{NETX_WEIGHT_MAX} at state_shift {state_shift}")
            self.conv_mant[name], self.conv_exp[name] = mant, 0
            worst = float(np.abs(mant).sum(axis=(1, 2, 3)).max())
            if worst >= 2 ** 15:
                self.warnings.append(f"{name}: worst-case input sum {worst:.0f} exceeds the 16-bit LIF input")

    def neuron_bias(self, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mant = np.round(np.asarray(b, dtype=np.float64) * self.lam).astype(np.int64)
        if np.any(np.abs(mant) > BIAS_MANT_MAX):
            raise NetxExportError(f"bias {np.abs(mant).max()} (state units) does not fit the 13-bit mantissa "
                                  f"at bias_exp {NETX_BIAS_EXP}; use a smaller state_shift")
        return mant, np.full(mant.shape, NETX_BIAS_EXP, dtype=np.int64)


# ----- the file -------------------------------------------------------------------------------
def _ds_type(group: h5py.Group, kind: str) -> None:
    group.create_dataset("type", (1,), "S10", [kind.encode("ascii")])


def _neuron(group: h5py.Group, node: IFNeurons, plan: NetxPlan) -> None:
    du, dv = plan.decays(node.decay)
    group.create_dataset("neuron/type", (1,), "S10", [b"CUBA"])
    group.create_dataset("neuron/iDecay", data=du + 1)  # netx: du = iDecay - 1; 4096 = no current memory
    group.create_dataset("neuron/vDecay", data=dv)  # 0 for IF (decay 1)
    group.create_dataset("neuron/vThMant", data=plan.threshold(float(node.threshold.flat[0])))
    group.create_dataset("neuron/refDelay", data=1)
    group.create_dataset("neuron/gradedSpike", data=False)


def write_netx_hdf5(graph: SNNGraph, plan: NetxPlan, path: str | os.PathLike, T: int) -> SequentialChain:
    """Write ``graph`` as a lava-dl netx hdf5 network (see the module docstring for the layout).

    Raises :class:`NetxExportError` (a ``ValueError``) naming the node when the graph is not a
    single chain, or when the plan is not a :class:`NetxPlan` of this graph."""
    chain = sequential_chain(graph)
    if not isinstance(plan, NetxPlan) or plan.graph is not graph:
        raise NetxExportError("write_netx_hdf5 needs the NetxPlan of this graph (netx has no weight exponents)")
    with h5py.File(path, "w") as f:
        sim = f.create_group("simulation")
        sim.create_dataset("Ts", data=1)
        sim.create_dataset("tSample", data=T)
        layers = f.create_group("layer")

        n0 = graph.nodes[chain.neurons[0]]
        g = layers.create_group("0")
        _ds_type(g, "input")
        g.create_dataset("shape", data=np.array(n0.shape))
        _neuron(g, n0, plan)

        host = f.create_group("host/input_conv")  # not netx: how the host makes layer 0's bias_mant
        conv = graph.nodes[chain.first_conv]
        host.create_dataset("weight", data=plan.conv_mant[chain.first_conv])  # (Cout, Cin, kH, kW)
        host.create_dataset("weight_exp", data=plan.conv_exp[chain.first_conv])
        host.create_dataset("bias", data=plan.current(conv.bias))  # the conv's constant, on the junction
        host.create_dataset("stride", data=conv.stride)
        host.create_dataset("padding", data=conv.padding)
        host.create_dataset("in_shape", data=np.array(conv.in_shape))
        host.attrs["state_shift"] = plan.state_shift
        host.attrs["note"] = ("layer 0 bias_mant = clamp24(round_shift(conv(round(x * 2**state_shift), weight), "
                              "weight_exp)) + bias, in (W, H, C)")

        for i, (c, n) in enumerate(zip(chain.convs[:-1], chain.neurons[1:]), start=1):
            conv, neuron = graph.nodes[c], graph.nodes[n]
            g = layers.create_group(str(i))
            _ds_type(g, "conv")
            g.create_dataset("shape", data=np.array(neuron.shape))
            g.create_dataset("inChannels", data=conv.weight.shape[1])
            g.create_dataset("outChannels", data=conv.weight.shape[0])
            g.create_dataset("kernelSize", data=np.array(conv.weight.shape[2:]))
            g.create_dataset("stride", data=np.array([conv.stride, conv.stride]))
            g.create_dataset("padding", data=np.array([conv.padding, conv.padding]))
            g.create_dataset("dilation", data=np.array([1, 1]))
            g.create_dataset("groups", data=1)
            if plan.conv_exp[c] != 0:
                raise NetxExportError(f"{c}: netx convs have weight exponent 0, the plan has {plan.conv_exp[c]}")
            g.create_dataset("weight", data=plan.conv_mant[c].astype(np.int64))
            g.create_dataset("bias", data=plan.neuron_bias(conv.bias)[0])  # the conv's constant, a neuron bias
            _neuron(g, neuron, plan)
    return chain


# ----- running it -------------------------------------------------------------------------
def first_layer_current(path: str | os.PathLike, image: np.ndarray) -> np.ndarray:
    """Layer 0's input current ``(C, H, W)`` in integer state units for one image ``(C, H, W)``:
    the first conv (and its constant) as our fixed-point Lava path computes it."""
    with h5py.File(path, "r") as f:
        h = f["host/input_conv"]
        mant, exp = h["weight"][()], int(h["weight_exp"][()])
        bias, stride, pad = h["bias"][()], int(h["stride"][()]), int(h["padding"][()])
        in_shape, lam = tuple(h["in_shape"][()]), 2.0 ** int(h.attrs["state_shift"])
    image = np.asarray(image, dtype=np.float64)
    if image.shape != in_shape:
        raise ValueError(f"expected an image of shape {in_shape}, got {image.shape}")
    xq = np.round(whc(image) * lam).astype(np.int64)  # FixedPointPlan.quantize_input, (W, H, C)
    y = conv_whc(xq, correlation_weight(lava_conv_weight(mant)).astype(np.int64), mant.shape[:1:-1],
                 (stride, stride), (pad, pad))
    y = round_shift(y, exp)  # 24-bit synapse output, as FastConvModelFixed
    cur = y.transpose(2, 1, 0) + bias.reshape(-1, 1, 1)  # + the junction's round(lam * b)
    if np.abs(cur).max() > INPUT_CURRENT_MAX:
        raise ValueError(f"input current {np.abs(cur).max()} (state units) exceeds the 13-bit bias mantissa "
                         f"of netx's input layer; export with a smaller state_shift")
    return cur.astype(np.int64)


def run_netx(path: str | os.PathLike, current: np.ndarray, T: int, fast_conv: bool = False) -> list[np.ndarray]:
    """Run the netx network of ``path`` for one input in Lava ``fixed_pt``.

    ``current``: layer 0's input current ``(C, H, W)`` from :func:`first_layer_current`, set as
    the input neurons' ``bias_mant``.  Returns each layer's spikes ``[T, C, H, W]`` over its
    window (layer ``i`` records steps ``i + 2 .. i + T + 1`` of the ``T + len(layers)`` steps).
    ``fast_conv`` swaps Lava's stock fixed-point conv model for ``FastConvModelFixed`` (both are
    exact integer convolutions; netx's weight exponent is 0)."""
    ensure_lava_runtime()
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.conv.process import Conv as LavaConv
    from lava.proc.io.sink import RingBuffer

    net = netx.hdf5.Network(net_config=str(path), reset_interval=T, reset_offset=1)
    started = False
    try:
        shape = net.in_layer.neuron.bias_mant.shape
        cur = whc(np.asarray(current))
        if cur.shape != shape:
            raise ValueError(f"input current has shape {tuple(np.asarray(current).shape)}, the input layer "
                             f"{ir_shape(shape)}")
        net.in_layer.neuron.bias_mant.init = cur.astype(np.int32)
        steps = T + len(net.layers)
        sinks = []
        for layer in net.layers:
            sink = RingBuffer(shape=layer.out.shape, buffer=steps)
            layer.out.connect(sink.a_in)
            sinks.append(sink)
        exceptions = {}
        if fast_conv:
            from .lava_models.conv_model import FastConvModelFixed

            exceptions[LavaConv] = FastConvModelFixed
        cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map=exceptions)
        started = True
        net.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
        records = [np.asarray(s.data.get()) for s in sinks]  # (W, H, C, steps), index = time_step - 1
    finally:
        if started:
            try:
                net.stop()
            except Exception:  # the runtime may already be down after an error
                pass
        net.net_config.f.close()
    return [r[..., i + 1:i + 1 + T].transpose(3, 2, 1, 0).astype(np.int64) for i, r in enumerate(records)]
