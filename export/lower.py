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

from sdm.train.layers import TSMConv2d
from sdm.train.unet import DownSample, ResBlock, SpikingUNet, UpSample

from .ir import (AnalogInput, Conv, HostParams, IFNeurons, Junction, Output, SNNGraph, TemporalAffine,
                 Upsample)


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


class _Builder:
    def __init__(self, model: SpikingUNet, dtype: np.dtype, threshold_scale: float):
        self.decay = getattr(model.cfg, "decay", 1.0)
        self.dtype = dtype
        self.theta = model.cfg.theta * threshold_scale
        self.threshold_scale = threshold_scale
        self.named = dict(model.named_modules())
        self.nodes: dict = {}
        self.edges: list[tuple[str, str]] = []

    def np(self, t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(self.dtype)

    def add(self, node, *sources: str) -> str:
        if node.name in self.nodes:
            raise ValueError(f"duplicate node name {node.name}")
        self.nodes[node.name] = node
        self.edges.extend((s, node.name) for s in sources)
        return node.name

    def neurons(self, name: str, source: str) -> str:
        shape = self.nodes[source].shape
        # the neuron module (a concatenation's parts are named "<module>.<part>"): its own threshold,
        # reset and initial membrane (converted models have one threshold per layer)
        mod = self.named.get(name) or self.named.get(name.rsplit(".", 1)[0])
        theta = mod.theta * self.threshold_scale if hasattr(mod, "theta") else self.theta
        return self.add(IFNeurons(name, np.full(shape, theta, dtype=self.dtype), decay=self.decay,
                                  reset=getattr(mod, "reset", "zero"), v_init=getattr(mod, "v_init", 0.0),
                                  signed=getattr(mod, "signed", False)), source)

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
            name = prefix if len(parts) == 1 else f"{prefix}.{suffix}"
            outs.append(self.add(Conv(name, self.np(w[:, start:start + cin]), self.np(bias), conv.stride[0],
                                      conv.padding[0], self.nodes[src].shape), src))
            start += cin
        if start != conv.in_channels:
            raise ValueError(f"{prefix}: inputs have {start} channels, conv expects {conv.in_channels}")
        if not tsm:
            return outs
        shape = self.nodes[outs[0]].shape
        return [self.add(TemporalAffine(f"{prefix}.tsm", self.np(conv.tsm_gain.double()), self.np(shift), shape),
                         *outs)]

    def neuron_parts(self, prefix: str, parts: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if len(parts) == 1:
            return [("", self.neurons(prefix, parts[0][1]))]
        return [(suffix, self.neurons(f"{prefix}.{suffix}", src)) for suffix, src in parts]

    # ----- blocks -------------------------------------------------------------------------
    def resblock(self, p: str, block: ResBlock, parts: list[tuple[str, str]]) -> str:
        spikes = self.neuron_parts(f"{p}.neuron1", parts)
        h = self.conv_stage(f"{p}.conv1", block.conv1, block.bn1, spikes)
        out_ch = block.conv1.out_channels
        _, hh, ww = self.nodes[h[0]].shape
        temb = self.add(AnalogInput(f"{p}.temb", (out_ch, hh, ww), kind="temb", block=p))
        n2 = self.neurons(f"{p}.neuron2", h[0])
        self.edges.extend((s, n2) for s in h[1:] + [temb])
        h2 = self.conv_stage(f"{p}.conv2", block.conv2, block.bn2, [("", n2)])
        if block.shortcut is None:
            short = [src for _, src in parts]
        else:
            short = self.conv_stage(f"{p}.shortcut", block.shortcut, None, parts)
        return self.add(Junction(f"{p}.out", self.nodes[h2[0]].shape), *h2, *short)

    def downsample(self, p: str, block: DownSample, src: str) -> str:
        s = self.neurons(f"{p}.neuron", src)
        h = self.conv_stage(f"{p}.conv", block.conv, block.bn, [("", s)])
        return self.add(Junction(f"{p}.out", self.nodes[h[0]].shape), *h)

    def upsample(self, p: str, block: UpSample, src: str) -> str:
        s = self.neurons(f"{p}.neuron", src)
        u = self.add(Upsample(f"{p}.upsample", self.nodes[s].shape, scale=2), s)
        h = self.conv_stage(f"{p}.conv", block.conv, block.bn, [("", u)])
        return self.add(Junction(f"{p}.out", self.nodes[h[0]].shape), *h)


def lower_unet(model: SpikingUNet, dtype=np.float32, threshold_scale: float = 1.0,
               schedule: dict | None = None) -> SNNGraph:
    """The exact spiking graph of an eval-mode ``model`` (its BatchNorm running statistics are used).

    ``threshold_scale`` bakes threshold guidance into the neurons; ``schedule`` is the diffusion
    schedule to carry along (default: the linear 1e-4..0.02 schedule over ``diffusion_steps``)."""
    if not isinstance(model, SpikingUNet):
        raise TypeError(f"can only lower a SpikingUNet, got {type(model).__name__}")
    if not threshold_scale > 0:
        raise ValueError(f"threshold scale must be positive, got {threshold_scale}")
    cfg = model.cfg
    if getattr(cfg, "neuron", "if") != "if":
        raise ValueError(f"only spiking models lower to a spiking graph (NIR export, Lava, energy); this is an ANN "
                         f"(neuron={cfg.neuron}); a quantised ANN does after `sdm convert`")
    b = _Builder(model, np.dtype(dtype), threshold_scale)
    with torch.no_grad():
        size = cfg.img_size
        x = b.add(AnalogInput("x", (cfg.img_ch, size, size), kind="image"))
        stem = model.stem
        h = b.conv_stage("stem.conv_in", stem.conv_in, stem.bn_in, [("", x)])
        n = b.neurons("stem.neuron", h[0])
        b.edges.extend((s, n) for s in h[1:])
        h = b.conv_stage("stem.conv", stem.conv, stem.bn, [("", n)])
        cur = b.add(Junction("stem.out", b.nodes[h[0]].shape), *h)

        skips = [cur]
        for i, block in enumerate(model.down):
            p = f"down.{i}"
            if isinstance(block, ResBlock):
                cur = b.resblock(p, block, [("", cur)])
            else:
                cur = b.downsample(p, block, cur)
            skips.append(cur)
        for i, block in enumerate(model.middle):
            cur = b.resblock(f"middle.{i}", block, [("", cur)])
        for i, block in enumerate(model.up):
            p = f"up.{i}"
            if isinstance(block, ResBlock):
                cur = b.resblock(p, block, [("h", cur), ("skip", skips.pop())])
            else:
                cur = b.upsample(p, block, cur)
        b.add(Output("output", b.nodes[cur].shape), cur)
        host = _host_params(model, b.np, threshold_scale)
        if schedule is not None:
            host.schedule = {k: schedule[k] for k in ("steps", "beta_start", "beta_end")}
    return SNNGraph(b.nodes, b.edges, host)


def _host_params(model: SpikingUNet, to_np, threshold_scale: float) -> HostParams:
    cfg = model.cfg
    te = model.time_embedding
    time_mlp = {"table": to_np(te.table), "fc1_w": to_np(te.fc1.weight), "fc1_b": to_np(te.fc1.bias),
                "fc2_w": to_np(te.fc2.weight), "fc2_b": to_np(te.fc2.bias)}
    temb_proj = {}
    for group in ("down", "middle", "up"):
        for i, block in enumerate(getattr(model, group)):
            if isinstance(block, ResBlock):
                lin = block.temb_proj[1]
                temb_proj[f"{group}.{i}"] = (to_np(lin.weight), to_np(lin.bias))
    tail = model.tail
    bn_s, bn_b = batchnorm_affine(tail.bn)
    out_s, out_b = batchnorm_affine(tail.out_bn)
    tail_params = {"bn_scale": to_np(bn_s), "bn_shift": to_np(bn_b),
                   "conv_w": to_np(tail.conv.weight), "conv_b": to_np(tail.conv.bias),
                   "out_w": to_np(tail.out_conv.weight), "out_b": to_np(tail.out_conv.bias),
                   "out_bn_scale": to_np(out_s), "out_bn_shift": to_np(out_b)}
    if tail.conv.tsm_gain is not None:
        tail_params["conv_gain"] = to_np(tail.conv.tsm_gain)
    return HostParams(T=cfg.T, img_shape=(cfg.img_ch, cfg.img_size, cfg.img_size), time_mlp=time_mlp,
                      temb_proj=temb_proj, tail=tail_params, readout_decay=cfg.readout_decay,
                      readout=getattr(cfg, "readout", "membrane"),
                      schedule={"steps": cfg.diffusion_steps, "beta_start": 1e-4, "beta_end": 0.02}, theta=cfg.theta, threshold_scale=threshold_scale)


def lower_spiking_cnn(model, dtype=np.float32) -> SNNGraph:
    """The spiking graph of a :class:`sdm.train.spiking_cnn.SpikingCNN` (no host side)."""
    from sdm.train.spiking_cnn import ResidualStage

    cfg = model.cfg
    b = _Builder(model, np.dtype(dtype), 1.0)
    with torch.no_grad():
        x = b.add(AnalogInput("x", (cfg.img_ch, cfg.img_size, cfg.img_size)))
        h = b.conv_stage("conv_in", model.conv_in, model.bn_in, [("", x)])
        cur = b.add(Junction("stem.out", b.nodes[h[0]].shape), *h)
        for i, stage in enumerate(model.stages):
            p = f"stages.{i}"
            inner = [(f"{p}.a", stage.a), (f"{p}.b", stage.b)] if isinstance(stage, ResidualStage) else [(p, stage)]
            src = cur
            for q, st in inner:
                s = b.neurons(f"{q}.neuron", src)
                h = b.conv_stage(f"{q}.conv", st.conv, st.bn, [("", s)])
                src = b.add(Junction(f"{q}.out", b.nodes[h[0]].shape), *h)
            if isinstance(stage, ResidualStage):
                src = b.add(Junction(f"{p}.out", b.nodes[src].shape), src, cur)
            cur = src
        b.add(Output("output", b.nodes[cur].shape), cur)
    return SNNGraph(b.nodes, b.edges, None)
