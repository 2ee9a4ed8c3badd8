"""Running a spiking graph IR in PyTorch: the denoiser rebuilt from a NIR file.

:class:`GraphDenoiser` is an ``nn.Module`` with the same call signature as the trained
model, ``eps = f(x_t, t)``; it evaluates the graph node by node over ``[T, B, ...]``
tensors and the host-side parts around it.  The neuron arithmetic is the training
code's (:func:`sdm.train.neuron.multistep_if`), so there is one definition of it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sdm.errors import GraphError
from sdm.train.neuron import multistep_if

from .ir import AnalogInput, Conv, IFNeurons, Junction, Output, SNNGraph, TemporalAffine, Upsample


class GraphModule(nn.Module):
    """Executes the spiking part of an :class:`SNNGraph` over ``[T, B, ...]`` tensors (inference only).

    ``threshold_scale`` scales every threshold stored in the graph (threshold guidance on top
    of whatever scale was baked in at export).  With ``record=True`` the spikes of every neuron
    group of the last call are kept in ``self.spikes[name]`` as ``[T, B, C, H, W]`` tensors.

    Each node type has one ``_run_<type>`` method (the table ``_RUN``) mapping its summed input
    ``[T, B, C, H, W]`` to its output, and one ``_load_<type>`` that keeps its parameters.
    """

    def __init__(self, graph: SNNGraph, T: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.graph = graph
        self.dtype = dtype
        self.T = T
        self.order = graph.topological_order()
        self.preds = {n: graph.predecessors(n) for n in graph.nodes}
        self.threshold_scale = 1.0
        self.record = False
        self.spikes: dict[str, torch.Tensor] = {}
        self._params = nn.ParameterDict()
        self._uniform_threshold: dict[str, float] = {}
        for name, node in graph.nodes.items():
            load = self._LOAD.get(type(node))
            if load is not None:
                load(self, name.replace(".", "__"), node)

    def _p(self, a: np.ndarray) -> nn.Parameter:
        return nn.Parameter(torch.as_tensor(np.asarray(a)).to(self.dtype), requires_grad=False)

    # ----- parameters, per node type -----------------------------------------------------------
    def _load_conv(self, key: str, node: Conv) -> None:
        self._params[key + "__w"] = self._p(node.weight)
        self._params[key + "__b"] = self._p(node.bias)

    def _load_temporal_affine(self, key: str, node: TemporalAffine) -> None:
        if node.gain.shape[0] != self.T:
            raise GraphError(f"{node.name}: TSM gain has {node.gain.shape[0]} steps, the graph runs {self.T}")
        self._params[key + "__g"] = self._p(node.gain.reshape(-1, 1, 1, 1, 1))
        self._params[key + "__o"] = self._p(node.offset.reshape(1, 1, -1, 1, 1))

    def _load_neurons(self, key: str, node: IFNeurons) -> None:
        th = node.threshold
        if np.all(th == th.flat[0]):
            self._uniform_threshold[node.name] = float(th.flat[0])
        else:
            self._params[key + "__th"] = self._p(th)

    _LOAD = {Conv: _load_conv, TemporalAffine: _load_temporal_affine, IFNeurons: _load_neurons}

    def analog_input(self, node: AnalogInput, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[T, B, C, H, W]`` current of an input node; ``inputs[name]`` is ``[B, C, H, W]``."""
        x = inputs[node.name].to(self.dtype)
        return x.unsqueeze(0).expand(self.T, *x.shape)

    # ----- one step of the graph walk, per node type ----------------------------------------------
    @staticmethod
    def _per_frame(fn, inp: torch.Tensor) -> torch.Tensor:
        """Apply a 2-D operation to every (step, image) frame of ``[T, B, C, H, W]``."""
        T, B = inp.shape[:2]
        y = fn(inp.reshape(T * B, *inp.shape[2:]))
        return y.view(T, B, *y.shape[1:])

    def _run_conv(self, key: str, node: Conv, inp: torch.Tensor) -> torch.Tensor:
        return self._per_frame(lambda x: F.conv2d(x, self._params[key + "__w"], self._params[key + "__b"],
                                                  stride=node.stride, padding=node.padding), inp)

    def _run_temporal_affine(self, key: str, node: TemporalAffine, inp: torch.Tensor) -> torch.Tensor:
        return inp * self._params[key + "__g"] + self._params[key + "__o"]

    def _run_neurons(self, key: str, node: IFNeurons, inp: torch.Tensor) -> torch.Tensor:
        th = self._uniform_threshold.get(node.name)
        th = (th if th is not None else self._params[key + "__th"]) * self.threshold_scale
        out = multistep_if(inp, th, params=node.params)
        if self.record:
            self.spikes[node.name] = out
        return out

    def _run_upsample(self, key: str, node: Upsample, inp: torch.Tensor) -> torch.Tensor:
        if node.mode == "nearest":
            return self._per_frame(lambda x: F.interpolate(x, scale_factor=node.scale, mode="nearest"), inp)
        s = node.scale
        out = inp.new_zeros(*inp.shape[:3], inp.shape[3] * s, inp.shape[4] * s)
        out[..., ::s, ::s] = inp
        return out

    def _run_stream(self, key: str, node: Junction | Output, inp: torch.Tensor) -> torch.Tensor:
        return inp

    _RUN = {Conv: _run_conv, TemporalAffine: _run_temporal_affine, IFNeurons: _run_neurons,
            Upsample: _run_upsample, Junction: _run_stream, Output: _run_stream}

    @torch.no_grad()
    def run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-step output ``[T, B, C, H, W]`` of the graph; ``inputs`` maps each input node to ``[B, C, H, W]``."""
        vals: dict[str, torch.Tensor] = {}
        if self.record:
            self.spikes = {}
        for name in self.order:
            node = self.graph.nodes[name]
            if isinstance(node, AnalogInput):
                vals[name] = self.analog_input(node, inputs)
                continue
            inp = None
            for src in self.preds[name]:
                inp = vals[src] if inp is None else inp + vals[src]
            vals[name] = self._RUN[type(node)](self, name.replace(".", "__"), node, inp)
        return vals[self.graph.output.name]


class GraphDenoiser(GraphModule):
    """The denoiser ``eps = f(x_t, t)`` rebuilt from a graph with host-side parameters."""

    def __init__(self, graph: SNNGraph, dtype: torch.dtype = torch.float32):
        if graph.host is None:
            raise GraphError("the graph has no host-side parameters (time embedding, tail): not a denoiser")
        super().__init__(graph, graph.host.T, dtype)
        host = graph.host
        self._mlp = nn.ParameterDict({k: self._p(v) for k, v in host.time_mlp.arrays().items()})
        self._tail = nn.ParameterDict({k: self._p(v) for k, v in host.tail.arrays().items()})
        self._proj = nn.ParameterDict()
        for block, proj in host.temb_proj.items():
            key = block.replace(".", "__")
            self._proj[key + "__w"] = self._p(proj.w)
            self._proj[key + "__b"] = self._p(proj.b)
        self.mean_first = host.readout == "mean"
        decay = host.readout_decay ** np.arange((1 if self.mean_first else self.T) - 1, -1, -1, dtype=np.float64)
        self._readout = self._p(decay)

    # ----- host side ----------------------------------------------------------------------
    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        p = self._mlp
        h = F.linear(p["table"][t], p["fc1_w"], p["fc1_b"])
        return F.linear(F.silu(h), p["fc2_w"], p["fc2_b"])

    def temb_current(self, block: str, temb: torch.Tensor) -> torch.Tensor:
        key = block.replace(".", "__")
        return F.linear(F.silu(temb), self._proj[key + "__w"], self._proj[key + "__b"])

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        p = self._tail
        if self.mean_first:
            h = h.mean(0, keepdim=True)
        T, B = h.shape[:2]
        y = h * p["bn_scale"].view(1, 1, -1, 1, 1) + p["bn_shift"].view(1, 1, -1, 1, 1)
        y = F.conv2d(F.silu(y).flatten(0, 1), p["conv_w"], p["conv_b"], padding=p["conv_w"].shape[-1] // 2)
        y = y.view(T, B, *y.shape[1:])
        if "conv_gain" in p:
            y = y * p["conv_gain"].view(-1, 1, 1, 1, 1)
        g = F.conv2d(y.flatten(0, 1), p["out_w"], p["out_b"], padding=p["out_w"].shape[-1] // 2).view(y.shape)
        g = g * p["out_bn_scale"].view(1, 1, -1, 1, 1) + p["out_bn_shift"].view(1, 1, -1, 1, 1)
        y = F.silu(g) + y
        return torch.einsum("t,t...->...", self._readout, y)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c, h, w = self.graph.host.img_shape
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise ValueError(f"denoiser input must be [B, {c}, {h}, {w}], got {list(x.shape)}")
        return self.tail(self.run(self.denoiser_inputs(x, t)))

    def denoiser_inputs(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[B, C, H, W]`` currents of every input node for one call at diffusion steps ``t``."""
        x = x.to(self.dtype)
        temb = self.time_embedding(t)
        inputs = {}
        for node in self.graph.of_type(AnalogInput):
            if node.kind == "image":
                inputs[node.name] = x
            else:
                cur = self.temb_current(node.block, temb)
                inputs[node.name] = cur[:, :, None, None].expand(x.shape[0], *node.shape)
        return inputs
