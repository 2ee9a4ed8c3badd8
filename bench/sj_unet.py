"""Baseline for the throughput bench: the spiking UNet built the way SDDPM builds it.

This is the architecture of ``sdm.train.unet.SpikingUNet`` (same layers, same
parameter count for the same config), written in the style of the reference
implementation (SDDPM ``model/SpikingUNet.py``, ``Spk_UNet``): every neuron is a
spikingjelly 0.0.0.0.14 multi-step ``IFNode`` with the ATan surrogate
(``detach_reset=False``, hard reset to 0, threshold 1), the torch backend, and
the network has to be reset with ``functional.reset_net`` after every call.

The point of this file is to time the reference *build*, so it deliberately
keeps the reference's habits that cost time (marked ``# ref habit`` below):

* the input image is ``repeat``-ed T times and the first conv runs on all T
  copies (ours convolves once and broadcasts);
* the time-embedding projection is ``repeat``-ed to a full ``[1, B, C, H, W]``
  tensor before the add (ours broadcasts a ``[B, C, 1, 1]`` view);
* ``Swish`` is ``x * sigmoid(x)`` (two kernels, two saved tensors) instead of
  the fused ``F.silu``;
* ``.reshape(...).contiguous()`` after every BatchNorm (a no-op on a
  contiguous tensor, kept for fidelity);
* the output layer is a ``Conv3d`` with kernel (3, 3, 1) on a permuted
  ``[B, C, H, W, T]`` tensor, which forces a copy in and out;
* the membrane readout multiplies by a coefficient tensor built on every call
  and sums over T;
* the neurons run spikingjelly's per-step Python loop, about ten autograd
  nodes per step, and ``torch.stack`` the spikes.

Only ``bench/`` imports this module; spikingjelly is a bench-only dependency
(``requirements-bench.lock``).
"""

from __future__ import annotations

import math

import torch
from bench_util import load_renamed
from spikingjelly.activation_based import functional, neuron, surrogate
from torch import nn
from torch.nn import functional as F
from torch.nn import init


def _if_node() -> nn.Module:
    return neuron.IFNode(surrogate_function=surrogate.ATan())


def _xavier(module: nn.Module, gain: float = 1.0) -> None:
    init.xavier_uniform_(module.weight, gain=gain)
    init.zeros_(module.bias)


class SJSwish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)  # ref habit: unfused silu


def _bn_seq(bn: nn.BatchNorm2d, y: torch.Tensor, T: int, B: int) -> torch.Tensor:
    """BN on ``[T*B, C, H, W]`` and back to ``[T, B, C, H, W]``."""
    return bn(y).reshape(T, B, *y.shape[1:]).contiguous()  # ref habit: .contiguous()


class SJTimeEmbedding(nn.Module):
    def __init__(self, n: int, ch: int, tdim: int):
        super().__init__()
        freqs = torch.exp(-torch.arange(0, ch, step=2).float() / ch * math.log(10000))
        angles = torch.arange(n).float()[:, None] * freqs[None, :]
        table = torch.stack([angles.sin(), angles.cos()], dim=-1).view(n, ch)
        self.timembedding = nn.Sequential(
            nn.Embedding.from_pretrained(table),  # frozen parameter, counted
            nn.Linear(ch, tdim),
            SJSwish(),
            nn.Linear(tdim, tdim),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _xavier(m)

    def forward(self, t):
        return self.timembedding(t)


class SJResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, tdim: int):
        super().__init__()
        self.temb_proj = nn.Sequential(SJSwish(), nn.Linear(tdim, out_ch))
        self.neuron1 = _if_node()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.neuron2 = _if_node()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                _xavier(m)

    def forward(self, x, temb):
        T, B, _, H, W = x.shape
        h = _bn_seq(self.bn1, self.conv1(self.neuron1(x).flatten(0, 1)), T, B)
        # ref habit: materialise the embedding over H x W -> [1, B, C, H, W]
        e = self.temb_proj(temb)[:, :, None, None].repeat(1, 1, 1, H, W)
        h = torch.add(h, e)
        h = _bn_seq(self.bn2, self.conv2(self.neuron2(h).flatten(0, 1)), T, B)
        return h + self.shortcut(x.flatten(0, 1)).reshape(T, B, -1, H, W).contiguous()


class SJDownSample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(ch)
        self.neuron = _if_node()
        _xavier(self.conv)

    def forward(self, x, temb):
        T, B = x.shape[:2]
        return _bn_seq(self.bn, self.conv(self.neuron(x).flatten(0, 1)), T, B)


class SJUpSample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)
        self.bn = nn.BatchNorm2d(ch)
        self.neuron = _if_node()
        _xavier(self.conv)

    def forward(self, x, temb):
        T, B = x.shape[:2]
        s = F.interpolate(self.neuron(x).flatten(0, 1), scale_factor=2, mode="nearest")
        return _bn_seq(self.bn, self.conv(s), T, B)


class SJMembraneReadout(nn.Module):
    def __init__(self, T: int, decay: float = 0.8):
        super().__init__()
        self.T = T
        self.decay = decay

    def forward(self, x):
        # ref habit: coefficients rebuilt (and moved) on every call
        k = torch.arange(self.T - 1, -1, -1)
        coef = torch.pow(self.decay, k).view(-1, 1, 1, 1, 1).to(x.device)
        return (x * coef).sum(dim=0)


