"""Part-by-part comparison of a deployed Spiking-Diffusion model with the PyTorch modules it came from:
every neuron group's spikes, SDID's logits, the decoder's images and the encoder's tokens."""

from __future__ import annotations

import torch

from sdm.errors import GraphError
from sdm.train.sdid import SDID
from sdm.train.vqsvae import VQSVAE

from .sd_execute import torch_runner
from .sd_graph import Part, SDGraphs
from .verify import graph_spikes_by_module, hooked_spikes


def _compare_part(part: Part, model_out: torch.Tensor, model_spikes: dict, args: tuple, dtype: torch.dtype) -> dict:
    runner = torch_runner(part, dtype, record=True)
    out = part.host.readout(runner(part.host.currents(*args)))
    graph_spikes = graph_spikes_by_module(part.graph, runner.spikes)
    if set(graph_spikes) != set(model_spikes):
        only_model = sorted(set(model_spikes) - set(graph_spikes))
        only_graph = sorted(set(graph_spikes) - set(model_spikes))
        raise GraphError(f"{part.role}: neuron layers differ: model-only {only_model}, graph-only {only_graph}")
    layers = {name: {"mismatches": int((s != graph_spikes[name].to(s.dtype)).sum()), "spikes": int(s.sum()),
                     "neuron_steps": s.numel()} for name, s in model_spikes.items()}
    result = {"layers": layers, "total_mismatches": sum(v["mismatches"] for v in layers.values())}
    if out.dtype.is_floating_point:
        result["max_abs_err"] = float((out.double() - model_out.double()).abs().max())
    else:
        result["token_mismatches"] = int((out != model_out).sum())
        result["tokens"] = out.numel()
    return result


def compare_sd(graphs: SDGraphs, vqsvae: VQSVAE, sdid: SDID | None, images: torch.Tensor, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> dict[str, dict]:
    """Each part against its modules on the same inputs: the encoder on ``images`` (in [-1, 1]), the
    decoder on the encoder's tokens, the SDID on those tokens partly masked at random steps ``t``."""
    out = {}
    tokens, spikes = hooked_spikes(vqsvae, lambda: vqsvae.tokens(images))
    out["encoder"] = _compare_part(graphs["encoder"], tokens, spikes, (images,), dtype)
    recon, spikes = hooked_spikes(vqsvae, lambda: vqsvae.tokens_to_images(tokens))
    out["decoder"] = _compare_part(graphs["decoder"], recon, spikes, (tokens,), dtype)
    if sdid is not None and graphs.generator:
        host = graphs["sdid"].host
        gen = torch.Generator().manual_seed(seed)
        t = torch.randint(1, host.steps + 1, (tokens.shape[0],), generator=gen)
        masked = torch.rand(tokens.shape, generator=gen) < (t.float() / host.steps).view(-1, 1, 1)
        x_t = tokens.masked_fill(masked, host.codebook_size)
        logits, spikes = hooked_spikes(sdid, lambda: sdid(x_t, t))
        out["sdid"] = _compare_part(graphs["sdid"], logits, spikes, (x_t, t), dtype)
    return out
