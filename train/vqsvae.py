"""VQ-SVAE, the first stage of Spiking-Diffusion (Liu et al. 2023; docs/spiking-diffusion.md).

Shapes (defaults, MNIST)::

    x [B, 1, 28, 28] in [-1, 1]  --x data_scale-->  model space (the reference's [-0.5, 0.5])
    direct coding: the analog image repeated T = 16 times           [T, B, 1, 28, 28]
    encoder: conv s2 -> BN -> LIF (32), conv s2 -> BN -> LIF (64), conv 1x1 -> BN -> LIF (16)
                                                           spikes s  [T, B, 16, 7, 7]
    feature  z = (1 - alpha) * M + alpha * R,   M = sum_t 0.8^(T-1-t) s[t],  R = mean_t s[t]
    codebook: 128 x 16, q = e[argmin_k |z - e_k|^2] per position, straight-through q_st = z + sg(q - z)
    adaptive spike generator (ASG): q_st repeated T times -> conv 1x1 -> BN -> LIF   s^ [T, B, 16, 7, 7]
    decoder: convT s2 -> BN -> LIF (64), convT s2 -> BN -> LIF (32), convT s1 (1), analog y[t]
    x^ = tanh(sum_t 0.8^(T-1-t) y[t])                                            [B, 1, 28, 28]

Every neuron is spikingjelly's default ``LIFNode`` (tau 2, ``decay_input``, hard reset to 0,
threshold 1, ATan surrogate), the project's neuron with :meth:`NeuronParams.lif`.  Convolutions
and BatchNorm see ``[T*B, ...]``: BN statistics are shared over the spiking steps (plain BN, as
the reference).  The neurons hold no state between calls (every call starts at v = 0), which is
the reference's ``reset_net`` after each call, and cannot leak between batches.

Loss (:func:`vqsvae_loss`)::

    L1 = MSE(q, sg z) + beta * MSE(z, sg q)                                     (beta = 0.25)
    L2 = mean (PSP(s^) - sg PSP(s))^2 + beta * mean (sg PSP(s^) - PSP(s))^2      (PSP: p += (x - p) / 2)
    L  = L1 + L2 + MSE(x^, x) / data_variance
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from sdm.errors import ConfigError

from .config import check_field_types, strict_from_dict
from .layers import MembraneReadout
from .neuron import IFNeuron, NeuronParams


@dataclass
class VQSVAEConfig:
    """Architecture of the VQ-SVAE; stored in every checkpoint of the family."""

    img_ch: int = 1
    img_size: int = 28
    T: int = 16  # spiking steps
    channels: tuple[int, ...] = (32, 64)  # the stride-2 encoder convs; the decoder mirrors them
    latent_dim: int = 16  # D, the code vector length
    codebook_size: int = 128  # K
    commitment: float = 0.25  # beta
    tau: float = 2.0  # LIF time constant of every neuron
    readout_decay: float = 0.8  # M = sum_t decay^(T-1-t) s[t]; also the decoder readout
    psp_tau: float = 2.0  # PSP filter of the spike-level loss
    alpha_init: float = 0.5  # the learnable mix z = (1 - alpha) M + alpha R
    data_scale: float = 0.5  # model space = data * scale; 0.5 maps [-1, 1] to the reference's [-0.5, 0.5]

    def __post_init__(self):
        check_field_types(self, "VQ-SVAE", ints=("img_ch", "img_size", "T", "latent_dim", "codebook_size"),
                          reals=("commitment", "tau", "readout_decay", "psp_tau", "alpha_init", "data_scale"),
                          int_lists=("channels",))
        down = 2 ** len(self.channels)
        rules = (("img_ch", self.img_ch >= 1, ">= 1"), ("T", self.T >= 1, ">= 1"),
                 ("channels", len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
                  "a non-empty list of positive ints"),
                 ("img_size", self.img_size >= down and self.img_size % down == 0,
                  f"a multiple of 2^{len(self.channels)} (one halving per entry of channels)"),
                 ("latent_dim", self.latent_dim >= 1, ">= 1"),
                 ("codebook_size", 2 <= self.codebook_size <= 32767, "in 2..32767"),
                 ("commitment", self.commitment >= 0, ">= 0"), ("tau", self.tau > 1, "> 1"),
                 ("readout_decay", 0 < self.readout_decay <= 1, "in (0, 1]"), ("psp_tau", self.psp_tau >= 1, ">= 1"),
                 ("data_scale", self.data_scale > 0, "> 0"))
        bad = [f"{name}={getattr(self, name)!r} must be {rule}" for name, ok, rule in rules if not ok]
        if bad:
            raise ConfigError("invalid VQ-SVAE config: " + "; ".join(bad))

    @property
    def latent_size(self) -> int:
        """Side of the token grid (7 for 28 px and two halvings)."""
        return self.img_size // 2 ** len(self.channels)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VQSVAEConfig":
        return strict_from_dict(cls, d, "VQ-SVAE")


def psp(x_seq: torch.Tensor, tau: float = 2.0) -> torch.Tensor:
    """Postsynaptic potential of a spike train ``[T, ...]``: ``p[t] = p[t-1] + (x[t] - p[t-1]) / tau``,
    ``p[-1] = 0``; all T steps are returned."""
    out = []
    p = torch.zeros_like(x_seq[0])
    for t in range(x_seq.shape[0]):
        p = p + (x_seq[t] - p) / tau
        out.append(p)
    return torch.stack(out)


def seq_apply(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module`` on ``[T, B, ...]`` through the flattened ``[T*B, ...]`` view."""
    y = module(x.flatten(0, 1))
    return y.view(*x.shape[:2], *y.shape[1:])


