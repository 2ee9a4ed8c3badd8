"""``sdm energy``: the per-layer energy report (table, CSV, JSON, PNG)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from sdm.export.ir import SNNGraph
from sdm.export.lower import lower_unet
from sdm.files import atomic_write
from sdm.train.moments import checkpoint_moments
from sdm.train.sampling import model_from_checkpoint

from .counting import ann_macs, count_layers, dense_conv_macs, paper_formula_pj, price
from .presets import MEMORY_SOURCE, PRESETS, Preset, get_preset
from .rates import SpikeCounts, model_spike_counts, read_sim_counts, trajectory_inputs

COLUMNS = ["name", "layer", "kind", "input_rate", "dense_flops", "executions", "sop_paper", "synaptic_events",
           "macs", "neuron_updates", "energy_pj", "share"]
ANN_PRESET = "45nm-fp32"  # the ANN comparison is priced at 45 nm FP32 whatever the SNN's preset


def energy_report(model_path: str | os.PathLike, denoise_steps: int = 4, n: int = 4, seed: int = 0,
                  sampler: str = "ddim", preset: str = "45nm-fp32", sim_dir: str | None = None, data: str | None = None,
                  memory: bool = False, use_ema: bool = True, order: int = 2) -> dict:
    """Everything the report shows, as a dict (rows, totals, per-t totals, assumptions)."""
    cost = get_preset(preset)
    model, diffusion, ckpt = model_from_checkpoint(model_path, use_ema=use_ema)
    chain = {"sampler": sampler, "order": order, "moments": checkpoint_moments(ckpt)}
    graph = lower_unet(model)
    counts = spike_counts(model, diffusion, graph, n, denoise_steps, seed, chain, sim_dir=sim_dir, data=data)
    steps = denoise_steps if sim_dir is None else len(counts.timesteps)
    return {
        "model": str(model_path), "preset": cost.describe(), "spike_source": counts.source,
        "timesteps": counts.timesteps, "T": graph.host.T,
        **rows_and_totals(graph, counts, cost, memory, steps),
        "per_t": per_t_totals(graph, counts, cost, memory),
        "assumptions": assumptions(memory),
    }


def spike_counts(model, diffusion, graph: SNNGraph, n: int, steps: int, seed: int, chain: dict,
                 sim_dir: str | os.PathLike | None = None, data: str | None = None) -> SpikeCounts:
    """The spikes of the chosen source: ``sdm simulate``'s record in ``sim_dir`` (checked against
    ``graph``), else PyTorch hooks on ``n`` images along the trajectory of ``steps`` denoiser calls
    of the sampler ``chain`` (``trajectory_inputs``' keywords: sampler, order, moments), or on
    training images (``data``) noised to the same timesteps."""
    if sim_dir is not None:
        counts, _ = read_sim_counts(sim_dir, graph)
        return counts
    dataset = None
    if data is not None:
        from sdm.train.data import load_dataset

        dataset = load_dataset(data, image_size=model.cfg.img_size)
    inputs = trajectory_inputs(model, diffusion, n, steps, seed, data=dataset, **chain)
    what = "noised " + data if data else chain["sampler"] + " trajectory"
    return SpikeCounts([int(t[0]) for _, t in inputs], model_spike_counts(model, graph, inputs),
                       f"PyTorch hooks, {n} image(s), {what}")


def rows_and_totals(graph: SNNGraph, counts: SpikeCounts, cost: Preset, memory: bool, steps: int) -> dict:
    """The priced rows of the mean call and the totals beside them: per call and per sample of
    ``steps`` calls, the paper's SOP convention and formula, and the ANN comparison.

    The layers are counted once; :func:`price` leaves the rows as they are, so the same rows are
    priced under both conventions."""
    rows = count_layers(graph, counts.mean())
    exact = price(rows, cost, memory=memory)
    paper_sop = price(rows, cost, convention="paper", memory=memory)
    ann = ann_macs(graph) * PRESETS[ANN_PRESET].mac_pj
    paper = paper_formula_pj(rows, cost)
    return {
        "rows": [r.to_dict() for r in exact.rows],
        "total_pj_per_call": exact.total_pj,
        "total_pj_per_sample": exact.total_pj * steps,
        "paper_sop_convention_total_pj": paper_sop.total_pj,
        "paper_formula_pj_per_call": paper,
        "dense_conv_macs_per_step": dense_conv_macs(graph),
        "ann_pj_per_call": ann,
        "snn_over_ann": exact.total_pj / ann,
        "paper_formula_over_ann": paper / ann,
    }


def per_t_totals(graph: SNNGraph, counts: SpikeCounts, cost: Preset, memory: bool) -> list[dict]:
    """Each denoiser call's total (exact convention) and mean input rate of its AC rows, by timestep."""
    per_t = []
    for i, t in enumerate(counts.timesteps):
        rows = count_layers(graph, counts.at_call(i))
        per_t.append({"t": t, "energy_pj": price(rows, cost, memory=memory).total_pj,
                      "mean_input_rate": float(np.mean([r.input_rate for r in rows if r.kind == "AC"]))})
    return per_t


def assumptions(memory: bool) -> list[str]:
    """What the numbers assume, printed with every report."""
    return [
        "counts are per denoiser call and per image; a sample costs that times the denoising steps",
        "first conv (analog image, same at every step) computed once per call",
        ("AC rows priced per exact synaptic event (padding, stride, zero weights); "
         "the paper convention fr*T*FLOPs is reported beside it"),
        "MAC rows: analog convs (first conv, 1x1 shortcuts), TSM gains, time MLP, block projections, tail",
        ("BatchNorm folded into the convs; residual additions and neuron updates not priced "
         "(except neuron updates in the loihi preset)"),
        "ANN: the same UNet, every layer once, dense, at 45 nm FP32",
    ] + ([f"memory: one weight read per AC/MAC ({MEMORY_SOURCE})"] if memory else [])


def rows_table(rows: list[dict]) -> str:
    """The per-layer table of priced rows (``Row.to_dict()``), with its header."""
    out = io.StringIO()
    out.write(f"{'layer':34s} {'kind':6s} {'in rate':>8s} {'FLOPs/step':>11s} {'SOP paper':>11s} "
              f"{'syn events':>11s} {'MACs':>11s} {'energy nJ':>10s} {'share':>6s}\n")
    for r in rows:
        rate = f"{r['input_rate']:.3f}" if r["input_rate"] is not None else "-"
        out.write(f"{r['name'][:34]:34s} {r['kind']:6s} {rate:>8s} {r['dense_flops']:11.3g} {r['sop_paper']:11.3g} "
                  f"{r['synaptic_events']:11.3g} {r['macs']:11.3g} {r['energy_pj'] / 1e3:10.3f} "
                  f"{100 * r['share']:5.1f}%\n")
    return out.getvalue()


def kind_totals(rows: list[dict]) -> tuple[float, float]:
    """``(AC, MAC)`` energy of priced rows, pJ."""
    return (sum(r["energy_pj"] for r in rows if r["kind"] == "AC"),
            sum(r["energy_pj"] for r in rows if r["kind"] == "MAC"))


def format_table(rep: dict) -> str:
    out = io.StringIO()
    out.write(f"energy per denoiser call, {rep['preset']}\nspikes: {rep['spike_source']}, t = {rep['timesteps']}\n\n")
    out.write(rows_table(rep["rows"]))
    ac, mac = kind_totals(rep["rows"])
    out.write(f"\ntotal per call: {rep['total_pj_per_call'] / 1e6:.4f} uJ (AC {ac / 1e6:.4f}, MAC {mac / 1e6:.4f}); "
              f"per sample ({len(rep['timesteps'])} steps): {rep['total_pj_per_sample'] / 1e6:.4f} uJ\n")
    out.write(f"paper formula (E_MAC*FLOPs_first + E_AC*sum SOP): {rep['paper_formula_pj_per_call'] / 1e6:.4f} uJ "
              f"per call; all rows with paper SOP: {rep['paper_sop_convention_total_pj'] / 1e6:.4f} uJ\n")
    out.write(f"ANN of the same UNet: {rep['ann_pj_per_call'] / 1e6:.4f} uJ per call; "
              f"SNN/ANN {rep['snn_over_ann']:.3f} "
              f"(paper formula / ANN {rep['paper_formula_over_ann']:.3f}); dense conv MACs per step "
              f"{rep['dense_conv_macs_per_step'] / 1e9:.4f} G\n")
    out.write("per t: " + ", ".join(f"t={p['t']}: {p['energy_pj'] / 1e6:.4f} uJ (rate {p['mean_input_rate']:.3f})"
                                    for p in rep["per_t"]) + "\n")
    out.write("assumptions: " + "; ".join(rep["assumptions"]) + "\n")
    return out.getvalue()


def format_csv(rep: dict) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=COLUMNS)
    w.writeheader()
    for r in rep["rows"]:
        w.writerow({k: r[k] for k in COLUMNS})
    return out.getvalue()


