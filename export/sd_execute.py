"""Running a deployed Spiking-Diffusion model: each part's host side around any executor of its graph.

A *graph runner* maps the part's input current ``[B, C, H, W]`` to its per-step output ``[T, B, C, H, W]``:
the PyTorch executor (:func:`torch_runner`) or a Lava network (:mod:`sdm.neuromorphic.sd_run`).
:class:`PartCall` puts the host record around it (tokens in, logits / images / tokens out) and
:func:`sample` generates with any SDID and decoder calls, drawing the random numbers exactly as
:func:`sdm.train.sd_model.sample_absorbing` does: with a spike-exact denoiser, the same seed gives the
same samples as the trained PyTorch model.
"""

from __future__ import annotations

from typing import Callable

import torch

from sdm.errors import ConfigError
from sdm.train.absorbing import AbsorbingConfig, AbsorbingDiffusion

from .execute import GraphModule
from .sd_graph import Part, SDGraphs

GraphRunner = Callable[[torch.Tensor], torch.Tensor]


def torch_runner(part: Part, dtype: torch.dtype = torch.float32, record: bool = False) -> GraphModule:
    """The PyTorch executor of ``part``'s graph, called as ``runner(current)``; with ``record`` its
    ``spikes`` hold every neuron group's spikes of the last call."""
    return _CurrentRunner(part, dtype, record)


class _CurrentRunner(GraphModule):
    def __init__(self, part: Part, dtype: torch.dtype, record: bool):
        super().__init__(part.graph, part.host.T, dtype)
        self.input_name = part.input.name
        self.record = record

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        return self.run({self.input_name: current})


class PartCall:
    """``part.host.readout(runner(part.host.currents(*args)))``; ``calls`` counts them."""

    def __init__(self, part: Part, runner: GraphRunner):
        self.part = part
        self.runner = runner
        self.calls = 0

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.part.host.readout(self.runner(self.part.host.currents(*args)))


def torch_calls(graphs: SDGraphs, dtype: torch.dtype = torch.float32) -> dict[str, PartCall]:
    """A PyTorch :class:`PartCall` per part of ``graphs``."""
    return {role: PartCall(part, torch_runner(part, dtype)) for role, part in graphs.parts.items()}


def sample(graphs: SDGraphs, sdid: Callable, decode: Callable, n: int, temperature: float = 1.0, seed: int = 0,
           batch_size: int = 64, on_step: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [n, C, H, W] in [-1, 1], tokens [n, h, w])`` by absorbing diffusion with the ``sdid`` call
    ``(x_t, t) -> logits`` and the ``decode`` call ``tokens -> images``, in batches of ``batch_size``
    with one CPU generator seeded by ``seed`` (``on_step`` as :meth:`AbsorbingDiffusion.sample`'s)."""
    if not graphs.generator:
        raise ConfigError("this model has no SDID part (a VQ-SVAE file): it decodes and encodes, it cannot sample")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"number of samples must be a positive integer, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    host = graphs["sdid"].host
    diffusion = AbsorbingDiffusion(AbsorbingConfig(codebook_size=host.codebook_size, steps=host.steps))
    gen = torch.Generator().manual_seed(int(seed))
    images, tokens = [], []
    for first in range(0, n, batch_size):
        tok = diffusion.sample(sdid, min(batch_size, n - first), graphs.token_shape, temperature, gen,
                               on_step=on_step)
        tokens.append(tok)
        images.append(decode(tok))
    return torch.cat(images), torch.cat(tokens)
