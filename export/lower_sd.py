"""Lowering Spiking-Diffusion's networks (SDID, the VQ-SVAE decoder with its spike generator, the
encoder with the codebook) to the spiking graph IR, exactly (docs/spiking-diffusion.md section 14).

* ``conv -> BN -> LIF``: BatchNorm (eval statistics) folded into the conv (:func:`conv_bn`); the LIF
  keeps its ``decay_input`` form in the neuron record (``NeuronParams.lif``: decay 1/2, input scale 1/2
  for tau 2), which NIR writes as ``LIF(tau = 2, r = 1)``.
* ``ConvTranspose2d`` has no NIR node: stride 1 is a ``Conv`` with the kernel flipped and in / out
  swapped, padding ``k - 1 - p``; stride ``s`` is zero insertion (:class:`Upsample` mode ``zeros``)
  followed by that conv (:func:`transposed_conv`).  Both are exact rewritings, not approximations.
* SDID's head on ``cat(c5, c1)`` becomes two convs, on c5's and on c1's spikes, feeding one junction.
* The codebook distance is a 1x1 conv with the code vectors as weights, on the last encoder layer's
  spikes; the readout weights, the ``-|e|^2 / 2`` bias and the arg-max are the host's
  (:class:`~sdm.export.sd_graph.EncoderHost`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sdm.errors import ConfigError
from sdm.train.sdid import SDID
from sdm.train.vqsvae import VQSVAE, SpikingConv

from .ir import AnalogInput, Conv, Junction, Origin, Output, SNNGraph, Upsample
from .lower import GraphBuilder, batchnorm_affine
from .sd_graph import DecoderHost, EncoderHost, Part, SDGraphs, SDIDHost, leaky_rate_weights


def transposed_conv(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """``(weight, bias, insertion scale, padding)`` of the stride-1 ``Conv`` that, after zero insertion by
    the scale (none for stride 1), equals ``conv``: ``W'[o, i] = flip(W[i, o])``, padding ``k - 1 - p``.

    Zero insertion writes ``x[i, j]`` to ``(s i, s j)`` of an ``s H x s W`` map, so its last ``s - 1`` rows
    and columns are zeros: that is the transposed conv's ``output_padding`` when it equals ``s - 1``
    (the only case it covers)."""
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    op, dil = conv.output_padding, conv.dilation
    name = type(conv).__name__
    if k[0] != k[1] or s[0] != s[1] or p[0] != p[1] or op[0] != op[1] or dil != (1, 1) or conv.groups != 1:
        raise ConfigError(f"{name}: only square kernels, equal strides / paddings, dilation 1 and groups 1 lower "
                          f"exactly (kernel {k}, stride {s}, padding {p}, output_padding {op}, dilation {dil})")
    k, s, p, op = k[0], s[0], p[0], op[0]
    if op != s - 1 or p > k - 1:
        raise ConfigError(f"{name}: output_padding {op} must be stride - 1 = {s - 1} and padding {p} at most "
                          f"kernel - 1 = {k - 1} for an exact lowering")
    weight = conv.weight.detach().double().transpose(0, 1).flip(2, 3)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    return weight, bias, s, k - 1 - p


def conv_bn(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d | None
            ) -> tuple[torch.Tensor, torch.Tensor, int, int, int]:
    """``(weight, bias, stride, padding, insertion scale)`` of ``bn(conv(x))`` as one stride-``stride`` conv
    after zero insertion by the scale (1: none), BatchNorm folded in float64."""
    if isinstance(conv, nn.ConvTranspose2d):
        weight, bias, scale, padding = transposed_conv(conv)
        stride = 1
    else:
        if conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1] or conv.groups != 1 \
                or conv.dilation != (1, 1):
            raise ConfigError(f"{type(conv).__name__}: only equal strides and paddings, dilation 1 and groups 1 "
                              f"are supported")
        weight = conv.weight.detach().double()
        bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(len(weight), dtype=weight.dtype)
        stride, padding, scale = conv.stride[0], conv.padding[0], 1
    if bn is not None:
        s, shift = batchnorm_affine(bn)
        weight, bias = weight * s.view(-1, 1, 1, 1), bias * s + shift
    return weight, bias, stride, padding, scale


class _SDBuilder(GraphBuilder):
    """The UNet's graph builder with the two layer kinds of this family."""

    def conv(self, name: str, conv, bn, src: str, weight_slice: slice | None = None, with_bias: bool = True) -> str:
        """``bn(conv(src))`` (transposed convs through zero insertion); ``weight_slice`` keeps those input
        channels of the weight (a conv on one part of a concatenation)."""
        weight, bias, stride, padding, scale = conv_bn(conv, bn)
        module = name.rsplit(".", 1)[0] if name.endswith((".h", ".skip")) else name
        if scale > 1:
            src = self.add(Upsample(f"{name}.insert_zeros", self.nodes[src].shape, scale=scale, mode="zeros",
                                    origin=Origin(module)), src)
        channels = None
        if weight_slice is not None:
            weight = weight[:, weight_slice]
            channels = (weight_slice.start, weight_slice.stop)
        if not with_bias:
            bias = torch.zeros_like(bias)
        node = Conv(name, self.array(weight), self.array(bias), stride, padding, self.nodes[src].shape,
                    origin=Origin(module, channels))
        return self.add(node, src)

    def spiking_conv(self, prefix: str, layer: SpikingConv, src: str) -> str:
        """``conv -> BN -> LIF`` of a :class:`SpikingConv` named ``prefix``: returns the neuron group."""
        return self.neurons(f"{prefix}.neuron", self.conv(f"{prefix}.conv", layer.conv, layer.bn, src))

    def readout(self, name: str, *sources: str) -> None:
        """The junction that sums ``sources`` and the Output that reads it (the host reads it per step)."""
        j = self.add(Junction(name, self.nodes[sources[0]].shape, origin=Origin(name)), *sources)
        self.add(Output("output", self.nodes[j].shape), j)


