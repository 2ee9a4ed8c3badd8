"""The spiking UNet denoiser of SDDPM / SDM (DESIGN.md section 2).

Shapes: the denoiser maps ``x_t [B, C, H, W]`` and diffusion steps ``t [B]`` to
``eps [B, C, H, W]``.  Inside, activations are ``[T, B, C, H, W]`` with ``T``
spiking steps; only neurons emit spikes, every addition is on float currents.

Layout (reference ``Spk_UNet``)::

    stem:   conv_in(analog x) -> BN -> IF -> conv -> BN
    down:   num_res_blocks ResBlocks per level, DownSample (IF -> conv s2 -> BN) between levels
    middle: 2 ResBlocks
    up:     num_res_blocks+1 ResBlocks per level on cat(h, skip), UpSample (IF -> nearest x2 -> conv -> BN)
    tail:   BN -> Swish -> conv -> [out_conv -> BN -> Swish] + residual -> membrane readout

ANN variants (``neuron`` in the config): "swish" and "relu" replace every IF neuron
by that analog activation, "qrelu" by the quantised ReLU of ``train/conversion.py``;
everything else (widths, BN, tail, recipe) is the same.  An ANN has no time axis to
spend, so it runs with ``T = 1`` internally: the sequence axis has length one and the
membrane readout over one step is the identity, ``eps = h[0]``.

Converted models (``sdm convert``) are ordinary IF models with per-neuron-layer
thresholds ``thetas``, ``reset="subtract"``, ``v_init=0.5``, optionally ``signed``
inhibitory spikes, and ``readout="mean"``:
the residual stream is averaged over the T steps before the analog tail,
``eps = Tail(mean_t h[t])`` on one step.

ResBlock (pre-spike)::

    h = BN1(conv1(IF1(x))) + temb_proj(temb)      # temb identical for all T
    h = BN2(conv2(IF2(h)))
    out = h + shortcut(x)                          # identity or 1x1 conv on float x
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn import init

from sdm.errors import ConfigError

from .config import check_field_types, strict_from_dict
from .layers import MembraneReadout, SeqBatchNorm2d, Swish, TSMConv2d
from .neuron import IFNeuron, NeuronParams

NEURONS = ("if", "swish", "relu", "qrelu")  # "if": the SNN; the others: ANN baselines
READOUTS = ("membrane", "mean")


@dataclass
class UNetConfig:
    """Architecture of the spiking UNet; stored in every checkpoint."""

    img_ch: int = 1
    img_size: int = 32
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    T: int = 4  # spiking steps per denoiser call
    diffusion_steps: int = 1000  # rows of the sinusoid table
    theta: float = 1.0  # neuron threshold
    decay: float = 1.0  # membrane decay per step (1 = IF)
    readout_decay: float = 0.8
    tsm: bool = False
    neuron: str = "if"  # if | swish | relu | qrelu (ANN kinds run with T = 1)
    bits: int = 0  # activation bits of neuron="qrelu"
    reset: str = "zero"  # IF reset: zero (hard) | subtract
    v_init: float = 0.0  # initial membrane, a fraction of theta
    signed: bool = False  # inhibitory -1 spikes (converted models, reset="subtract" only)
    thetas: tuple[float, ...] = ()  # per-neuron-layer thresholds in module order (converted models); () = theta
    readout: str = "membrane"  # membrane: eps = sum_t decay^(T-1-t) Tail(h)[t];  mean: eps = Tail(mean_t h)

    def __post_init__(self):
        check_field_types(self, "UNet", ints=("img_ch", "img_size", "ch", "num_res_blocks", "T", "diffusion_steps",
                                              "bits"),
                          reals=("theta", "decay", "readout_decay", "v_init"), bools=("tsm", "signed"),
                          strs=("neuron", "reset", "readout"), int_lists=("ch_mult",), real_lists=("thetas",))
        problems = []
        if self.neuron not in NEURONS:
            problems.append(f"neuron={self.neuron!r} must be one of {', '.join(NEURONS)}")
        elif self.neuron != "if":
            self.T = 1  # an ANN has no spiking steps to spend
            if self.tsm:
                problems.append("TSM (per-step gains) applies to spiking models only, not to an ANN")
        if self.neuron == "qrelu" and not 1 <= self.bits <= 16:
            problems.append(f"bits={self.bits} must be in 1..16 for neuron='qrelu'")
        try:
            _ = self.neuron_params  # builds the record: the one validation of neuron parameters
        except ConfigError as e:
            problems.append(str(e))
        if self.signed and self.neuron != "if":
            problems.append("signed spikes need neuron='if'")
        if self.readout not in READOUTS:
            problems.append(f"readout={self.readout!r} must be one of {', '.join(READOUTS)}")
        if any(not v > 0 for v in self.thetas):
            problems.append("thetas must all be positive")
        if self.img_ch < 1:
            problems.append(f"img_ch={self.img_ch} must be >= 1")
        if self.ch < 2 or self.ch % 2:
            problems.append(f"ch={self.ch} must be an even number >= 2 (sinusoid embedding)")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            problems.append(f"ch_mult={self.ch_mult} must be a non-empty list of positive ints")
        if self.num_res_blocks < 1:
            problems.append(f"num_res_blocks={self.num_res_blocks} must be >= 1")
        if self.T < 1:
            problems.append(f"T={self.T} must be >= 1")
        if self.diffusion_steps < 1:
            problems.append(f"diffusion_steps={self.diffusion_steps} must be >= 1")
        if not self.theta > 0:
            problems.append(f"theta={self.theta} must be positive")
        levels = len(self.ch_mult) - 1
        if self.img_size < 1 or self.img_size % (2 ** levels):
            problems.append(f"img_size={self.img_size} must be divisible by 2^{levels} "
                            f"for ch_mult={list(self.ch_mult)}")
        if problems:
            raise ConfigError("invalid UNet config: " + "; ".join(problems))

    @property
    def neuron_params(self) -> NeuronParams:
        """The dynamics of every IF neuron of the model (the thresholds are ``theta`` / ``thetas``)."""
        return NeuronParams(decay=self.decay, reset=self.reset, v_init=self.v_init, signed=self.signed)

    @property
    def tdim(self) -> int:
        return 4 * self.ch

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["thetas"] = list(self.thetas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        return strict_from_dict(cls, d, "UNet")


def sinusoid_table(n: int, dim: int) -> torch.Tensor:
    """``[n, dim]`` table, interleaved (sin, cos) pairs as in the reference (DDPM) code."""
    freqs = torch.exp(-torch.arange(0, dim, 2).float() / dim * math.log(10000))
    angles = torch.arange(n).float()[:, None] * freqs[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).view(n, dim)


class TimeEmbedding(nn.Module):
    """Host-side analog MLP: sinusoid(t) -> Linear -> Swish -> Linear, once per denoiser call."""

    def __init__(self, n: int, ch: int, tdim: int):
        super().__init__()
        # A frozen parameter (not a buffer) so that the parameter count matches
        # the reference, which stores it as a frozen nn.Embedding.
        self.table = nn.Parameter(sinusoid_table(n, ch), requires_grad=False)
        self.fc1 = nn.Linear(ch, tdim)
        self.act = Swish()
        self.fc2 = nn.Linear(tdim, tdim)
        for fc in (self.fc1, self.fc2):
            init.xavier_uniform_(fc.weight)
            init.zeros_(fc.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.table[t])))


class AnalogActivation(nn.Module):
    """Elementwise analog activation of the ANN baseline: Swish ``x * sigmoid(x)`` or ReLU."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.fn = {"swish": F.silu, "relu": F.relu}[kind]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.kind


