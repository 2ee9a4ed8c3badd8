"""``sdm simulate``: denoising steps in Lava, checked step by step against PyTorch.

The host runs the diffusion arithmetic (DDIM or DDPM); every denoiser call goes to the
Lava process graph, compiled once.  Each call is mirrored by the PyTorch executor of the
same NIR file in float64, so the run reports, per layer and step, how many spikes differ
(floating_pt: none expected; fixed_pt: the quantisation deviation), the eps error, and at
the end the difference between the Lava image and the PyTorch image.

Outputs in ``--out DIR``: ``samples.png`` (Lava), ``reference.png`` (PyTorch float),
``spikes.h5`` (per-layer spike counts: per spiking step and per neuron, for every call),
``report.json`` (timing and deviations).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from sdm.export.execute import GraphDenoiser
from sdm.export.ir import IFNeurons
from sdm.export.nir_format import read_nir
from sdm.files import atomic_write
from sdm.train.diffusion import GaussianDiffusion
from sdm.train.samplers import make_sampler
from sdm.images import save_grid

from .simulator import LavaDenoiser

SPIKES_FORMAT = "sdm-spike-record"


def simulate(nir_path: str | os.PathLike, out_dir: str | os.PathLike, denoise_steps: int = 4, n: int = 1,
             sampler: str = "ddim", mode: str = "floating_pt", seed: int = 0, threshold_scale: float = 1.0,
             progress: bool = True) -> dict:
    """Run ``denoise_steps`` denoising steps for ``n`` images (pipelined as one batch) in Lava."""
    from tqdm.auto import tqdm

    if denoise_steps < 1 or n < 1:
        raise ValueError("--denoise-steps and -n must be >= 1")
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"unknown sampler {sampler!r} (ddim|ddpm)")
    graph = read_nir(nir_path)
    chain = make_sampler(sampler, GaussianDiffusion(graph.host.schedule), denoise_steps)
    pairs = chain.pairs(denoise_steps)  # DDIM: its K steps; DDPM: the first K calls of the chain
    ts = [t for t, _ in pairs]
    ref = GraphDenoiser(graph, dtype=torch.float64)
    ref.threshold_scale = threshold_scale
    ref.record = True
    c, h, w = graph.host.img_shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c, h, w), generator=gen, dtype=torch.float64)
    x_ref = x.clone()
    neuron_names = [nd.name for nd in graph.of_type(IFNeurons)]
    counts = {k: [] for k in neuron_names}
    per_neuron = {k: [] for k in neuron_names}
    mismatch = {k: [] for k in neuron_names}
    eps_err, call_seconds, inputs = [], [], []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with LavaDenoiser(graph, batch=n, mode=mode, record_spikes=True, threshold_scale=threshold_scale) as sim:
        bar = tqdm(pairs, desc=f"lava {mode}", disable=not progress, dynamic_ncols=True)
        for i, (t, s) in enumerate(bar):
            tt = torch.full((n,), t, dtype=torch.long)
            inputs.append(x.numpy().copy())
            t0 = time.perf_counter()
            eps = sim(x, tt)
            call_seconds.append(time.perf_counter() - t0)
            # the PyTorch reference on the *same* input, for spike-by-spike comparison
            eps_same = ref(x, tt)
            eps_err.append(float((eps - eps_same).abs().max()))
            for k in neuron_names:
                lava_s = sim.last_spikes[k]
                counts[k].append(sim.last_counts[k].astype(np.int32))
                per_neuron[k].append(np.abs(lava_s).sum(axis=0).astype(np.uint8))  # spike events (signed spikes: |s|)
                mismatch[k].append(int((lava_s != ref.spikes[k].numpy()).sum()))
            # separate PyTorch trajectory for the final-image comparison
            eps_ref = ref(x_ref, tt) if i else eps_same
            # both trajectories take the same step with the same noise
            noise = torch.randn(x.shape, generator=gen, dtype=torch.float64) if chain.needs_noise(t, s) else None
            x = chain.step(x, t, s, eps, noise)
            x_ref = chain.step(x_ref, t, s, eps_ref, noise)
            bar.set_postfix(mismatch=sum(v[-1] for v in mismatch.values()), eps_err=f"{eps_err[-1]:.1e}")
        compile_s = sim.compile_seconds
        n_proc, run_len = sim.num_processes, sim.net.run_length
        warnings = list(sim.plan.warnings) if sim.plan is not None else []
    x, x_ref = x.clamp(-1, 1), x_ref.clamp(-1, 1)
    save_grid(x, out_dir / "samples.png", scale=4)
    save_grid(x_ref, out_dir / "reference.png", scale=4)
    _write_spikes(out_dir / "spikes.h5", graph, nir_path, ts, counts, per_neuron, mismatch, mode, n, sampler,
                  np.stack(inputs))
    total_steps = {k: int(np.prod(graph.nodes[k].shape)) * graph.host.T * n for k in neuron_names}
    report = {
        "nir": str(nir_path), "mode": mode, "sampler": sampler, "denoise_steps": denoise_steps, "images": n,
        "timesteps": ts, "lava_processes": n_proc, "lava_steps_per_call": run_len,
        "compile_and_first_call_seconds": compile_s,
        "seconds_per_call": call_seconds, "seconds_per_call_after_first": float(np.median(call_seconds[1:]))
        if len(call_seconds) > 1 else None,
        "spike_mismatch_rate": {k: sum(v) / (total_steps[k] * len(ts)) for k, v in mismatch.items()},
        "total_spike_mismatches": int(sum(sum(v) for v in mismatch.values())),
        "eps_max_abs_err_per_call": eps_err,
        "final_image_max_abs_err": float((x - x_ref).abs().max()),
        "final_image_rmse": float((x - x_ref).pow(2).mean().sqrt()),
        "fixed_point_warnings": warnings,
    }
    atomic_write(out_dir / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    return report


def _write_spikes(path, graph, nir_path, ts, counts, per_neuron, mismatch, mode, n, sampler, inputs):
    from sdm.energy.rates import graph_fingerprint

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"format": SPIKES_FORMAT, "version": 1, "nir": str(nir_path), "mode": mode,
                            "T": graph.host.T, "images": n, "sampler": sampler,
                            "fingerprint": graph_fingerprint(graph)})
            f["timesteps"] = np.asarray(ts)
            f.create_dataset("inputs", data=inputs, compression="gzip")  # x_t of every call [K, B, C, H, W]
            layers = f.create_group("layers")
            for k in counts:
                g = layers.create_group(k)
                g.attrs["shape"] = np.asarray(graph.nodes[k].shape)
                g.create_dataset("counts", data=np.stack(counts[k]))  # [K, B, T] spikes per spiking step
                g.create_dataset("neuron_counts", data=np.stack(per_neuron[k]), compression="gzip")  # [K,B,C,H,W]
                g.create_dataset("mismatch_vs_pytorch", data=np.asarray(mismatch[k]))

    atomic_write(path, write)
