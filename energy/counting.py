"""Operation counts per layer of a spiking graph, from its structure and real spike counts.

Conventions (DESIGN.md section 5; counts are per denoiser call and per image):

* dense FLOPs of a conv = ``C_out * C_in * kH * kW * H_out * W_out`` multiply-accumulates per
  spiking step (the papers' "FLOPs");
* paper synaptic ops ``SOP = fr * T * FLOPs`` with ``fr`` the conv's input firing rate
  (spikes per input element per step);
* exact synaptic events = for every input spike, the number of (output channel, output
  position) pairs it reaches through a non-zero weight; padding and stride taken into account
  (:func:`fanout_map`);
* convs on analog data (the first conv on the image, 1x1 shortcuts on residual streams) are
  MAC rows, like the TSM gains and the host-side layers (time MLP, block projections, tail);
* the first conv's input is the same at every step, so it is computed once per call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from sdm.export.ir import AnalogInput, Conv, IFNeurons, SNNGraph, TemporalAffine, Upsample

from .presets import Preset


@dataclass
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
    energy_pj: float = 0.0
    share: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


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
    if upsample is not None:
        s = upsample.scale
        fan = fan.view(fan.shape[0], fan.shape[1] // s, s, fan.shape[2] // s, s).sum(dim=(2, 4))
    return fan.numpy()


def _spike_source(graph: SNNGraph, conv_name: str) -> tuple[str | None, Upsample | None]:
    src = graph.nodes[graph.predecessors(conv_name)[0]]
    if isinstance(src, IFNeurons):
        return src.name, None
    if isinstance(src, Upsample):
        return graph.predecessors(src.name)[0], src
    return None, None


def count_layers(graph: SNNGraph, spikes_per_call: dict[str, np.ndarray], T: int | None = None) -> list[Row]:
    """Rows for every layer, given each neuron group's mean spikes per neuron per call ``(C, H, W)``.

    ``T`` defaults to the graph's spiking steps (needed for graphs without a host side)."""
    if T is None:
        if graph.host is None:
            raise ValueError("give T for a graph without host-side parameters")
        T = graph.host.T
    rows = []
    for name in graph.topological_order():
        node = graph.nodes[name]
        if isinstance(node, Conv):
            c_out, h_out, w_out = node.shape
            flops = float(node.weight.size * h_out * w_out)
            src, up = _spike_source(graph, name)
            if src is not None:
                counts = spikes_per_call[src]
                rate = float(counts.mean()) / T
                events = float((counts * fanout_map(node, up)).sum())
                rows.append(Row(name, "conv", "AC", rate, flops, T, rate * T * flops, events, 0.0, 0.0))
            else:
                once = isinstance(graph.nodes[graph.predecessors(name)[0]], AnalogInput)
                n = 1 if once else T
                rows.append(Row(name, "conv", "MAC", None, flops, n, 0.0, 0.0, flops * n, 0.0))
        elif isinstance(node, TemporalAffine):
            size = float(np.prod(node.shape))
            rows.append(Row(name, "tsm_gain", "MAC", None, size, T, 0.0, 0.0, size * T, 0.0))
        elif isinstance(node, IFNeurons):
            size = float(np.prod(node.shape))
            rows.append(Row(name, "neurons", "neuron", None, 0.0, T, 0.0, 0.0, 0.0, size * T))
    if graph.host is not None:
        rows.extend(host_rows(graph))
    return rows


def host_rows(graph: SNNGraph) -> list[Row]:
    """The analog layers around the spiking graph, as MAC rows."""
    h = graph.host
    T = h.T
    rows = []
    mlp = float(h.time_mlp["fc1_w"].size + h.time_mlp["fc2_w"].size)
    rows.append(Row("host.time_mlp", "host", "MAC", None, mlp, 1, 0.0, 0.0, mlp, 0.0))
    for block, (w, _) in h.temb_proj.items():
        rows.append(Row(f"host.{block}.temb_proj", "host", "MAC", None, float(w.size), 1, 0.0, 0.0, float(w.size), 0.0))
    _, height, width = h.img_shape
    ch = h.tail["bn_scale"].size
    for key, label in (("conv_w", "tail.conv"), ("out_w", "tail.out_conv")):
        flops = float(h.tail[key].size * height * width)
        rows.append(Row(f"host.{label}", "host", "MAC", None, flops, T, 0.0, 0.0, flops * T, 0.0))
    img = h.img_shape[0] * height * width
    # tail BatchNorm (affine), output BatchNorm, TSM gain of the tail conv and the membrane readout
    elementwise = float(ch * height * width + img * (2 if "conv_gain" in h.tail else 1) + img)
    rows.append(Row("host.tail.norm_readout", "host", "MAC", None, elementwise, T, 0.0, 0.0, elementwise * T, 0.0))
    return rows


def price(rows: list[Row], preset: Preset, convention: str = "exact", memory: bool = False) -> float:
    """Fill ``energy_pj`` and ``share``; ``convention`` picks the AC count (exact events or paper SOP)."""
    for r in rows:
        if r.kind == "AC":
            n = r.synaptic_events if convention == "exact" else r.sop_paper
            r.energy_pj = n * preset.ac_pj + (n * preset.memory_pj_per_weight_read if memory else 0.0)
        elif r.kind == "MAC":
            r.energy_pj = r.macs * preset.mac_pj + (r.macs * preset.memory_pj_per_weight_read if memory else 0.0)
        else:
            r.energy_pj = r.neuron_updates * preset.neuron_update_pj
    total = sum(r.energy_pj for r in rows)
    for r in rows:
        r.share = r.energy_pj / total if total else 0.0
    return total


def paper_formula_pj(rows: list[Row], preset: Preset) -> float:
    """SDM eq. 20: ``E = E_MAC * FLOPs(first conv) + E_AC * sum of SOP`` over spiking convs."""
    first = next(r for r in rows if r.layer == "conv" and r.kind == "MAC" and r.executions == 1)
    return preset.mac_pj * first.dense_flops + preset.ac_pj * sum(r.sop_paper for r in rows if r.kind == "AC")


def ann_macs(graph: SNNGraph) -> float:
    """The same UNet as an ANN (ReLU/Swish instead of spikes, no T): every layer once, dense."""
    rows = count_layers(graph, {n.name: np.zeros(n.shape) for n in graph.of_type(IFNeurons)}, T=1)
    return sum(r.dense_flops for r in rows if r.layer in ("conv", "host"))


def dense_conv_macs(graph: SNNGraph) -> float:
    """Dense MACs of one pass of every conv of the UNet (spiking graph and tail), one step."""
    convs = sum(float(n.weight.size * n.shape[1] * n.shape[2]) for n in graph.of_type(Conv))
    if graph.host is None:
        return convs
    _, h, w = graph.host.img_shape
    return convs + float((graph.host.tail["conv_w"].size + graph.host.tail["out_w"].size) * h * w)
