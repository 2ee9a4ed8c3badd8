"""Spike counts per neuron on real denoising trajectories: from PyTorch hooks or a Lava run.

Both sources give, for every neuron group of the spiking graph (IR names) and every
denoiser call, the spikes per neuron summed over the T spiking steps and averaged over the
images: ``{name: [K, C, H, W]}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from sdm.export.ir import IFNeurons, SNNGraph
from sdm.export.spike_record import SpikeRecordError, graph_fingerprint, read_spike_record  # noqa: F401 (re-export)
from sdm.train.neuron import IFNeuron
from sdm.train.samplers import denoise, make_sampler
from sdm.train.unet import SpikingUNet


@dataclass
class SpikeCounts:
    timesteps: list[int]
    per_call: dict[str, np.ndarray]  # name -> [K, C, H, W] spikes per neuron per call
    source: str

    def mean(self) -> dict[str, np.ndarray]:
        return {k: v.mean(axis=0) for k, v in self.per_call.items()}

    def at_call(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.per_call.items()}


def module_to_graph(graph: SNNGraph, module_name: str, spikes: torch.Tensor) -> dict[str, torch.Tensor]:
    """A neuron module's output as the graph's neuron groups: the groups whose origin is the module,
    each taking its channel range (the parts of a concatenation) or all of it."""
    out = {}
    for node in graph.of_type(IFNeurons):
        if node.module == module_name:
            ch = node.origin.channels if node.origin is not None else None
            out[node.name] = spikes if ch is None else spikes[:, :, ch[0]:ch[1]]
    if not out:
        raise SpikeRecordError(f"neuron layer {module_name!r} of the model has no neuron group in the graph")
    return out


def model_spike_counts(model: SpikingUNet, graph: SNNGraph, inputs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Spikes per neuron per call from forward hooks on the model's neurons, for given ``(x_t, t)`` calls."""
    current: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: current.__setitem__(name, o))
             for name, m in model.named_modules() if isinstance(m, IFNeuron)]
    per_call: dict[str, list] = {n.name: [] for n in graph.of_type(IFNeurons)}
    try:
        with torch.no_grad():
            for x, t in inputs:
                current.clear()
                model(x, t)
                for mod, s in current.items():
                    for name, part in module_to_graph(graph, mod, s).items():
                        # events: |s|, so that signed spikes count as events too
                        per_call[name].append(part.abs().sum(dim=0).mean(dim=0).double().numpy())
    finally:
        for h in hooks:
            h.remove()
    return {k: np.stack(v) for k, v in per_call.items()}


def trajectory_inputs(model: SpikingUNet, diffusion, n: int, steps: int, seed: int, sampler: str = "ddim",
                      data=None, order: int = 2, moments=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(x_t, t)`` of each denoiser call: a real sampling trajectory from noise (the ``steps``
    calls of any sampler, or DDPM's first ``steps``), or, with ``data``, training images noised to
    the same timesteps.  ``order`` and ``moments`` are DPM-Solver's and Analytic-DPM's."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    chain = make_sampler(sampler, diffusion, steps, order=order, moments=moments)
    dtype = next(model.parameters()).dtype
    calls = []
    if data is not None:
        idx = torch.randperm(len(data), generator=g)[:n]
        x0 = torch.stack([data[int(i)] for i in idx]).to(dtype)
        for t, _ in chain.pairs(steps):
            tt = torch.full((n,), t, dtype=torch.long)
            calls.append((diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=g, dtype=dtype)), tt))
        return calls
    x = torch.randn((n, cfg.img_ch, cfg.img_size, cfg.img_size), generator=g, dtype=dtype)
    denoise(model, chain, x, g, limit=steps, on_call=lambda x_t, t, eps: calls.append((x_t, t)))
    return calls


def read_sim_counts(sim_dir: str | os.PathLike, graph: SNNGraph) -> tuple[SpikeCounts, list]:
    """Spike counts from ``sdm simulate``'s ``spikes.h5``; checks that it belongs to ``graph``.

    Returns the counts (per neuron, averaged over the images) and the recorded ``(x_t, t)``
    inputs (to replay them in PyTorch).  The file format, its checks and :class:`SpikeRecordError`
    are :mod:`sdm.export.spike_record`'s."""
    record = read_spike_record(sim_dir, graph)
    ts = record.timesteps
    per_call = {k: layer.neuron_counts.astype(np.float64).mean(axis=1) for k, layer in record.layers.items()}
    x = torch.from_numpy(record.inputs)
    inputs = [(x[i], torch.full((x.shape[1],), t, dtype=torch.long)) for i, t in enumerate(ts)]
    return SpikeCounts(ts, per_call, f"Lava simulation {sim_dir}"), inputs