class SpikingConv(nn.Module):
    """``conv -> BN -> LIF`` on ``[T, B, C, H, W]`` (the conv may be transposed); BN over T*B."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d, params: NeuronParams):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(conv.out_channels)
        self.neuron = IFNeuron(params=params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neuron(seq_apply(lambda y: self.bn(self.conv(y)), x))


def repeat_steps(x: torch.Tensor, T: int) -> torch.Tensor:
    """Direct coding: the analog ``x [B, ...]`` as the same current for ``T`` steps, ``[T, B, ...]``."""
    return x.unsqueeze(0).expand(T, *x.shape)


@dataclass
class VQSVAEOutput:
    recon: torch.Tensor  # x^ in model space [B, C, H, W]
    indices: torch.Tensor  # [B, h, w] code of every position
    z: torch.Tensor  # continuous feature [B, D, h, w]
    q: torch.Tensor  # the codebook vectors e[indices] [B, D, h, w] (no straight-through)
    spikes: torch.Tensor  # encoder spikes s [T, B, D, h, w]
    gen_spikes: torch.Tensor  # ASG spikes s^ [T, B, D, h, w] (of the straight-through q)


class VQSVAE(nn.Module):
    """Spiking VQ-VAE with the adaptive spike generator (module docstring)."""

    def __init__(self, cfg: VQSVAEConfig | None = None):
        super().__init__()
        cfg = cfg or VQSVAEConfig()
        self.cfg = cfg
        p = NeuronParams.lif(cfg.tau)
        layers, cin = [], cfg.img_ch
        for c in cfg.channels:
            layers.append(SpikingConv(nn.Conv2d(cin, c, 3, stride=2, padding=1), p))
            cin = c
        layers.append(SpikingConv(nn.Conv2d(cin, cfg.latent_dim, 1), p))
        self.encoder = nn.Sequential(*layers)
        self.readout = MembraneReadout(cfg.T, cfg.readout_decay)
        self.alpha = nn.Parameter(torch.tensor(float(cfg.alpha_init)))
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.latent_dim)  # N(0, 1), as the reference
        self.asg = SpikingConv(nn.Conv2d(cfg.latent_dim, cfg.latent_dim, 1), p)
        layers, cin = [], cfg.latent_dim
        for c in reversed(cfg.channels):
            layers.append(SpikingConv(nn.ConvTranspose2d(cin, c, 3, stride=2, padding=1, output_padding=1), p))
            cin = c
        self.decoder = nn.Sequential(*layers)
        self.out_conv = nn.ConvTranspose2d(cin, cfg.img_ch, 3, stride=1, padding=1)

    # ----- the stages -------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder spikes ``[T, B, D, h, w]`` of images ``x [B, C, H, W]`` in the data range [-1, 1]."""
        return self.encoder(repeat_steps(x * self.cfg.data_scale, self.cfg.T))

    def features(self, spikes: torch.Tensor) -> torch.Tensor:
        """``z = (1 - alpha) * membrane readout + alpha * firing rate``, ``[B, D, h, w]``."""
        return (1.0 - self.alpha) * self.readout(spikes) + self.alpha * spikes.mean(0)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index ``[B, h, w]`` of the nearest code of every position of ``z [B, D, h, w]``."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        e = self.codebook.weight
        dist = flat.square().sum(1, keepdim=True) + e.square().sum(1) - 2.0 * flat @ e.t()
        return dist.argmin(1).view(z.shape[0], *z.shape[2:])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors ``[B, D, h, w]`` of ``indices [B, h, w]``."""
        return self.codebook(indices).permute(0, 3, 1, 2)

    def generate_spikes(self, q: torch.Tensor) -> torch.Tensor:
        """The adaptive spike generator: ``q [B, D, h, w]`` as a constant current for T steps -> spikes."""
        return self.asg(repeat_steps(q, self.cfg.T))

    def decode(self, spikes: torch.Tensor) -> torch.Tensor:
        """``x^ = tanh(sum_t decay^(T-1-t) y[t])`` in model space, ``[B, C, H, W]``."""
        y = seq_apply(self.out_conv, self.decoder(spikes))
        return torch.tanh(self.readout(y))

    def to_images(self, recon: torch.Tensor) -> torch.Tensor:
        """Model space back to the data range, clipped to [-1, 1]."""
        return (recon / self.cfg.data_scale).clamp(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> VQSVAEOutput:
        s = self.encode(x)
        z = self.features(s)
        indices = self.nearest(z)
        q = self.lookup(indices)
        q_st = z + (q - z).detach()  # straight-through: the decoder's gradient reaches the encoder
        s_hat = self.generate_spikes(q_st)
        return VQSVAEOutput(self.decode(s_hat), indices, z, q, s, s_hat)

    @torch.no_grad()
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The code grid ``[B, h, w]`` of images ``x`` (no decoder run)."""
        return self.nearest(self.features(self.encode(x)))

    @torch.no_grad()
    def tokens_to_images(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode a code grid ``[B, h, w]``: lookup -> ASG -> decoder -> readout, in [-1, 1]."""
        return self.to_images(self.decode(self.generate_spikes(self.lookup(indices))))


def vqsvae_loss(model: VQSVAE, out: VQSVAEOutput, x: torch.Tensor, data_variance: float
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """The reference objective ``L1 + L2 + MSE / data_variance`` (module docstring); returns the
    total and its parts (``vq`` = L1, ``psp`` = L2, ``mse`` = the raw reconstruction MSE in model space)."""
    beta, tau = model.cfg.commitment, model.cfg.psp_tau
    l1 = F.mse_loss(out.q, out.z.detach()) + beta * F.mse_loss(out.z, out.q.detach())
    p_hat, p = psp(out.gen_spikes, tau), psp(out.spikes, tau)
    l2 = (p_hat - p.detach()).square().mean() + beta * (p_hat.detach() - p).square().mean()
    mse = F.mse_loss(out.recon, x * model.cfg.data_scale)
    total = l1 + l2 + mse / data_variance
    parts = {"vq": float(l1.detach()), "psp": float(l2.detach()), "mse": float(mse.detach())}
    return total, parts


def data_variance(images: torch.Tensor, scale: float) -> float:
    """The reference's normaliser: the (unbiased) variance of every training pixel in model space."""
    return float((images.to(torch.float64) * scale).var())
