"""A plain spiking CNN built from the UNet's parts: the simplest network every backend handles.

Sequential (``residual=False``)::

    conv_in(analog x) -> BN -> [IF -> conv(stride s_i) -> BN] for each stage

Residual (``residual=True``): the stages are pre-spike residual blocks without time
embedding, ``x + BN(conv(IF(BN(conv(IF(x))))))``, on a constant channel count.

The output is the last stage's float current per spiking step, ``[T, B, C, H, W]``.  It is
used to check exporters against third-party NIR readers and the lava-dl netx path, where a
whole UNet does not fit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import init

from sdm.export.ir import AnalogInput, Junction, Output, SNNGraph
from sdm.export.lower import GraphBuilder
from sdm.train.layers import SeqBatchNorm2d, TSMConv2d
from sdm.train.neuron import IFNeuron


@dataclass
class CNNConfig:
    img_ch: int = 1
    img_size: int = 16
    channels: tuple[int, ...] = (8, 8, 16)  # stem output, then one entry per stage
    strides: tuple[int, ...] = (1, 2)  # one per stage (sequential only)
    T: int = 4
    theta: float = 1.0
    residual: bool = False

    def __post_init__(self):
        self.channels, self.strides = tuple(self.channels), tuple(self.strides)
        if self.residual and len(set(self.channels)) != 1:
            raise ValueError("a residual spiking CNN keeps one channel count")
        if not self.residual and len(self.strides) != len(self.channels) - 1:
            raise ValueError("one stride per stage: len(strides) == len(channels) - 1")


def _conv(cin, cout, stride=1):
    conv = TSMConv2d(cin, cout, 3, stride=stride, padding=1)
    init.xavier_uniform_(conv.weight)
    init.zeros_(conv.bias)
    return conv


class ConvStage(nn.Module):
    """IF -> conv -> BN."""

    def __init__(self, cin, cout, stride, theta):
        super().__init__()
        self.neuron = IFNeuron(theta)
        self.conv = _conv(cin, cout, stride)
        self.bn = SeqBatchNorm2d(cout)

    def forward(self, x):
        return self.bn.forward_seq(self.conv.forward_seq(self.neuron(x)))


class ResidualStage(nn.Module):
    def __init__(self, ch, theta):
        super().__init__()
        self.a = ConvStage(ch, ch, 1, theta)
        self.b = ConvStage(ch, ch, 1, theta)

    def forward(self, x):
        return x + self.b(self.a(x))


class SpikingCNN(nn.Module):
    def __init__(self, cfg: CNNConfig):
        super().__init__()
        self.cfg = cfg = dataclasses.replace(cfg)
        self.conv_in = _conv(cfg.img_ch, cfg.channels[0])
        self.bn_in = SeqBatchNorm2d(cfg.channels[0])
        if cfg.residual:
            self.stages = nn.ModuleList(ResidualStage(c, cfg.theta) for c in cfg.channels[1:])
        else:
            self.stages = nn.ModuleList(ConvStage(cin, cout, s, cfg.theta) for cin, cout, s in
                                        zip(cfg.channels[:-1], cfg.channels[1:], cfg.strides))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_in(x)
        h = self.bn_in.forward_seq(y.unsqueeze(0).expand(self.cfg.T, *y.shape))
        for stage in self.stages:
            h = stage(h)
        return h


def lower_spiking_cnn(model, dtype=np.float32) -> SNNGraph:
    """The spiking graph of a :class:`SpikingCNN` (no host side), built with the UNet's lowering passes."""
    cfg = model.cfg
    b = GraphBuilder(model, np.dtype(dtype), 1.0)
    with torch.no_grad():
        x = b.add(AnalogInput("x", (cfg.img_ch, cfg.img_size, cfg.img_size)))
        h = b.conv_stage("conv_in", model.conv_in, model.bn_in, [("", x)])
        stream = b.add(Junction("stem.out", b.nodes[h[0]].shape), *h)
        for i, stage in enumerate(model.stages):
            p = f"stages.{i}"
            inner = [(f"{p}.a", stage.a), (f"{p}.b", stage.b)] if isinstance(stage, ResidualStage) else [(p, stage)]
            src = stream
            for q, st in inner:
                s = b.neurons(f"{q}.neuron", src)
                h = b.conv_stage(f"{q}.conv", st.conv, st.bn, [("", s)])
                src = b.add(Junction(f"{q}.out", b.nodes[h[0]].shape), *h)
            if isinstance(stage, ResidualStage):
                src = b.add(Junction(f"{p}.out", b.nodes[src].shape), src, stream)
            stream = src
        b.add(Output("output", b.nodes[stream].shape), stream)
    return SNNGraph(b.nodes, b.edges, None)