class SJSpikingUNet(nn.Module):
    """Same layout as ``sdm.train.unet.SpikingUNet`` (no TSM), spikingjelly neurons.

    ``forward(x [B, C, H, W], t [B]) -> eps [B, C, H, W]``; call
    ``functional.reset_net(model)`` after every forward (or forward+backward).
    """

    def __init__(self, img_ch=1, ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=2, T=4,
                 diffusion_steps=1000):
        super().__init__()
        tdim = 4 * ch
        self.T = T
        self.time_embedding = SJTimeEmbedding(diffusion_steps, ch, tdim)
        # stem: conv on analog input -> BN -> IF -> conv -> BN
        self.conv = nn.Conv2d(img_ch, ch, 3, padding=1)
        self.bn = nn.BatchNorm2d(ch)
        self.neuron = _if_node()
        self.conv_identity = nn.Conv2d(ch, ch, 3, padding=1)
        self.bn_identity = nn.BatchNorm2d(ch)

        self.downblocks = nn.ModuleList()
        chs = [ch]
        now = ch
        for level, mult in enumerate(ch_mult):
            out = ch * mult
            for _ in range(num_res_blocks):
                self.downblocks.append(SJResBlock(now, out, tdim))
                now = out
                chs.append(now)
            if level != len(ch_mult) - 1:
                self.downblocks.append(SJDownSample(now))
                chs.append(now)
        self.middleblocks = nn.ModuleList([SJResBlock(now, now, tdim), SJResBlock(now, now, tdim)])
        self.upblocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            out = ch * mult
            for _ in range(num_res_blocks + 1):
                self.upblocks.append(SJResBlock(chs.pop() + now, out, tdim))
                now = out
            if level != 0:
                self.upblocks.append(SJUpSample(now))
        assert not chs

        self.tail_bn = nn.BatchNorm2d(now)
        self.tail_swish = SJSwish()
        self.tail_conv = nn.Conv2d(now, img_ch, 3, padding=1)
        # per-step 3x3 conv written as a Conv3d over [B, C, H, W, T]
        self.T_output_layer = nn.Conv3d(img_ch, img_ch, kernel_size=(3, 3, 1), padding=(1, 1, 0))
        self.last_bn = nn.BatchNorm2d(img_ch)
        self.swish = SJSwish()
        self.membrane_output_layer = SJMembraneReadout(T)

        _xavier(self.conv)
        _xavier(self.tail_conv, gain=1e-5)
        functional.set_step_mode(self, step_mode="m")

    def forward(self, x, t):
        T = self.T
        B = x.shape[0]
        x = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)  # ref habit: T copies of the analog input
        temb = self.time_embedding(t)
        h = _bn_seq(self.bn, self.conv(x.flatten(0, 1)), T, B)
        h = _bn_seq(self.bn_identity, self.conv_identity(self.neuron(h).flatten(0, 1)), T, B)
        skips = [h]
        for block in self.downblocks:
            h = block(h, temb)
            skips.append(h)
        for block in self.middleblocks:
            h = block(h, temb)
        for block in self.upblocks:
            if isinstance(block, SJResBlock):
                h = torch.cat([h, skips.pop()], dim=2)
            h = block(h, temb)
        assert not skips

        h = self.tail_swish(self.tail_bn(h.flatten(0, 1)))
        h = self.tail_conv(h).reshape(T, B, -1, *h.shape[2:]).contiguous()
        g = self.T_output_layer(h.permute(1, 2, 3, 4, 0)).permute(4, 0, 1, 2, 3)  # ref habit: permute copies
        g = _bn_seq(self.last_bn, g.flatten(0, 1), T, B)
        h = self.swish(g) + h
        return self.membrane_output_layer(h)


def _ours_to_sj_name(name: str) -> str:
    """Name in ``sdm.train.unet.SpikingUNet``'s state dict -> name in :class:`SJSpikingUNet`'s."""
    fixed = {
        "time_embedding.table": "time_embedding.timembedding.0.weight",
        "stem.conv_in.": "conv.", "stem.bn_in.": "bn.", "stem.conv.": "conv_identity.", "stem.bn.": "bn_identity.",
        "tail.bn.": "tail_bn.", "tail.conv.": "tail_conv.", "tail.out_conv.": "T_output_layer.",
        "tail.out_bn.": "last_bn.",
    }
    for a, b in fixed.items():
        if name.startswith(a):
            return b + name[len(a):]
    for a, b in (("time_embedding.fc1.", "time_embedding.timembedding.1."),
                 ("time_embedding.fc2.", "time_embedding.timembedding.3."),
                 ("down.", "downblocks."), ("middle.", "middleblocks."), ("up.", "upblocks.")):
        if name.startswith(a):
            return b + name[len(a):]
    raise KeyError(name)


def _output_layout(name: str, value: torch.Tensor) -> torch.Tensor:
    """The reference's output layer is a Conv3d with kernel (3, 3, 1): [o, i, 3, 3] -> [o, i, 3, 3, 1]."""
    return value.unsqueeze(-1) if name == "T_output_layer.weight" else value


def load_from_ours(sj: SJSpikingUNet, ours: nn.Module) -> None:
    """Copy every parameter and buffer of an ``sdm`` SpikingUNet (no TSM) into ``sj``."""
    load_renamed(sj, ours, _ours_to_sj_name, _output_layout)
