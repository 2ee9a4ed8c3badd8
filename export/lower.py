"""Lowering a trained :class:`SpikingUNet` to the spiking graph IR, exactly.

* BatchNorm (eval statistics) is folded into the conv before it (:func:`fold_batchnorm`).
* ``conv(cat(a, b))`` becomes two convs on ``a`` and ``b`` feeding the same node, with the
  weights split by input channel; a neuron on ``cat(a, b)`` becomes one neuron group per part.
* Residual sums are fan-in: every float tensor of the UNet (a block's output) is a
  :class:`Junction` that sums its inputs; identity shortcuts are plain edges.
* TSM gains, with the BatchNorm shift, become :class:`TemporalAffine` nodes.
* Time-embedding projections become per-block analog inputs; the MLPs and the tail stay on
  the host (:class:`HostParams`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sdm.errors import ConfigError
from sdm.train.diffusion import ScheduleConfig
from sdm.train.layers import TSMConv2d
from sdm.train.moments import Moments
from sdm.train.neuron import IFNeuron
from sdm.train.unet import DownSample, ResBlock, SpikingUNet, UpSample

from .ir import (
    AnalogInput,
    BlockProjection,
    Conv,
    HostParams,
    IFNeurons,
    Junction,
    Origin,
    Output,
    SNNGraph,
    Tail,
    TemporalAffine,
    TimeMLP,
    Upsample,
)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eval-mode ``bn(conv(x)) = conv'(x) + shift`` in float64: returns ``(s*W, s*b, shift)``
    with ``s = gamma / sqrt(var + eps)`` and ``shift = beta - s * mean``."""
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - s * bn.running_mean.double()
    w = conv.weight.double() * s.view(-1, 1, 1, 1)
    b = (conv.bias.double() if conv.bias is not None else torch.zeros_like(s)) * s
    return w, b, shift


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``s * x + shift`` (float64)."""
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return s, bn.bias.double() - s * bn.running_mean.double()


class GraphBuilder:
    """Collects nodes and edges; every node records the model module it was lowered from."""

    def __init__(self, model: nn.Module, dtype: np.dtype, threshold_scale: float):
        self.dtype = dtype
        self.threshold_scale = threshold_scale
        self.named = dict(model.named_modules())
        self.nodes: dict = {}
        self.edges: list[tuple[str, str]] = []

    def array(self, t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(self.dtype)

    def add(self, node, *sources: str) -> str:
        if node.name in self.nodes:
            raise ValueError(f"duplicate node name {node.name}")
        self.nodes[node.name] = node
        self.edges.extend((s, node.name) for s in sources)
        return node.name

    def neurons(self, module: str, source: str, channels: tuple[int, int] | None = None, name: str = "") -> str:
        """The neuron group of IF module ``module`` on the current from ``source`` (with ``channels``:
        the part of the module's input channels that ``source`` carries, named ``name``)."""
        mod = self.named[module]
        if not isinstance(mod, IFNeuron):
            raise TypeError(f"{module}: expected an IF neuron, found {type(mod).__name__}")
        theta = mod.theta * self.threshold_scale
        shape = self.nodes[source].shape
        node = IFNeurons(name or module, np.full(shape, theta, dtype=self.dtype), mod.params,
                         origin=Origin(module, channels))
        return self.add(node, source)

    def conv_stage(self, prefix: str, conv: TSMConv2d, bn: nn.BatchNorm2d | None,
                   parts: list[tuple[str, str]]) -> list[str]:
        """Conv (+ folded BN, + TSM) over the channel-concatenation of ``parts`` = [(suffix, source)].

        Returns the nodes whose summed outputs equal the stage's output."""
        if bn is not None:
            w, b, shift = fold_batchnorm(conv, bn)
        else:
            w, b = conv.weight.double(), conv.bias.double()
            shift = torch.zeros_like(b)
        tsm = conv.tsm_gain is not None
        outs, start = [], 0
        for i, (suffix, src) in enumerate(parts):
            cin = self.nodes[src].shape[0]
            bias = (b if tsm else b + shift) if i == 0 else torch.zeros_like(b)
            split = len(parts) > 1
            name = f"{prefix}.{suffix}" if split else prefix
            origin = Origin(prefix, (start, start + cin) if split else None)
            outs.append(self.add(Conv(name, self.array(w[:, start:start + cin]), self.array(bias), conv.stride[0],
                                      conv.padding[0], self.nodes[src].shape, origin=origin), src))
            start += cin
        if start != conv.in_channels:
            raise ValueError(f"{prefix}: inputs have {start} channels, conv expects {conv.in_channels}")
        if not tsm:
            return outs
        shape = self.nodes[outs[0]].shape
        return [self.add(TemporalAffine(f"{prefix}.tsm", self.array(conv.tsm_gain.double()), self.array(shift), shape,
                                        origin=Origin(prefix)), *outs)]

    def neuron_parts(self, module: str, parts: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """One neuron group per part of a concatenation ``parts = [(suffix, source)]``, named
        ``<module>.<suffix>``, each recording its channel range of the module."""
        if len(parts) == 1:
            return [("", self.neurons(module, parts[0][1]))]
        out, start = [], 0
        for suffix, src in parts:
            stop = start + self.nodes[src].shape[0]
            out.append((suffix, self.neurons(module, src, (start, stop), name=f"{module}.{suffix}")))
            start = stop
        return out

    # ----- blocks -------------------------------------------------------------------------
    def resblock(self, p: str, block: ResBlock, parts: list[tuple[str, str]]) -> str:
        spikes = self.neuron_parts(f"{p}.neuron1", parts)
        h = self.conv_stage(f"{p}.conv1", block.conv1, block.bn1, spikes)
        out_ch = block.conv1.out_channels
        _, hh, ww = self.nodes[h[0]].shape
        temb = self.add(AnalogInput(f"{p}.temb", (out_ch, hh, ww), kind="temb", block=p,
                                    origin=Origin(f"{p}.temb_proj")))
        n2 = self.neurons(f"{p}.neuron2", h[0])
        self.edges.extend((s, n2) for s in h[1:] + [temb])
        h2 = self.conv_stage(f"{p}.conv2", block.conv2, block.bn2, [("", n2)])
        if block.shortcut is None:
            short = [src for _, src in parts]
        else:
            short = self.conv_stage(f"{p}.shortcut", block.shortcut, None, parts)
        return self.add(Junction(f"{p}.out", self.nodes[h2[0]].shape, origin=Origin(p)), *h2, *short)

    def downsample(self, p: str, block: DownSample, src: str) -> str:
        s = self.neurons(f"{p}.neuron", src)
        h = self.conv_stage(f"{p}.conv", block.conv, block.bn, [("", s)])
        return self.add(Junction(f"{p}.out", self.nodes[h[0]].shape, origin=Origin(p)), *h)

    def upsample(self, p: str, block: UpSample, src: str) -> str:
        s = self.neurons(f"{p}.neuron", src)
        u = self.add(Upsample(f"{p}.upsample", self.nodes[s].shape, scale=2, origin=Origin(p)), s)
        h = self.conv_stage(f"{p}.conv", block.conv, block.bn, [("", u)])
        return self.add(Junction(f"{p}.out", self.nodes[h[0]].shape, origin=Origin(p)), *h)


def lower_unet(model: SpikingUNet, dtype=np.float32, threshold_scale: float = 1.0,
               schedule: ScheduleConfig | dict | None = None, moments: Moments | None = None) -> SNNGraph:
    """The exact spiking graph of an eval-mode ``model`` (its BatchNorm running statistics are used).

    ``threshold_scale`` bakes threshold guidance into the neurons; ``schedule`` is the diffusion
    schedule to carry along (a checkpoint's ``diffusion`` section; default: the linear
    1e-4..0.02 schedule over the model's ``diffusion_steps``); ``moments`` (Analytic-DPM) travel too."""
    if not isinstance(model, SpikingUNet):
        raise TypeError(f"can only lower a SpikingUNet, got {type(model).__name__}")
    if not threshold_scale > 0:
        raise ConfigError(f"threshold scale must be positive, got {threshold_scale}")
    cfg = model.cfg
    if cfg.neuron != "if":
        raise ConfigError(f"only spiking models lower to a spiking graph (NIR export, Lava, energy); this is an ANN "
                          f"(neuron={cfg.neuron}); a quantised ANN does after `sdm convert`")
    b = GraphBuilder(model, np.dtype(dtype), threshold_scale)
    with torch.no_grad():
        _lower_layers(b, model)
        if schedule is None:
            schedule = ScheduleConfig(steps=cfg.diffusion_steps)
        elif isinstance(schedule, dict):
            schedule = ScheduleConfig(**schedule)
        host = _host_params(model, b.array, threshold_scale, schedule)
        host.moments = moments
    return SNNGraph(b.nodes, b.edges, host)


def _lower_layers(b: GraphBuilder, model: SpikingUNet) -> None:
    """Stem, down path (keeping the skips), middle and up path (reading them back)."""
    cfg = model.cfg
    x = b.add(AnalogInput("x", (cfg.img_ch, cfg.img_size, cfg.img_size), kind="image"))
    stem = model.stem
    h = b.conv_stage("stem.conv_in", stem.conv_in, stem.bn_in, [("", x)])
    n = b.neurons("stem.neuron", h[0])
    b.edges.extend((s, n) for s in h[1:])
    h = b.conv_stage("stem.conv", stem.conv, stem.bn, [("", n)])
    stream = b.add(Junction("stem.out", b.nodes[h[0]].shape, origin=Origin("stem")), *h)
    skips = [stream]
    for i, block in enumerate(model.down):
        p = f"down.{i}"
        stream = b.resblock(p, block, [("", stream)]) if isinstance(block, ResBlock) else \
            b.downsample(p, block, stream)
        skips.append(stream)
    for i, block in enumerate(model.middle):
        stream = b.resblock(f"middle.{i}", block, [("", stream)])
    for i, block in enumerate(model.up):
        p = f"up.{i}"
        stream = b.resblock(p, block, [("h", stream), ("skip", skips.pop())]) if isinstance(block, ResBlock) else \
            b.upsample(p, block, stream)
    b.add(Output("output", b.nodes[stream].shape), stream)


def _host_params(model: SpikingUNet, to_np, threshold_scale: float, schedule: ScheduleConfig) -> HostParams:
    cfg = model.cfg
    te = model.time_embedding
    time_mlp = TimeMLP(table=to_np(te.table), fc1_w=to_np(te.fc1.weight), fc1_b=to_np(te.fc1.bias),
                       fc2_w=to_np(te.fc2.weight), fc2_b=to_np(te.fc2.bias))
    temb_proj = {}
    for group in ("down", "middle", "up"):
        for i, block in enumerate(getattr(model, group)):
            if isinstance(block, ResBlock):
                lin = block.temb_linear
                temb_proj[f"{group}.{i}"] = BlockProjection(w=to_np(lin.weight), b=to_np(lin.bias))
    tail = model.tail
    bn_s, bn_b = batchnorm_affine(tail.bn)
    out_s, out_b = batchnorm_affine(tail.out_bn)
    gain = to_np(tail.conv.tsm_gain) if tail.conv.tsm_gain is not None else None
    tail_params = Tail(bn_scale=to_np(bn_s), bn_shift=to_np(bn_b), conv_w=to_np(tail.conv.weight),
                       conv_b=to_np(tail.conv.bias), out_w=to_np(tail.out_conv.weight), out_b=to_np(tail.out_conv.bias),
                       out_bn_scale=to_np(out_s), out_bn_shift=to_np(out_b), conv_gain=gain)
    return HostParams(T=cfg.T, img_shape=(cfg.img_ch, cfg.img_size, cfg.img_size), time_mlp=time_mlp,
                      temb_proj=temb_proj, tail=tail_params, readout_decay=cfg.readout_decay, readout=cfg.readout,
                      schedule=schedule, theta=cfg.theta, threshold_scale=threshold_scale)