def make_neuron(cfg: UNetConfig) -> nn.Module:
    """The activation that sits before every conv: an IF neuron, or the ANN's activation."""
    if cfg.neuron == "if":
        return IFNeuron(cfg.theta, params=cfg.neuron_params)
    if cfg.neuron == "qrelu":
        from .conversion import QuantReLU

        return QuantReLU(cfg.bits)
    return AnalogActivation(cfg.neuron)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> TSMConv2d:
    conv = TSMConv2d(cin, cout, k, stride=stride, padding=k // 2)
    init.xavier_uniform_(conv.weight)
    init.zeros_(conv.bias)
    return conv


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, tdim: int, cfg: UNetConfig):
        super().__init__()
        self.neuron1 = make_neuron(cfg)
        self.conv1 = _conv(in_ch, out_ch)
        self.bn1 = SeqBatchNorm2d(out_ch)
        self.temb_proj = nn.Sequential(Swish(), nn.Linear(tdim, out_ch))
        init.xavier_uniform_(self.temb_linear.weight)
        init.zeros_(self.temb_linear.bias)
        self.neuron2 = make_neuron(cfg)
        self.conv2 = _conv(out_ch, out_ch)
        self.bn2 = SeqBatchNorm2d(out_ch)
        self.shortcut = _conv(in_ch, out_ch, k=1) if in_ch != out_ch else None

    @property
    def temb_linear(self) -> nn.Linear:
        """The linear layer of the time-embedding projection (after its Swish)."""
        return self.temb_proj[1]

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.bn1.forward_seq(self.conv1.forward_seq(self.neuron1(x)))
        h = h + self.temb_proj(temb)[None, :, :, None, None]
        h = self.bn2.forward_seq(self.conv2.forward_seq(self.neuron2(h)))
        return h + (x if self.shortcut is None else self.shortcut.forward_seq(x))


