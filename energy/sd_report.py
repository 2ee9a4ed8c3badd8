"""``sdm energy`` on Spiking-Diffusion: per-layer rows per SDID call, per decoder call and per encoder call,
and the cost of one generated sample (S SDID calls + one decode), beside the ANN of the same networks.

Spikes come from forward hooks on the trained PyTorch modules along real generation (the SDID calls of
sampling ``n`` images, the decoder on their tokens, the encoder on ``n`` bundled digits), or from the
spike records of ``sdm simulate`` (``DIR/<part>/spikes.h5``).  The layers are counted by the UNet's
counter (:func:`sdm.energy.counting.count_layers`: AC rows for convs on spikes with exact fan-out, MAC
rows for convs on analog currents, computed once per call when the input is constant); what the host
does with each part's per-step output is a MAC row of its own (:func:`host_rows`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from sdm.export.ir import Conv, IFNeurons, SNNGraph
from sdm.export.sd_graph import Part, SDGraphs
from sdm.export.spike_record import read_spike_record
from sdm.train.neuron import IFNeuron

from .counting import Row, conv_flops, count_layers, mac_row, price
from .presets import PRESETS, get_preset
from .rates import SpikeCounts, module_to_graph
from .report import ANN_PRESET, energy_bars, kind_totals, rows_table

_READOUT = {"sdid": "host.readout.mean", "decoder": "host.readout.leaky_tanh", "encoder": "host.readout.codes"}


class CallRecorder:
    """Forward hooks on the neurons of ``module`` that ``graph`` holds; :meth:`flush` ends one call and
    keeps its spikes per neuron (summed over the T steps, averaged over the images) by graph group."""

    def __init__(self, module: torch.nn.Module, graph: SNNGraph):
        self.graph = graph
        self.current: dict[str, torch.Tensor] = {}
        self.per_call: dict[str, list] = {n.name: [] for n in graph.of_type(IFNeurons)}
        wanted = {n.module for n in graph.of_type(IFNeurons)}
        self.hooks = [m.register_forward_hook(lambda m, i, o, name=name: self.current.__setitem__(name, o))
                      for name, m in module.named_modules() if isinstance(m, IFNeuron) and name in wanted]

    def flush(self) -> None:
        for mod, s in self.current.items():
            for name, part in module_to_graph(self.graph, mod, s).items():
                self.per_call[name].append(part.abs().sum(dim=0).mean(dim=0).double().numpy())
        self.current.clear()

    def close(self, timesteps: list[int], source: str) -> SpikeCounts:
        for h in self.hooks:
            h.remove()
        return SpikeCounts(timesteps, {k: np.stack(v) for k, v in self.per_call.items()}, source)


@torch.no_grad()
def torch_counts(model, vqsvae, graphs: SDGraphs, n: int, temperature: float, seed: int,
                 images: torch.Tensor, roles: set[str] | None = None) -> dict[str, SpikeCounts]:
    """Spike counts of each part (of ``roles``, default all) from hooks on ``model`` (a SpikingDiffusion,
    None for a VQ-SVAE file) while it generates ``n`` samples, and on ``vqsvae`` while it decodes them and
    encodes ``images``."""
    roles = set(graphs.parts) if roles is None else roles
    counts = {}
    if roles == {"encoder"}:
        return {"encoder": _encoder_counts(vqsvae, graphs, images)}
    if model is not None and graphs.generator:
        rec, ts = CallRecorder(model.denoiser, graphs["sdid"].graph), []

        def denoiser(x_t, t):
            out = model.denoiser(x_t, t)
            rec.flush()
            ts.append(int(t[0]))
            return out

        gen = torch.Generator().manual_seed(int(seed))
        tokens = model.diffusion.sample(denoiser, n, model.token_shape, temperature, gen)
        counts["sdid"] = rec.close(ts, f"PyTorch hooks, {n} sample(s), temperature {temperature:g}")
        what = f"the tokens of those {n} samples"
    else:
        tokens, what = vqsvae.tokens(images), f"the tokens of {images.shape[0]} bundled digits"
    rec = CallRecorder(vqsvae, graphs["decoder"].graph)
    vqsvae.tokens_to_images(tokens)
    rec.flush()
    counts["decoder"] = rec.close([0], f"PyTorch hooks, {what}")
    counts["encoder"] = _encoder_counts(vqsvae, graphs, images)
    return {role: c for role, c in counts.items() if role in roles}


def _encoder_counts(vqsvae, graphs: SDGraphs, images: torch.Tensor) -> SpikeCounts:
    rec = CallRecorder(vqsvae, graphs["encoder"].graph)
    vqsvae.tokens(images)
    rec.flush()
    return rec.close([0], f"PyTorch hooks, {images.shape[0]} bundled digits")


def sim_counts(sim_dir: str | os.PathLike, graphs: SDGraphs) -> dict[str, SpikeCounts]:
    """Spike counts of the parts that ``sdm simulate`` recorded in ``sim_dir/<part>/spikes.h5`` (checked
    against each part's graph)."""
    counts = {}
    for role, part in graphs.parts.items():
        folder = Path(sim_dir) / role
        if not (folder / "spikes.h5").exists() and role == "encoder":
            continue  # generation does not run the encoder; its counts then come from PyTorch
        record = read_spike_record(folder, part.graph)
        per_call = {k: layer.neuron_counts.astype(np.float64).mean(axis=1) for k, layer in record.layers.items()}
        counts[role] = SpikeCounts(record.timesteps, per_call, f"Lava simulation {folder} ({record.mode})")
    return counts


def host_rows(part: Part) -> list[Row]:
    """What the host computes on the part's per-step output: the mean (SDID), the leaky sum and tanh
    (decoder), the weighted sum and code bias (encoder), one MAC per output element and step."""
    size = float(np.prod(part.graph.output.shape))
    return [mac_row(_READOUT[part.role], "host", size, part.host.T)]


def part_rows(part: Part, counts: SpikeCounts) -> list[Row]:
    return count_layers(part.graph, counts.mean(), T=part.host.T) + host_rows(part)


def ann_macs(part: Part) -> float:
    """The same network as an ANN: every conv once, dense (a transposed conv at its own cost), and the
    host's readout once."""
    convs = sum(conv_flops(n, part.graph) for n in part.graph.of_type(Conv))
    return convs + float(np.prod(part.graph.output.shape))


def _part_report(part: Part, counts: SpikeCounts, cost, memory: bool, calls_per_sample: int) -> dict:
    priced = price(part_rows(part, counts), cost, memory=memory)
    ann = ann_macs(part) * PRESETS[ANN_PRESET].mac_pj
    per_call = [price(part_rows(part, SpikeCounts([t], {k: v[i:i + 1] for k, v in counts.per_call.items()}, "")),
                      cost, memory=memory).total_pj for i, t in enumerate(counts.timesteps)]
    return {"rows": [r.to_dict() for r in priced.rows], "total_pj_per_call": priced.total_pj,
            "ann_pj_per_call": ann, "snn_over_ann": priced.total_pj / ann, "calls_per_sample": calls_per_sample,
            "spike_source": counts.source, "calls": len(counts.timesteps),
            "per_t": [{"t": t, "energy_pj": e} for t, e in zip(counts.timesteps, per_call)]}


def sd_energy_from_checkpoint(model_path: str | os.PathLike, n: int = 4, temperature: float = 1.0, seed: int = 0,
                              preset: str = "45nm-fp32", sim_dir: str | None = None, memory: bool = False,
                              use_ema: bool = True) -> dict:
    """The report of a Spiking-Diffusion checkpoint: its lowered graphs, spikes from PyTorch hooks (or the
    records of ``sim_dir``, the encoder from PyTorch when the run did not record it)."""
    from sdm.export.lower_sd import lower_spiking_diffusion
    from sdm.train.data import load_dataset, to_float
    from sdm.train.sd_model import sd_modules

    get_preset(preset)  # refused before any work
    vq, sdid, model = sd_modules(model_path, use_ema)
    graphs = lower_spiking_diffusion(vq, sdid)
    data = load_dataset("mnist-bundled", vq.cfg.img_size, channels=vq.cfg.img_ch)
    g = torch.Generator().manual_seed(int(seed))
    images = to_float(data.images_uint8[torch.randperm(len(data), generator=g)[:n]])
    counts = sim_counts(sim_dir, graphs) if sim_dir is not None else {}
    if set(counts) != set(graphs.parts):  # a Lava run records no encoder: only that part from hooks then
        missing = set(graphs.parts) - set(counts)
        counts = {**torch_counts(model, vq, graphs, n, temperature, seed, images, roles=missing), **counts}
    return sd_energy_report(graphs, counts, str(model_path), preset, memory)


def sd_energy_report(graphs: SDGraphs, counts: dict[str, SpikeCounts], model: str, preset: str = "45nm-fp32",
                     memory: bool = False) -> dict:
    """Everything the report shows (per part and per generated sample), as a dict."""
    cost = get_preset(preset)
    steps = graphs["sdid"].host.steps if graphs.generator else 0
    calls_per_sample = {"sdid": steps, "decoder": 1, "encoder": 0}
    parts = {role: _part_report(graphs[role], counts[role], cost, memory, calls_per_sample[role]) for role in counts}
    sample = sum(p["total_pj_per_call"] * p["calls_per_sample"] for p in parts.values())
    ann = sum(p["ann_pj_per_call"] * p["calls_per_sample"] for p in parts.values())
    return {"model": model, "family": "spiking-diffusion", "preset": cost.describe(), "parts": parts,
            "total_pj_per_sample": sample, "ann_pj_per_sample": ann,
            "snn_over_ann_per_sample": sample / ann if ann else None, "assumptions": assumptions(steps, memory)}


def assumptions(steps: int, memory: bool) -> list[str]:
    return [
        f"a generated sample = {steps} SDID calls + one decoder call (the encoder makes training tokens only)",
        "counts per call and per image; spikes summed over the T steps",
        "first conv of each part (token currents, code vectors, the image: the same at every step) computed "
        "once per call, MAC; convs on spikes are AC rows priced per exact synaptic event",
        "transposed convs counted at their own cost (zero insertion adds no operations)",
        "host readouts (SDID mean, decoder leaky sum + tanh, encoder weighted sum + code bias) one MAC per "
        "output element and step; token sampling, the codebook lookup and the arg-max are not priced",
        "ANN: the same networks, every conv once, dense, at 45 nm FP32",
    ] + (["memory: one weight read per AC/MAC"] if memory else [])


def format_sd_table(rep: dict) -> str:
    out = io.StringIO()
    out.write(f"Spiking-Diffusion energy, {rep['preset']}\n")
    for role, p in rep["parts"].items():
        ac, mac = kind_totals(p["rows"])
        out.write(f"\n{role}: per call ({p['spike_source']}, {p['calls']} call(s))\n")
        out.write(rows_table(p["rows"]))
        out.write(f"{role} total per call: {p['total_pj_per_call'] / 1e6:.4f} uJ (AC {ac / 1e6:.4f}, MAC "
                  f"{mac / 1e6:.4f}); ANN of the same network {p['ann_pj_per_call'] / 1e6:.4f} uJ, SNN/ANN "
                  f"{p['snn_over_ann']:.3f}; calls per sample: {p['calls_per_sample']}\n")
    if rep["ann_pj_per_sample"]:
        what = "per generated sample" if "sdid" in rep["parts"] else "per decoded image (a VQ-SVAE: no SDID)"
        out.write(f"\n{what}: {rep['total_pj_per_sample'] / 1e6:.3f} uJ; ANN "
                  f"{rep['ann_pj_per_sample'] / 1e6:.3f} uJ; SNN/ANN {rep['snn_over_ann_per_sample']:.3f}\n")
    out.write("assumptions: " + "; ".join(rep["assumptions"]) + "\n")
    return out.getvalue()


def format_sd_csv(rep: dict) -> str:
    import csv

    from .report import COLUMNS

    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=["part", *COLUMNS, "calls_per_sample"])
    w.writeheader()
    for role, p in rep["parts"].items():
        for r in p["rows"]:
            w.writerow({"part": role, **{k: r[k] for k in COLUMNS}, "calls_per_sample": p["calls_per_sample"]})
    return out.getvalue()


def plot_sd(rep: dict, path: str | os.PathLike) -> Path:
    """Bars of every layer's energy per generated sample (per call for the encoder)."""
    rows = [{**r, "name": f"{role}:{r['name']}", "energy_pj": r["energy_pj"] * max(p["calls_per_sample"], 1)}
            for role, p in rep["parts"].items() for r in p["rows"]]
    title = (f"{rep['preset'].split(':')[0]}: {rep['total_pj_per_sample'] / 1e6:.2f} uJ per sample "
             "(blue AC, orange MAC; encoder per call)")
    return energy_bars(rows, title, "energy per sample (nJ)", path)