def lower_sdid(model: SDID, dtype=np.float32, grid: int = 7) -> Part:
    """The SDID on a ``grid x grid`` token grid (the VQ-SVAE's latent size)."""
    cfg = model.cfg
    b = _SDBuilder(model, np.dtype(dtype), 1.0)
    with torch.no_grad():
        x = b.add(AnalogInput("tokens", (cfg.in_channels, grid, grid), kind="image"))
        first = h = b.spiking_conv("layers.0", model.layers[0], x)
        for i, layer in enumerate(model.layers[1:], start=1):
            h = b.spiking_conv(f"layers.{i}", layer, h)
        c_last, c_first = cfg.channels[-1], cfg.channels[0]
        head_h = b.conv("head.h", model.head, None, h, slice(0, c_last))
        head_skip = b.conv("head.skip", model.head, None, first, slice(c_last, c_last + c_first), with_bias=False)
        b.readout("logits", head_h, head_skip)
    host = SDIDHost(T=cfg.T, codebook_size=cfg.codebook_size, steps=cfg.steps, inputs=cfg.inputs)
    return Part(SNNGraph(b.nodes, b.edges), host)


def lower_decoder(model: VQSVAE, dtype=np.float32) -> Part:
    """Code vectors -> ASG -> decoder -> the last (transposed) conv; the readout is the host's."""
    cfg = model.cfg
    b = _SDBuilder(model, np.dtype(dtype), 1.0)
    with torch.no_grad():
        n = cfg.latent_size
        x = b.add(AnalogInput("codes", (cfg.latent_dim, n, n), kind="image"))
        h = b.spiking_conv("asg", model.asg, x)
        for i, layer in enumerate(model.decoder):
            h = b.spiking_conv(f"decoder.{i}", layer, h)
        b.readout("image", b.conv("out_conv", model.out_conv, None, h))
        codebook = b.array(model.codebook.weight.double())
    host = DecoderHost(T=cfg.T, codebook=codebook, readout_decay=cfg.readout_decay, data_scale=cfg.data_scale)
    return Part(SNNGraph(b.nodes, b.edges), host)


def lower_encoder(model: VQSVAE, dtype=np.float32) -> Part:
    """Image -> encoder spikes -> the codebook's dot products (a 1x1 conv); the nearest code is the host's."""
    cfg = model.cfg
    b = _SDBuilder(model, np.dtype(dtype), 1.0)
    with torch.no_grad():
        x = b.add(AnalogInput("image", (cfg.img_ch, cfg.img_size, cfg.img_size), kind="image"))
        h = x
        for i, layer in enumerate(model.encoder):
            h = b.spiking_conv(f"encoder.{i}", layer, h)
        e = model.codebook.weight.double()
        conv = b.add(Conv("codebook", b.array(e[:, :, None, None]), np.zeros(e.shape[0], dtype=b.dtype), 1, 0,
                          b.nodes[h].shape, origin=Origin("codebook")), h)
        b.readout("distance", conv)
        weights = leaky_rate_weights(cfg.T, cfg.readout_decay, float(model.alpha))
        bias = (-0.5 * e.square().sum(1)).numpy()
    host = EncoderHost(weights=weights, bias=bias, data_scale=cfg.data_scale)
    return Part(SNNGraph(b.nodes, b.edges), host)


def lower_spiking_diffusion(vqsvae: VQSVAE, sdid: SDID | None = None, dtype=np.float32,
                            meta: dict | None = None) -> SDGraphs:
    """The deployed model: encoder and decoder of ``vqsvae`` and, for a generator, the ``sdid`` on its grid
    (both in eval mode: BatchNorm running statistics are what gets folded)."""
    for m in (vqsvae, sdid):
        if m is not None and m.training:
            raise ConfigError(f"{type(m).__name__} must be in eval mode to lower (BatchNorm statistics)")
    parts = {"decoder": lower_decoder(vqsvae, dtype), "encoder": lower_encoder(vqsvae, dtype)}
    if sdid is not None:
        parts = {"sdid": lower_sdid(sdid, dtype, vqsvae.cfg.latent_size), **parts}
    return SDGraphs(parts, dict(meta or {}))
