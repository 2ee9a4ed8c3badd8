"""``sdm simulate``: denoising steps in Lava, checked step by step against PyTorch.

The host runs the diffusion arithmetic (DDIM or DDPM); every denoiser call goes to the
Lava process graph, compiled once: the ``fused`` build (a few stage processes, the default for
generating on a CPU) or the ``loihi`` build (one process per layer, latency-aligned), under
Lava's Loihi protocol or all asynchronous (``protocol``).  Each call is mirrored by the PyTorch executor of the
same NIR file in float64, so the run reports, per layer and step, how many spikes differ
(floating_pt: none expected; fixed_pt: the quantisation deviation), the eps error, and at
the end the difference between the Lava image and the PyTorch image.

Outputs in ``--out DIR``: ``samples.png`` (Lava), ``reference.png`` (PyTorch float),
``spikes.h5`` (per-layer spike counts: per spiking step and per neuron, for every call),
``report.json`` (timing and deviations).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sdm.errors import ConfigError
from sdm.export.execute import GraphDenoiser
from sdm.export.ir import IFNeurons, SNNGraph
from sdm.export.nir_format import read_nir
from sdm.export.spike_record import LayerSpikes, SpikeRecord, write_spike_record
from sdm.files import atomic_write
from sdm.images import save_grid
from sdm.train.diffusion import GaussianDiffusion
from sdm.train.samplers import Sampler, make_sampler

from .builder import LavaBuildError, check_host
from .fused import DEFAULT_STAGES, plan_stages
from .simulator import BUILDS, PROTOCOLS, LavaDenoiser


@dataclass
class Lockstep:
    """What the lockstep loop collects, per neuron group and call (K calls of B images)."""

    neurons: list[str]
    counts: dict[str, list[np.ndarray]] = field(default_factory=dict)  # [B, T] spike events per step
    per_neuron: dict[str, list[np.ndarray]] = field(default_factory=dict)  # [B, C, H, W] events per neuron
    mismatch: dict[str, list[int]] = field(default_factory=dict)  # spikes differing from PyTorch
    eps_err: list[float] = field(default_factory=list)
    call_seconds: list[float] = field(default_factory=list)
    inputs: list[np.ndarray] = field(default_factory=list)  # x_t of every call [B, C, H, W]

    def __post_init__(self):
        for d in (self.counts, self.per_neuron, self.mismatch):
            d.update({k: [] for k in self.neurons})

    def spike_record(self, nir_path, mode: str, sampler: str, T: int, images: int, ts: list[int]) -> SpikeRecord:
        layers = {k: LayerSpikes(np.stack(self.counts[k]), np.stack(self.per_neuron[k]), np.asarray(self.mismatch[k]))
                  for k in self.neurons}
        return SpikeRecord(nir=str(nir_path), mode=mode, sampler=sampler, T=T, images=images, timesteps=ts,
                           inputs=np.stack(self.inputs), layers=layers)


@dataclass(frozen=True)
class RunInfo:
    """The Lava side of a run, for the report."""

    compile_seconds: float  # compile and first call
    processes: int
    run_length: int  # Lava steps per call
    warnings: list[str]  # the fixed-point plan's
    build: str  # loihi | fused
    protocol: str  # loihi | async
    stages: int | None  # fused: the number of stage processes


def simulate(nir_path: str | os.PathLike, out_dir: str | os.PathLike, denoise_steps: int = 4, n: int = 1,
             sampler: str = "ddim", mode: str = "floating_pt", seed: int = 0, threshold_scale: float = 1.0,
             progress: bool = True, order: int = 2, build: str = "fused", stages: int | None = None,
             protocol: str | None = None) -> dict:
    """Run ``denoise_steps`` denoising steps for ``n`` images (one batch: pipelined in the loihi build, an
    array dimension in the fused one) in Lava, with any sampler (DPM-Solver's ``order``; the analytic ones
    read the moments of the file's host section).  ``build``: ``fused`` (``stages`` stage processes,
    default :data:`~.fused.DEFAULT_STAGES`) or ``loihi``; ``protocol``: ``loihi`` or ``async`` (default: async
    for the fused build, loihi for the loihi build)."""
    if denoise_steps < 1 or n < 1:
        raise ConfigError("--denoise-steps and -n must be >= 1")
    if build not in BUILDS or protocol not in (None, *PROTOCOLS):
        raise ConfigError(f"build must be one of {', '.join(BUILDS)} and protocol one of {', '.join(PROTOCOLS)}, "
                          f"got {build!r} and {protocol!r}")
    if stages is not None and build != "fused":
        raise ConfigError("--stages is an option of the fused build (--build fused)")
    graph = read_nir(nir_path)
    if graph.host is None:
        raise LavaBuildError(f"{nir_path}: the file has no host section: not a denoiser")
    check_host(graph)  # before any Lava process exists: a shape the host cannot feed would hang the run
    diffusion = GaussianDiffusion(graph.host.schedule)
    if denoise_steps > diffusion.steps:
        raise ConfigError(f"--denoise-steps {denoise_steps} exceeds the {diffusion.steps}-step diffusion schedule of "
                          f"{nir_path} ({sampler} calls the denoiser at most once per schedule step)")
    chain = make_sampler(sampler, diffusion, denoise_steps, order=order, moments=graph.host.moments)
    pairs = chain.pairs(denoise_steps)  # K steps of the sampler; DDPM: the first K calls of its chain
    ts = [t for t, _ in pairs]
    ref = GraphDenoiser(graph, dtype=torch.float64)
    ref.threshold_scale = threshold_scale
    ref.record = True
    c, h, w = graph.host.img_shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c, h, w), generator=gen, dtype=torch.float64)
    trace = Lockstep([nd.name for nd in graph.of_type(IFNeurons)])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if build == "fused":
        plan_stages(graph, DEFAULT_STAGES if stages is None else stages)  # a bad --stages before any process
    with LavaDenoiser(graph, batch=n, mode=mode, record_spikes=True, threshold_scale=threshold_scale, build=build,
                      stages=stages, protocol=protocol) as sim:
        x, x_ref = run_lockstep(sim, ref, chain, pairs, x, gen, trace, progress)
        run = RunInfo(sim.compile_seconds, sim.num_processes, sim.net.run_length,
                      list(sim.plan.warnings) if sim.plan is not None else [], build, sim.protocol,
                      sim.num_processes if build == "fused" else None)
    x, x_ref = x.clamp(-1, 1), x_ref.clamp(-1, 1)
    save_grid(x, out_dir / "samples.png", scale=4)
    save_grid(x_ref, out_dir / "reference.png", scale=4)
    write_spike_record(out_dir, graph, trace.spike_record(nir_path, mode, sampler, graph.host.T, n, ts))
    report = make_report(graph, trace, run, x, x_ref, nir=str(nir_path), mode=mode, sampler=sampler,
                         denoise_steps=denoise_steps, images=n, timesteps=ts)
    atomic_write(out_dir / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    return report


def run_lockstep(sim: LavaDenoiser, ref: GraphDenoiser, chain: Sampler, pairs: list[tuple[int, int]],
                 x: torch.Tensor, gen: torch.Generator, trace: Lockstep, progress: bool = True):
    """Drive the Lava trajectory and a PyTorch trajectory from the same ``x`` with the same noise;
    every Lava call is also compared, spike by spike, with PyTorch on the *same* input.  Returns
    the final ``(x, x_ref)``; the calls' records go into ``trace``."""
    from tqdm.auto import tqdm

    n, x_ref = x.shape[0], x.clone()
    chain_ref = copy.deepcopy(chain)  # multistep samplers keep a history: one instance per trajectory
    chain.reset()
    chain_ref.reset()
    bar = tqdm(pairs, desc=f"lava {sim.build} {sim.mode}", disable=not progress, dynamic_ncols=True)
    for i, (t, s) in enumerate(bar):
        tt = torch.full((n,), t, dtype=torch.long)
        trace.inputs.append(x.numpy().copy())
        t0 = time.perf_counter()
        eps = sim(x, tt)
        trace.call_seconds.append(time.perf_counter() - t0)
        # the PyTorch reference on the *same* input, for spike-by-spike comparison
        eps_same = ref(x, tt)
        trace.eps_err.append(float((eps - eps_same).abs().max()))
        for k in trace.neurons:
            lava_s = sim.last_spikes[k]
            trace.counts[k].append(sim.last_counts[k].astype(np.int32))
            trace.per_neuron[k].append(np.abs(lava_s).sum(axis=0).astype(np.uint8))  # events (signed spikes: |s|)
            trace.mismatch[k].append(int((lava_s != ref.spikes[k].numpy()).sum()))
        # separate PyTorch trajectory for the final-image comparison
        eps_ref = ref(x_ref, tt) if i else eps_same
        # both trajectories take the same step with the same noise
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float64) if chain.needs_noise(t, s) else None
        x = chain.step(x, t, s, eps, noise)
        x_ref = chain_ref.step(x_ref, t, s, eps_ref, noise)
        bar.set_postfix(mismatch=sum(v[-1] for v in trace.mismatch.values()), eps_err=f"{trace.eps_err[-1]:.1e}")
    return x, x_ref