class DownSample(nn.Module):
    def __init__(self, ch: int, cfg: UNetConfig):
        super().__init__()
        self.neuron = make_neuron(cfg)
        self.conv = _conv(ch, ch, stride=2)
        self.bn = SeqBatchNorm2d(ch)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.bn.forward_seq(self.conv.forward_seq(self.neuron(x)))


class UpSample(nn.Module):
    def __init__(self, ch: int, cfg: UNetConfig):
        super().__init__()
        self.neuron = make_neuron(cfg)
        self.conv = _conv(ch, ch)
        self.bn = SeqBatchNorm2d(ch)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        s = self.neuron(x)
        T, B = s.shape[:2]
        s = F.interpolate(s.flatten(0, 1), scale_factor=2, mode="nearest")
        s = s.view(T, B, *s.shape[1:])
        return self.bn.forward_seq(self.conv.forward_seq(s))


class Stem(nn.Module):
    """Direct encoding: the analog image is the same input current at every spiking step."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.T = cfg.T
        self.conv_in = _conv(cfg.img_ch, cfg.ch)
        self.bn_in = SeqBatchNorm2d(cfg.ch)
        self.neuron = make_neuron(cfg)
        self.conv = _conv(cfg.ch, cfg.ch)
        self.bn = SeqBatchNorm2d(cfg.ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The input is identical at every step, so convolve once and broadcast:
        # the same numbers as convolving T copies, T times cheaper.
        y = self.conv_in(x)
        y = y.unsqueeze(0).expand(self.T, *y.shape)
        if self.conv_in.tsm_gain is not None:
            y = y * self.conv_in.tsm_gain.view(-1, 1, 1, 1, 1).to(y.dtype)
        h = self.bn_in.forward_seq(y)
        return self.bn.forward_seq(self.conv.forward_seq(self.neuron(h)))


class Tail(nn.Module):
    """Host-side analog readout: per-step BN -> Swish -> conv, an output conv with residual,
    and the membrane readout over the T steps."""

    def __init__(self, ch: int, cfg: UNetConfig):
        super().__init__()
        self.bn = SeqBatchNorm2d(ch)
        self.act = Swish()
        self.conv = TSMConv2d(ch, cfg.img_ch, 3, padding=1)
        init.xavier_uniform_(self.conv.weight, gain=1e-5)
        init.zeros_(self.conv.bias)
        # The reference's Conv3d with kernel (3, 3, 1) over [B, C, H, W, T] is a
        # per-step 3x3 conv; it is not a TSM layer.
        self.out_conv = nn.Conv2d(cfg.img_ch, cfg.img_ch, 3, padding=1)
        self.out_bn = SeqBatchNorm2d(cfg.img_ch)
        self.mean_first = cfg.readout == "mean"
        self.readout = MembraneReadout(1 if self.mean_first else cfg.T, cfg.readout_decay)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.mean_first:
            h = h.mean(0, keepdim=True)
        h = self.conv.forward_seq(self.act(self.bn.forward_seq(h)))
        g = self.out_conv(h.flatten(0, 1)).view(h.shape)
        h = F.silu(self.out_bn.forward_seq(g)) + h
        return self.readout(h)


class SpikingUNet(nn.Module):
    """Spiking UNet denoiser ``eps = f(x_t, t)``; see the module docstring for the layout."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg = dataclasses.replace(cfg)  # own copy: enable_tsm() edits it
        ch, tdim = cfg.ch, cfg.tdim
        self.time_embedding = TimeEmbedding(cfg.diffusion_steps, ch, tdim)
        self.stem = Stem(cfg)

        self.down = nn.ModuleList()
        skip_chs = [ch]
        now = ch
        for level, mult in enumerate(cfg.ch_mult):
            out = ch * mult
            for _ in range(cfg.num_res_blocks):
                self.down.append(ResBlock(now, out, tdim, cfg))
                now = out
                skip_chs.append(now)
            if level != len(cfg.ch_mult) - 1:
                self.down.append(DownSample(now, cfg))
                skip_chs.append(now)

        self.middle = nn.ModuleList([ResBlock(now, now, tdim, cfg), ResBlock(now, now, tdim, cfg)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.ch_mult))):
            out = ch * mult
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(ResBlock(skip_chs.pop() + now, out, tdim, cfg))
                now = out
            if level != 0:
                self.up.append(UpSample(now, cfg))
        assert not skip_chs

        self.tail = Tail(now, cfg)
        if cfg.thetas:
            neurons = [m for m in self.modules() if isinstance(m, IFNeuron)]
            if len(neurons) != len(cfg.thetas):
                raise ConfigError(f"thetas has {len(cfg.thetas)} values but the UNet has {len(neurons)} neuron layers")
            for m, th in zip(neurons, cfg.thetas):
                m.theta = th
        if cfg.tsm:
            self.enable_tsm()

    def enable_tsm(self) -> int:
        """Switch on TSM (gains initialised to 1, so the output is unchanged); returns the layer count."""
        if self.cfg.neuron != "if":
            raise ConfigError(f"TSM applies to spiking models only; this model is an ANN (neuron={self.cfg.neuron})")
        if self.cfg.readout != "membrane":
            raise ConfigError("TSM is not supported on converted models (readout='mean')")
        convs = [m for m in self.modules() if isinstance(m, TSMConv2d)]
        for m in convs:
            m.enable_tsm(self.cfg.T)
        self.cfg.tsm = True
        return len(convs)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        div = 2 ** (len(cfg.ch_mult) - 1)
        if x.dim() != 4 or x.shape[1] != cfg.img_ch or x.shape[2] % div or x.shape[3] % div:
            raise ValueError(
                f"denoiser input must be [B, {cfg.img_ch}, H, W] with H, W divisible by "
                f"{div}, got {list(x.shape)}")
        temb = self.time_embedding(t)
        h = self.stem(x)
        skips = [h]
        for block in self.down:
            h = block(h, temb)
            skips.append(h)
        for block in self.middle:
            h = block(h, temb)
        for block in self.up:
            if isinstance(block, ResBlock):
                h = torch.cat([h, skips.pop()], dim=2)
            h = block(h, temb)
        return self.tail(h)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
