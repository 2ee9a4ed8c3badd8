"""The fused build: the IR cut into K stages, each one Lava process (docs/lava-mapping.md).

The loihi build (:mod:`.builder`) makes one Lava process per layer; on Lava's CPU back end every
process costs a few hundred microseconds per Lava step whatever it computes, and a call takes
``T + depth`` steps.  Here the topological order of the graph is cut into ``K`` contiguous stages
(:func:`plan_stages`); each stage is one :class:`~.lava_models.fused_model.FusedStage` that runs
its layers for one spiking step per Lava step with zero latency between them, so a call takes
``T`` Lava steps, and a batch is an array dimension of every value instead of a pipeline.

Cuts: the stages get about equal shares of the work (conv multiply-accumulates, plus one per
value of every other layer), and each cut moves, within a window around its share, to where the
fewest values cross it: in a UNet that is a block or resolution boundary, where only the residual
stream and the pending skips are alive.  A stage reads the values it needs from the previous
stage's packed output and forwards those later stages need (skips pass through), so the stages
form one chain; the image and the time embedding are read from the input files by every stage
that needs them.

The layers are the loihi build's: :func:`build_fused` runs the builder's factories with every
depth 0 (one window of ``T`` steps, reset at the first step of each call) and hands their process
models and parameters to the stages (:class:`~.lava_models.fused_model.LayerSpec`), so both builds
share one set of neuron, conv and fixed-point models and one quantisation.  Both builds start from the
same graph, :func:`~.builder.prepare`'s: LIF input scales folded into the convs before the neurons
(:func:`~.builder.fold_input_scale`).  Zero-insertion upsamplings (``Upsample(mode="zeros")``, the
transposed convolutions of the Spiking-Diffusion decoder) are ported layers like the nearest ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sdm.errors import ConfigError
from sdm.export.ir import AnalogInput, Conv, IFNeurons, Output, SNNGraph

from .builder import BuildContext, Probes, Timing, constant_inputs, lava_shape, make_processes, plan_timing, prepare
from .lava_runtime import ensure_lava_runtime

if TYPE_CHECKING:
    from lava.magma.core.process.process import AbstractProcess

    from .fixed_point import FixedPointPlan
    from .lava_models.fused_model import FusedStage, LayerSpec

DEFAULT_STAGES = 6  # a few stages: ~ one per resolution level of the down and up paths of a UNet
TEMB = "(temb)"  # the layer that reads the time-embedding file (no IR node: the builder's temb source)


# ----- cutting the graph ------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """A stage: the input nodes it reads from the files, the layers it computes (topological order) and
    the values that cross into it and out of it (``bus_in`` / ``bus_out``)."""

    index: int
    inputs: tuple[str, ...]
    layers: tuple[str, ...]
    bus_in: tuple[str, ...]
    bus_out: tuple[str, ...]

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.inputs + self.layers


def work(graph: SNNGraph, name: str) -> float:
    """The share of a step's work of one layer: a conv's multiply-accumulates, else one per value."""
    node = graph.nodes[name]
    size = float(np.prod(node.shape))
    return size * float(np.prod(node.weight.shape[1:])) if isinstance(node, Conv) else size


def _layer_order(graph: SNNGraph) -> list[str]:
    """What the cuts split: the topological order without the inputs (read from files by every stage that
    needs them) and the Output (the host reads the junction before it)."""
    return [n for n in graph.topological_order() if not isinstance(graph.nodes[n], (AnalogInput, Output))]


def crossing(graph: SNNGraph, order: list[str]) -> list[list[str]]:
    """``crossing[p]``: the layers of ``order[:p]`` that a layer of ``order[p:]`` reads (cut before ``p``)."""
    position = {n: i for i, n in enumerate(order)}
    last_use = {n: max((position[d] for d in graph.successors(n) if d in position), default=-1) for n in order}
    return [[n for n in order[:p] if last_use[n] >= p] for p in range(len(order) + 1)]


def _cut_points(graph: SNNGraph, order: list[str], stages: int) -> list[int]:
    """``stages - 1`` cut positions: each near its equal share of the work, where the fewest values cross."""
    cum = np.cumsum([work(graph, n) for n in order])
    live = [sum(int(np.prod(graph.nodes[n].shape)) for n in c) for c in crossing(graph, order)]
    reach = max(1, len(order) // (3 * stages))
    cuts: list[int] = []
    for j in range(1, stages):
        target = int(np.searchsorted(cum, cum[-1] * j / stages)) + 1
        low = max(cuts[-1] + 1 if cuts else 1, target - reach)
        high = min(len(order) - (stages - j), target + reach)  # room for the stages after this one
        low = min(low, high)
        cuts.append(min(range(low, high + 1), key=lambda p: (live[p], abs(p - target))))
    return cuts


def plan_stages(graph: SNNGraph, stages: int = DEFAULT_STAGES) -> list[Stage]:
    """Cut ``graph`` into ``stages`` contiguous stages of its topological order (module docstring)."""
    order = _layer_order(graph)
    if isinstance(stages, bool) or not isinstance(stages, int) or not 1 <= stages <= len(order):
        raise ConfigError(f"--stages must be an integer from 1 to {len(order)} (the graph's layers), got {stages!r}")
    bounds = [0, *_cut_points(graph, order, stages), len(order)]
    cross = crossing(graph, order)
    result = []
    for i in range(stages):
        layers = order[bounds[i]:bounds[i + 1]]
        reads = {p for n in layers for p in graph.predecessors(n)}
        inputs = [n for n in graph.topological_order() if isinstance(graph.nodes[n], AnalogInput) and n in reads]
        result.append(Stage(i, tuple(inputs), tuple(layers), tuple(cross[bounds[i]]), tuple(cross[bounds[i + 1]])))
    return result


# ----- building the stages ---------------------------------------------------------------------
def _spec(ctx: BuildContext, name: str, proc: AbstractProcess, record: str = "") -> LayerSpec:
    """The stage's description of layer ``name`` from the process the builder's factory made for it."""
    from .lava_models.catalog import model_of
    from .lava_models.fused_model import LayerSpec
    from .lava_models.processes import ChannelDense, MemmapSource

    graph = ctx.graph
    node = graph.nodes.get(name)
    if isinstance(proc, MemmapSource):
        kind, inputs = ("image" if proc is ctx.source else "vector"), ()
    elif isinstance(node, Conv) or isinstance(proc, ChannelDense):
        kind, inputs = "synapse", ((TEMB,) if isinstance(proc, ChannelDense) else tuple(graph.predecessors(name)))
    else:
        kind, inputs = "ported", tuple(graph.predecessors(name))
    return LayerSpec(name=name, kind=kind, model=model_of(proc, ctx.mode), params=proc.proc_params,
                     vars={v.name: (tuple(v.shape), v.init) for v in proc.vars},
                     in_ports={p.name: tuple(p.shape) for p in proc.in_ports},
                     out_ports={p.name: tuple(p.shape) for p in proc.out_ports}, inputs=inputs,
                     state=("u", "v") if isinstance(node, IFNeurons) else (), record=record)


@dataclass
class FusedGraph:
    """The built stages and what the runner needs to drive them (the interface of ``LavaGraph``)."""

    stages: list[FusedStage]
    plan: list[Stage]
    probes: dict[str, np.ndarray]  # IR name -> (B*T, W, H, C) memory map written by the stages
    inputs: dict[str, np.ndarray]  # "image": (B, W, H, C), "temb": (1, width): written by the host
    output: str  # IR name of the junction whose probe holds the graph output
    neurons: dict[str, FusedStage]  # IR neuron name -> the stage that runs it
    batch: int
    T: int

    @property
    def source(self) -> FusedStage:
        """The process the runtime is run and stopped through."""
        return self.stages[0]

    run_length = property(lambda self: self.T, doc="Lava steps per call: T, whatever the depth")
    window = property(lambda self: self.batch * self.T)
    num_processes = property(lambda self: len(self.stages))

    def processes(self) -> list[AbstractProcess]:
        return list(self.stages)

    def table(self) -> str:
        """One row per stage: its layers (first and last), how many, its share of the work and the values
        it passes on (count and size per image)."""
        rows = [("stage", "layers", "first .. last", "neurons", "bus out (values per image)")]
        for s, proc in zip(self.plan, self.stages):
            size = sum(int(np.prod(sl.shape[1:])) for sl in proc.proc_params["bus_out"])
            rows.append((str(s.index), str(len(s.layers)), f"{s.layers[0]} .. {s.layers[-1]}",
                         str(sum(1 for n in s.layers if n in self.neurons)), f"{len(s.bus_out)} ({size})"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"{len(self.stages)} Lava processes (fused stages); {self.T} steps per call: "
                     f"{self.batch} image(s) as an array dimension, T {self.T}, zero latency inside a stage")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _stage_process(ctx: BuildContext, stage: Stage, specs: dict[str, LayerSpec]) -> FusedStage:
    from .lava_models.fused_model import FusedStage, bus_layout

    names = list(stage.nodes)
    if any(specs[n].inputs == (TEMB,) for n in names):
        names.insert(0, TEMB)  # the time-embedding file, read by the stage's projections
    t = ctx.timing
    return FusedStage(layers=[specs[n] for n in names], bus_in=bus_layout([specs[n] for n in stage.bus_in], t.batch),
                      bus_out=bus_layout([specs[n] for n in stage.bus_out], t.batch), T=t.T, batch=t.batch,
                      name=f"stage{stage.index}")


def build_fused(graph: SNNGraph, T: int, probe_dir: str, batch: int = 1, record_spikes: bool = True,
                threshold_scale: float = 1.0, plan: FixedPointPlan | None = None,
                stages: int = DEFAULT_STAGES) -> FusedGraph:
    """Create (not yet compile) the stage processes of ``graph``: the loihi build's layers (its factories,
    every depth 0) cut into ``stages`` stages, chained by their packed outputs.  Probe files as
    :func:`~.builder.build` makes them; the output junction's probe holds the graph output."""
    ensure_lava_runtime()
    graph, plan = prepare(graph, plan)  # LIF input scales folded into the convs, as in the loihi build
    layout = plan_stages(graph, stages)
    output = plan_timing(graph, T, batch).output
    timing = Timing(depth={n: 0 for n in graph.nodes}, output="", T=T, batch=batch, window=batch * T, run_length=T)
    ctx = BuildContext(graph, timing, constant_inputs(graph), Probes(probe_dir, batch * T),
                       Probes(probe_dir, batch * T, prefix="in-"), plan=plan, threshold_scale=threshold_scale,
                       record_spikes=False)  # the stages record, not the layers
    procs = make_processes(ctx)
    if ctx.temb_source is not None:
        procs[TEMB] = ctx.temb_source
    specs = {}
    for name, proc in procs.items():
        node = graph.nodes.get(name)
        record = ""
        if (record_spikes and isinstance(node, IFNeurons)) or name == output:
            record = ctx.probes.add(name, lava_shape(node.shape))
        specs[name] = _spec(ctx, name, proc, record)
    chain = [_stage_process(ctx, s, specs) for s in layout]
    for a, b in zip(chain, chain[1:]):
        a.a_out.connect(b.a_in)
    where = {n: proc for s, proc in zip(layout, chain) for n in s.nodes}
    return FusedGraph(stages=chain, plan=layout, probes=ctx.probes.files, inputs=ctx.inputs.files, output=output,
                      neurons={n: where[n] for n in specs if isinstance(graph.nodes.get(n), IFNeurons)},
                      batch=batch, T=T)