def make_report(graph: SNNGraph, trace: Lockstep, run: RunInfo, x: torch.Tensor, x_ref: torch.Tensor, *, nir: str,
                mode: str, sampler: str, denoise_steps: int, images: int, timesteps: list[int]) -> dict:
    """``report.json``: timing of the run and the deviations from PyTorch (per layer, per call, final image)."""
    calls = trace.call_seconds
    total_steps = {k: int(np.prod(graph.nodes[k].shape)) * graph.host.T * images for k in trace.neurons}
    return {
        "nir": nir, "mode": mode, "sampler": sampler, "denoise_steps": denoise_steps, "images": images,
        "build": run.build, "protocol": run.protocol, "stages": run.stages,
        "timesteps": timesteps, "lava_processes": run.processes, "lava_steps_per_call": run.run_length,
        "compile_and_first_call_seconds": run.compile_seconds,
        "seconds_per_call": calls, "seconds_per_call_after_first": float(np.median(calls[1:]))
        if len(calls) > 1 else None,
        "spike_mismatch_rate": {k: sum(v) / (total_steps[k] * len(timesteps)) for k, v in trace.mismatch.items()},
        "total_spike_mismatches": int(sum(sum(v) for v in trace.mismatch.values())),
        "eps_max_abs_err_per_call": trace.eps_err,
        "final_image_max_abs_err": float((x - x_ref).abs().max()),
        "final_image_rmse": float((x - x_ref).pow(2).mean().sqrt()),
        "fixed_point_warnings": run.warnings,
    }
