"""The per-layer energy of any plain NIR graph: ``sdm energy FILE.nir --input X.npy [--sim DIR]``.

The rows are :func:`~sdm.energy.counting.count_layers`' (the same conventions as the UNet's report,
docs/energy.md): a conv on spikes is an AC row (exact synaptic events and the paper's SOP), a conv on
analog values a MAC row; the neuron updates count only in the loihi preset.  The firing rates come
from the project's PyTorch executor of the graph on the input (or from the spike record of
``sdm simulate FILE.nir --input X.npy --out DIR``, the same counts in floating point).  There is no
host side and no diffusion: a "call" is one run of ``T`` spiking steps per input sample.

The first conv on the input runs once per call when the input is held constant (its output is the
same every step), ``T`` times when the input changes from step to step.  Layers the reader maps to
convs are priced as convs: a pool or a per-channel ``Scale`` is a diagonal conv, whose exact synaptic
events skip its zero weights but whose dense FLOPs count all ``C x C`` kernel entries.
"""

from __future__ import annotations

import io
import os
from dataclasses import replace

import numpy as np

from sdm.errors import ConfigError
from sdm.export.ir import SNNGraph

from .counting import Row, count_layers, price
from .presets import get_preset

Spikes = dict[str, np.ndarray]


def plain_rows(graph: SNNGraph, spikes_per_call: Spikes, T: int, varying_input: bool) -> list[Row]:
    """Unpriced rows of one call of ``T`` steps: ``spikes_per_call`` per neuron group, (C, H, W) events per
    neuron (mean over the samples)."""
    rows = count_layers(graph, spikes_per_call, T)
    if varying_input:  # the conv on the input computes every step
        rows = [replace(r, executions=T, macs=r.dense_flops * T) if r.kind == "MAC" and r.executions == 1 else r
                for r in rows]
    return rows


def plain_report_from_spikes(graph: SNNGraph, spikes_per_call: Spikes, T: int, varying_input: bool,
                             preset: str = "45nm-fp32", memory: bool = False, source: str = "") -> dict:
    """The report of a plain graph from its spikes: priced rows (exact events), totals under both AC
    conventions, and what the numbers assume."""
    cost = get_preset(preset)
    rows = plain_rows(graph, spikes_per_call, T, varying_input)
    exact = price(rows, cost, memory=memory)
    paper = price(rows, cost, convention="paper", memory=memory)
    return {"preset": cost.describe(), "spike_source": source, "T": T, "input_per_step": varying_input,
            "rows": [r.to_dict() for r in exact.rows], "total_pj": exact.total_pj,
            "total_pj_per_call": exact.total_pj, "paper_sop_convention_total_pj": paper.total_pj,
            "ac_pj": sum(r.energy_pj for r in exact.rows if r.kind == "AC"),
            "mac_pj": sum(r.energy_pj for r in exact.rows if r.kind == "MAC"),
            "assumptions": [
                f"counts per input sample and run of T = {T} spiking steps",
                "first conv on the input: " + ("every step (the input changes per step)" if varying_input
                                               else "once (the input is held for T steps)"),
                "AC rows priced per exact synaptic event (padding, stride, zero weights); the paper convention "
                "fr*T*FLOPs is reported beside it",
                "pools and per-channel scales are diagonal convs; fan-in sums and neuron updates not priced "
                "(except neuron updates in the loihi preset)",
            ] + (["memory: one weight read per AC/MAC"] if memory else [])}


def plain_energy_report(nir_path: str | os.PathLike, input_path: str | os.PathLike, T: int | None = None,
                        dt: float | None = None, preset: str = "45nm-fp32", memory: bool = False,
                        sim_dir: str | os.PathLike | None = None) -> dict:
    """The report of ``nir_path`` on ``input_path``: spikes from the PyTorch executor, or from the record
    of ``sdm simulate ... --out sim_dir`` (checked against the graph)."""
    from sdm.export.nir_format import read_nir
    from sdm.export.plain import check_plain, load_input, reference_run
    from sdm.export.spike_record import read_spike_record

    get_preset(preset)
    graph = read_nir(nir_path, require_host=False, dt=dt)
    inp = load_input(input_path, check_plain(graph, nir_path), T)
    if sim_dir is not None:
        record = read_spike_record(sim_dir, graph)
        if (record.T, record.images) != (inp.T, inp.batch):
            raise ConfigError(f"{sim_dir}: the record is of {record.images} sample(s) x T {record.T}, the input gives "
                              f"{inp.batch} x T {inp.T}")
        spikes = {k: layer.neuron_counts[0].astype(np.float64).mean(axis=0) for k, layer in record.layers.items()}
        source = f"Lava simulation {sim_dir} ({record.mode})"
    else:
        _, ref = reference_run(graph, inp)
        spikes = {k: s.abs().sum(dim=0).mean(dim=0).numpy() for k, s in ref.items()}
        source = f"PyTorch executor, {inp.batch} sample(s)"
    return {"model": str(nir_path), "input": str(input_path),
            **plain_report_from_spikes(graph, spikes, inp.T, inp.varying, preset, memory, source)}


def format_plain_table(rep: dict) -> str:
    out = io.StringIO()
    out.write(f"energy per input sample ({rep['T']} spiking steps), {rep['preset']}\nspikes: {rep['spike_source']}\n\n")
    out.write(f"{'layer':34s} {'kind':6s} {'in rate':>8s} {'FLOPs/step':>11s} {'SOP paper':>11s} "
              f"{'syn events':>11s} {'MACs':>11s} {'energy nJ':>10s} {'share':>6s}\n")
    for r in rep["rows"]:
        rate = f"{r['input_rate']:.3f}" if r["input_rate"] is not None else "-"
        out.write(f"{r['name'][:34]:34s} {r['kind']:6s} {rate:>8s} {r['dense_flops']:11.3g} {r['sop_paper']:11.3g} "
                  f"{r['synaptic_events']:11.3g} {r['macs']:11.3g} {r['energy_pj'] / 1e3:10.3f} "
                  f"{100 * r['share']:5.1f}%\n")
    out.write(f"\ntotal: {rep['total_pj'] / 1e3:.3f} nJ (AC {rep['ac_pj'] / 1e3:.3f}, MAC {rep['mac_pj'] / 1e3:.3f}); "
              f"with paper SOP: {rep['paper_sop_convention_total_pj'] / 1e3:.3f} nJ\n")
    out.write("assumptions: " + "; ".join(rep["assumptions"]) + "\n")
    return out.getvalue()

