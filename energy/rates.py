"""Spike counts per neuron on real denoising trajectories: from PyTorch hooks or a Lava run.

Both sources give, for every neuron group of the spiking graph (IR names) and every
denoiser call, the spikes per neuron summed over the T spiking steps and averaged over the
images: ``{name: [K, C, H, W]}``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from sdm.export.ir import Conv, IFNeurons, SNNGraph
from sdm.train.neuron import IFNeuron
from sdm.train.samplers import denoise, make_sampler
from sdm.train.unet import SpikingUNet
from sdm.errors import SDMError


class SpikeRecordError(SDMError):
    """A spike record that does not belong to the model; the message names the file."""


@dataclass
class SpikeCounts:
    timesteps: list[int]
    per_call: dict[str, np.ndarray]  # name -> [K, C, H, W] spikes per neuron per call
    source: str

    def mean(self) -> dict[str, np.ndarray]:
        return {k: v.mean(axis=0) for k, v in self.per_call.items()}

    def at_call(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.per_call.items()}


def graph_fingerprint(graph: SNNGraph) -> str:
    """A hash of the graph's convs (names, shapes, float32 weights) and neuron groups, which tie a
    spike record to its model; junctions are left out since NIR files elide some of them."""
    h = hashlib.sha256()
    for name in sorted(graph.nodes):
        node = graph.nodes[name]
        if isinstance(node, (Conv, IFNeurons)):
            h.update(f"{name}:{type(node).__name__}:{node.shape}".encode())
        if isinstance(node, Conv):
            h.update(np.asarray(node.weight, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _module_to_graph(graph: SNNGraph, module_name: str, spikes: torch.Tensor) -> dict[str, torch.Tensor]:
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
                    for name, part in _module_to_graph(graph, mod, s).items():
                        per_call[name].append(part.abs().sum(dim=0).mean(dim=0).double().numpy())  # events: |s| (signed spikes)
    finally:
        for h in hooks:
            h.remove()
    return {k: np.stack(v) for k, v in per_call.items()}


def trajectory_inputs(model: SpikingUNet, diffusion, n: int, steps: int, seed: int, sampler: str = "ddim",
                      data=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(x_t, t)`` of each denoiser call: a real sampling trajectory from noise (DDIM's
    ``steps`` calls, or DDPM's first ``steps``), or, with ``data``, training images noised to the
    same timesteps."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    chain = make_sampler(sampler, diffusion, steps)
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

    Returns the counts and the recorded ``(x_t, t)`` inputs (to replay them in PyTorch)."""
    path = Path(sim_dir) / "spikes.h5"
    if not path.exists():
        raise SpikeRecordError(f"{path}: no such file (run `sdm simulate ... --out {sim_dir}` first)")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != "sdm-spike-record":
                raise SpikeRecordError(f"{path}: not a spike record of sdm simulate")
            fp = f.attrs.get("fingerprint", "")
            if fp != graph_fingerprint(graph):
                names = set(f["layers"])
                expected = {n.name for n in graph.of_type(IFNeurons)}
                why = "different layers" if names != expected else "different weights"
                raise SpikeRecordError(f"{path}: recorded from another model ({why}); export and simulate this one")
            ts = [int(t) for t in f["timesteps"][()]]
            per_call = {k: f["layers"][k]["neuron_counts"][()].astype(np.float64).mean(axis=1)
                        for k in f["layers"]}
            x = torch.from_numpy(f["inputs"][()])
    except SpikeRecordError:
        raise
    except (OSError, KeyError) as e:
        raise SpikeRecordError(f"{path}: unreadable spike record ({type(e).__name__}: {e})") from None
    inputs = [(x[i], torch.full((x.shape[1],), t, dtype=torch.long)) for i, t in enumerate(ts)]
    return SpikeCounts(ts, per_call, f"Lava simulation {sim_dir}"), inputs
