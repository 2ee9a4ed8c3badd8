"""Operation counts per layer of a spiking graph, from its structure and real spike counts.

Conventions (docs/energy.md; counts are per denoiser call and per image):

* dense FLOPs of a conv = ``C_out * C_in * kH * kW * H_out * W_out`` multiply-accumulates per
  spiking step (the papers' "FLOPs", :func:`conv_flops`);
* paper synaptic ops ``SOP = fr * T * FLOPs`` with ``fr`` the conv's input firing rate
  (spikes per input element per step);
* exact synaptic events = for every input spike, the number of (output channel, output
  position) pairs it reaches through a non-zero weight; padding and stride taken into account
  (:func:`fanout_map`);
* convs on analog data (the first conv on the image, 1x1 shortcuts on residual streams) are
  MAC rows, like the TSM gains and the host-side layers (time MLP, block projections, tail);
* the first conv's input is the same at every step, so it is computed once per call.

Counting and pricing are separate and pure: :func:`count_layers` gives unpriced rows (one
function per IR node type, :data:`ROW_FUNCTIONS`), :func:`price` returns priced copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch.nn import functional as F

from sdm.errors import ConfigError
from sdm.export.ir import (
    AnalogInput,
    Conv,
    HostParams,
    IFNeurons,
    Junction,
    Node,
    Output,
    SNNGraph,
    TemporalAffine,
    Upsample,
)

from .presets import Preset

Spikes = dict[str, np.ndarray]  # neuron group -> mean spikes per neuron per call, (C, H, W)
CONVENTIONS = ("exact", "paper")  # the AC count :func:`price` uses: exact events or the paper's SOP


@dataclass(frozen=True)
class Row:
    name: str
    layer: str  # conv | tsm_gain | neurons | host
    kind: str  # AC | MAC | neuron
    input_rate: float | None  # spikes per input element per step (AC rows)
    dense_flops: float  # per step (per execution for host rows)
    executions: int  # per call: T, or 1 for computations done once per call
    sop_paper: float  # fr * T * FLOPs (AC rows)
    synaptic_events: float  # exact events (AC rows)
    macs: float  # MAC rows
    neuron_updates: float
    energy_pj: float = 0.0  # filled by price()
    share: float = 0.0  # filled by price()

    def to_dict(self) -> dict:
        return asdict(self)


def mac_row(name: str, layer: str, flops: float, executions: int) -> Row:
    """A layer on analog data: ``flops`` multiply-accumulates per execution."""
    return Row(name, layer, "MAC", None, flops, executions, 0.0, 0.0, flops * executions, 0.0)


def fanout_map(conv: Conv, upsample: Upsample | None = None) -> np.ndarray:
    """How many (output channel, output position) pairs each input element of ``conv`` reaches
    through a non-zero weight, ``(C_in, H, W)``; with ``upsample`` the map is per element of the
    upsample's input (a spike fans out to its ``scale x scale`` copies)."""
    mask = torch.from_numpy((conv.weight != 0).astype(np.float64))
    c_out, h_out, w_out = conv.shape
    _, h_in, w_in = conv.in_shape
    k = conv.weight.shape[-1]
    extra_h = h_in - ((h_out - 1) * conv.stride - 2 * conv.padding + k)
    extra_w = w_in - ((w_out - 1) * conv.stride - 2 * conv.padding + k)
    fan = F.conv_transpose2d(torch.ones(1, c_out, h_out, w_out, dtype=torch.float64), mask, stride=conv.stride,
                             padding=conv.padding, output_padding=(extra_h, extra_w))[0]
    if upsample is not None and upsample.mode == "zeros":  # only the inserted elements carry input
        fan = fan[:, ::upsample.scale, ::upsample.scale]
    elif upsample is not None:
        s = upsample.scale
        fan = fan.view(fan.shape[0], fan.shape[1] // s, s, fan.shape[2] // s, s).sum(dim=(2, 4))
    return fan.numpy()


def conv_flops(conv: Conv, graph: SNNGraph | None = None) -> float:
    """Dense multiply-accumulates of one step of ``conv``: ``C_out * C_in * kH * kW * H_out * W_out``.

    With ``graph``, a conv after zero insertion by ``s`` (a lowered stride-``s`` transposed conv) counts
    what the transposed conv costs, ``C_out * C_in * kH * kW * H_in * W_in`` = the above / ``s^2``:
    the inserted zeros are never multiplied."""
    _, h_out, w_out = conv.shape
    flops = float(conv.weight.size * h_out * w_out)
    if graph is not None:
        src = graph.nodes[graph.predecessors(conv.name)[0]]
        if isinstance(src, Upsample) and src.mode == "zeros":
            flops /= src.scale ** 2
    return flops


def tail_conv_flops(host: HostParams) -> dict[str, float]:
    """Dense multiply-accumulates of one step of each of the tail's two convs (at image size)."""
    _, height, width = host.img_shape
    return {"tail.conv": float(host.tail.conv_w.size * height * width),
            "tail.out_conv": float(host.tail.out_w.size * height * width)}


# ---- one row function per IR node type: (graph, node, spikes, T) -> Row, or None -----------------

def _conv_row(graph: SNNGraph, node: Conv, spikes: Spikes, T: int) -> Row:
    """A conv on spikes is an AC row (exact events and paper SOP); on analog currents a MAC row,
    computed once per call when its input is the analog image (the same at every step)."""
    flops = conv_flops(node, graph)
    source = graph.spike_source(node.name)
    if source is None:
        once = isinstance(graph.nodes[graph.predecessors(node.name)[0]], AnalogInput)
        return mac_row(node.name, "conv", flops, 1 if once else T)
    neurons, upsample = source
    counts = spikes[neurons.name]
    rate = float(counts.mean()) / T
    events = float((counts * fanout_map(node, upsample)).sum())
    return Row(node.name, "conv", "AC", rate, flops, T, rate * T * flops, events, 0.0, 0.0)


def _tsm_gain_row(graph: SNNGraph, node: TemporalAffine, spikes: Spikes, T: int) -> Row:
    """One multiply per element and step."""
    return mac_row(node.name, "tsm_gain", float(np.prod(node.shape)), T)


def _neurons_row(graph: SNNGraph, node: IFNeurons, spikes: Spikes, T: int) -> Row:
    """One state update per neuron and step."""
    size = float(np.prod(node.shape))
    return Row(node.name, "neurons", "neuron", None, 0.0, T, 0.0, 0.0, 0.0, size * T)


def _no_row(graph: SNNGraph, node: Node, spikes: Spikes, T: int) -> None:
    """Inputs, upsampling (counted in the next conv's fan-out), sums and the output: not priced."""


ROW_FUNCTIONS: dict[type, Callable[[SNNGraph, Node, Spikes, int], Row | None]] = {
    Conv: _conv_row,
    TemporalAffine: _tsm_gain_row,
    IFNeurons: _neurons_row,
    AnalogInput: _no_row,
    Upsample: _no_row,
    Junction: _no_row,
    Output: _no_row,
}


def _row_function(node: Node) -> Callable[[SNNGraph, Node, Spikes, int], Row | None]:
    for cls in type(node).__mro__:
        if cls in ROW_FUNCTIONS:
            return ROW_FUNCTIONS[cls]
    raise TypeError(f"{node.name}: no energy row for node type {type(node).__name__}")


def count_layers(graph: SNNGraph, spikes_per_call: Spikes, T: int | None = None) -> list[Row]:
    """Rows for every layer, given each neuron group's mean spikes per neuron per call ``(C, H, W)``.

    ``T`` defaults to the graph's spiking steps (needed for graphs without a host side)."""
    if T is None:
        if graph.host is None:
            raise ConfigError("give T for a graph without host-side parameters")
        T = graph.host.T
    rows = []
    for name in graph.topological_order():
        node = graph.nodes[name]
        row = _row_function(node)(graph, node, spikes_per_call, T)
        if row is not None:
            rows.append(row)
    if graph.host is not None:
        rows.extend(host_rows(graph))
    return rows


def host_rows(graph: SNNGraph) -> list[Row]:
    """The analog layers around the spiking graph, as MAC rows."""
    h = graph.host
    T = h.T
    rows = [mac_row("host.time_mlp", "host", float(h.time_mlp.fc1_w.size + h.time_mlp.fc2_w.size), 1)]
    rows += [mac_row(f"host.{block}.temb_proj", "host", float(proj.w.size), 1) for block, proj in h.temb_proj.items()]
    rows += [mac_row(f"host.{label}", "host", flops, T) for label, flops in tail_conv_flops(h).items()]
    c_img, height, width = h.img_shape
    img = c_img * height * width
    # tail BatchNorm (affine), output BatchNorm, TSM gain of the tail conv and the membrane readout
    elementwise = float(h.tail.channels * height * width + img * (2 if h.tail.conv_gain is not None else 1) + img)
    rows.append(mac_row("host.tail.norm_readout", "host", elementwise, T))
    return rows


@dataclass(frozen=True)
class Priced:
    """Rows priced under one convention: copies with ``energy_pj`` and ``share`` filled in."""

    rows: list[Row]
    total_pj: float


def row_energy_pj(row: Row, preset: Preset, convention: str = "exact", memory: bool = False) -> float:
    """One row's energy; ``convention`` picks the AC count (exact events or paper SOP)."""
    if row.kind == "AC":
        n = row.synaptic_events if convention == "exact" else row.sop_paper
        return n * preset.ac_pj + (n * preset.memory_pj_per_weight_read if memory else 0.0)
    if row.kind == "MAC":
        return row.macs * preset.mac_pj + (row.macs * preset.memory_pj_per_weight_read if memory else 0.0)
    return row.neuron_updates * preset.neuron_update_pj


def price(rows: list[Row], preset: Preset, convention: str = "exact", memory: bool = False) -> Priced:
    """Priced copies of ``rows`` (energy and share of the total) and the total; ``rows`` stay as they are."""
    if convention not in CONVENTIONS:
        raise ConfigError(f"unknown counting convention {convention!r}; choose from {', '.join(CONVENTIONS)}")
    energies = [row_energy_pj(r, preset, convention, memory) for r in rows]
    total = sum(energies)
    return Priced([replace(r, energy_pj=e, share=e / total if total else 0.0) for r, e in zip(rows, energies)], total)


def paper_formula_pj(rows: list[Row], preset: Preset) -> float:
    """SDM eq. 20: ``E = E_MAC * FLOPs(first conv) + E_AC * sum of SOP`` over spiking convs."""
    first = next(r for r in rows if r.layer == "conv" and r.kind == "MAC" and r.executions == 1)
    return preset.mac_pj * first.dense_flops + preset.ac_pj * sum(r.sop_paper for r in rows if r.kind == "AC")


def dense_conv_macs(graph: SNNGraph) -> float:
    """Dense MACs of one pass of every conv of the UNet (spiking graph and tail), one step."""
    tail = sum(tail_conv_flops(graph.host).values()) if graph.host is not None else 0.0
    return sum(conv_flops(n, graph) for n in graph.of_type(Conv)) + tail


def ann_macs(graph: SNNGraph) -> float:
    """The same UNet as an ANN (ReLU/Swish instead of spikes, no T): every conv and every host
    layer (:func:`host_rows`, the tail's convs included) once, dense."""
    host = sum(r.dense_flops for r in host_rows(graph)) if graph.host is not None else 0.0
    return sum(conv_flops(n, graph) for n in graph.of_type(Conv)) + host
