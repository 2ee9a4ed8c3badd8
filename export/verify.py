"""Layer-by-layer comparison of an imported graph with the PyTorch model it came from."""

from __future__ import annotations

from typing import Callable

import torch

from sdm.errors import GraphError
from sdm.train.neuron import IFNeuron
from sdm.train.unet import SpikingUNet

from .execute import GraphDenoiser
from .ir import SNNGraph


def hooked_spikes(model: torch.nn.Module, fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """``(fn(), {neuron module name: spikes [T, B, C, H, W]})`` for the neurons of ``model`` that ``fn`` runs."""
    spikes, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, IFNeuron):
            hooks.append(mod.register_forward_hook(lambda m, i, o, name=name: spikes.__setitem__(name, o)))
    try:
        with torch.no_grad():
            out = fn()
    finally:
        for h in hooks:
            h.remove()
    return out, spikes


def record_model_spikes(model: SpikingUNet, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``(eps, {neuron module name: spikes [T, B, C, H, W]})`` for one eval call of ``model``."""
    return hooked_spikes(model, lambda: model(x, t))


def graph_spikes_by_module(graph: SNNGraph, graph_spikes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Join the neuron groups that split one module (the parts of a concatenation, e.g.
    ``up.3.neuron1.h`` + ``up.3.neuron1.skip``) back into that module's output, in channel order."""
    parts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for name, s in graph_spikes.items():
        node = graph.nodes[name]
        start = node.origin.channels[0] if node.origin is not None and node.origin.channels else 0
        parts.setdefault(node.module, []).append((start, s))
    return {module: torch.cat([s for _, s in sorted(group, key=lambda p: p[0])], dim=2)
            for module, group in parts.items()}


def compare(model: SpikingUNet, denoiser: GraphDenoiser, x: torch.Tensor, t: torch.Tensor) -> dict:
    """Per-layer spike mismatches and the largest eps difference for the same ``x_t`` and ``t``."""
    eps_m, sp_m = record_model_spikes(model, x.to(next(model.parameters()).dtype), t)
    denoiser.record = True
    try:
        eps_g = denoiser(x, t)
    finally:
        denoiser.record = False
    sp_g = graph_spikes_by_module(denoiser.graph, denoiser.spikes)
    if set(sp_m) != set(sp_g):
        raise GraphError(f"neuron layers differ: model-only {sorted(set(sp_m) - set(sp_g))}, "
                         f"graph-only {sorted(set(sp_g) - set(sp_m))}")
    layers = {name: {"mismatches": int((sp_m[name] != sp_g[name].to(sp_m[name].dtype)).sum()),
                     "spikes": int(sp_m[name].abs().sum()), "neuron_steps": sp_m[name].numel()} for name in sp_m}
    return {"layers": layers, "total_mismatches": sum(v["mismatches"] for v in layers.values()),
            "eps_max_abs_err": float((eps_m.double() - eps_g.double()).abs().max())}