def format_json(rep: dict) -> str:
    return json.dumps(rep, indent=1)


def plot(rep: dict, path: str | os.PathLike) -> Path:
    title = f"{rep['preset'].split(':')[0]}: {rep['total_pj_per_call'] / 1e6:.3f} uJ per call (blue AC, orange MAC)"
    return energy_bars(rep["rows"], title, "energy per call (nJ)", path)


def energy_bars(rows: list[dict], title: str, ylabel: str, path: str | os.PathLike) -> Path:
    """Per-layer energy bars (nJ, coloured by kind) with the AC rows' input firing rates, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["energy_pj"] > 0]
    fig, ax = plt.subplots(figsize=(max(8, 0.22 * len(rows)), 4.5))
    colors = {"AC": "tab:blue", "MAC": "tab:orange", "neuron": "tab:gray"}
    ax.bar(range(len(rows)), [r["energy_pj"] / 1e3 for r in rows], color=[colors[r["kind"]] for r in rows])
    ax.set_ylabel(ylabel)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["name"] for r in rows], rotation=90, fontsize=6)
    ax2 = ax.twinx()
    xs = [i for i, r in enumerate(rows) if r["input_rate"] is not None]
    ax2.plot(xs, [rows[i]["input_rate"] for i in xs], "k.", label="input firing rate")
    ax2.set_ylabel("input firing rate (AC rows)")
    ax2.set_ylim(0, max([rows[i]["input_rate"] for i in xs] + [0.1]) * 1.2)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
