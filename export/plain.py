"""Running a plain graph (no host section) on an input array: the part of ``sdm simulate/energy FILE.nir
--input X.npy`` that is not Lava's or the energy counter's.

The input is one sample held for ``T`` spiking steps (``[C, H, W]`` or the file's own shape, e.g. ``[N]``),
or one value per step, ``[T, ...]`` or ``[T, B, ...]`` (:func:`load_input`); :func:`reference_run` is the
project's PyTorch executor of the graph on it, in float64.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from sdm.errors import ConfigError, GraphError

from .execute import GraphModule
from .ir import AnalogInput, Output, SNNGraph

DEFAULT_T = 8  # spiking steps for an input held constant, when --T is not given


@dataclass(frozen=True)
class PlainInput:
    """The input of a run: ``x [T, B, C, H, W]`` (float64) and whether it changes from step to step."""

    x: torch.Tensor
    varying: bool

    T = property(lambda self: int(self.x.shape[0]))
    batch = property(lambda self: int(self.x.shape[1]))


def input_forms(shape: tuple[int, int, int]) -> list[tuple[int, ...]]:
    """The per-sample shapes an input array may end with: the IR's (C, H, W), and for a 1-D or 2-D
    input of the file its own (N,) or (C, L)."""
    c, h, w = shape
    return [shape] + ([(c,)] if h == w == 1 else []) + ([(c, w)] if h == 1 and w > 1 else [])


def load_input(path: str | os.PathLike, node: AnalogInput, T: int | None = None) -> PlainInput:
    """``X.npy`` for input ``node``: one sample (held for ``T`` steps, default :data:`DEFAULT_T`), ``[T, ...]``
    or ``[T, B, ...]``.  Every problem is a one-line :class:`ConfigError` naming the file."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable .npy array ({type(e).__name__}: {' '.join(str(e).split())[:100]})"
                          ) from None
    forms = input_forms(node.shape)
    form = next((f for f in forms if x.shape[x.ndim - len(f):] == f and x.ndim - len(f) in (0, 1, 2)), None)
    if form is None or x.dtype.kind not in "fiub" or not np.all(np.isfinite(x)):
        want = " or ".join(str(list(f)) for f in forms)
        what = f"shape {list(x.shape)}" if form is None else f"{x.dtype} data" if x.dtype.kind not in "fiub" \
            else "NaN or Inf"
        raise ConfigError(f"{path}: the input {node.name!r} takes one sample {want}, [T, ...] or [T, B, ...]; "
                          f"got {what}")
    lead = x.shape[:x.ndim - len(form)]
    if lead and T is not None and T != lead[0]:
        raise ConfigError(f"{path}: the input has {lead[0]} steps, --T {T} was given")
    if not lead and (isinstance(T, bool) or T is not None and (not isinstance(T, int) or T < 1)):
        raise ConfigError(f"--T must be an integer >= 1, got {T!r}")
    steps = lead[0] if lead else (DEFAULT_T if T is None else T)
    batch = lead[1] if len(lead) == 2 else 1
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).reshape(
        lead[0] if lead else 1, batch, *node.shape)
    if not lead:
        data = data.expand(steps, *data.shape[1:])
    return PlainInput(data.contiguous(), varying=bool(lead))


def check_plain(graph: SNNGraph, where) -> AnalogInput:
    """A plain graph runs in Lava with one input and one output; returns the input node."""
    inputs, outputs = list(graph.of_type(AnalogInput)), list(graph.of_type(Output))
    if len(inputs) != 1 or len(outputs) != 1:
        raise GraphError(f"{where}: the graph has {len(inputs)} Input and {len(outputs)} Output nodes; "
                             "sdm simulate runs graphs with one of each")
    return inputs[0]


class _StepInputs(GraphModule):
    """The PyTorch executor with inputs given per step ``[T, B, C, H, W]``."""

    def analog_input(self, node, inputs):
        x = inputs[node.name]
        return x.to(self.dtype) if x.dim() == 5 else super().analog_input(node, inputs)


def reference_run(graph: SNNGraph, inp: PlainInput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PyTorch executor's output ``[T, B, C, H, W]`` and spikes of every neuron group (float64)."""
    ref = _StepInputs(graph, T=inp.T, dtype=torch.float64)
    ref.record = True
    node = next(graph.of_type(AnalogInput))
    return ref.run({node.name: inp.x}), dict(ref.spikes)


