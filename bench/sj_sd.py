"""Baseline for ``bench/sd_throughput.py``: the Spiking-Diffusion VQ-SVAE and SDID built the way
the reference builds them (Arktis2022/Spiking-Diffusion, ``snn_model/vae_model.py`` and the
``DummyModel`` of ``snn_model/vq_diffusion.py``; the layer facts are in
``shared/notes/spiking-diffusion.md``).

Same layers and parameter count as ``sdm.train.vqsvae.VQSVAE`` and ``sdm.train.sdid.SDID`` (the
bench asserts it), but every neuron is a spikingjelly 0.0.0.0.14 ``LIFNode(surrogate=ATan())``
with all other arguments at their defaults (tau 2, ``decay_input``, threshold 1, hard reset to 0,
``detach_reset=False``, torch backend), every layer is a spikingjelly ``layer.*`` module in
multi-step mode 'm' (conv and BN flatten ``[T, B, ...]`` to ``[T*B, ...]`` one layer at a time),
and the network must be reset with ``functional.reset_net`` after every call.

The point is to time the reference *build*, so it keeps the reference's habits that cost time
(marked ``# ref habit``):

* inputs and code vectors are ``repeat``-ed T times (copies), not broadcast;
* the PSP filter of the spike loss grows its output with ``torch.cat`` at every step;
* the membrane readout multiplies by a ``[T, 1, 1, 1, 1]`` coefficient tensor and sums;
* ``permute(...).contiguous()`` copies around the codebook lookup;
* SDID's head conv runs on all T steps before the mean (ours runs it once on the mean);
* the neurons run spikingjelly's per-step Python loop in training.

The losses live inside ``forward`` in training mode, as in the reference; eval mode returns the
outputs.  Only ``bench/`` imports this module; spikingjelly is a bench-only dependency
(``requirements-bench.lock``).
"""

from __future__ import annotations

import re

import torch
from bench_util import load_renamed
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn
from torch.nn import functional as F


def _lif() -> nn.Module:
    return neuron.LIFNode(surrogate_function=surrogate.ATan())


def _conv_bn_lif(conv: nn.Module) -> list[nn.Module]:
    return [conv, layer.BatchNorm2d(conv.out_channels), _lif()]


class SJPSP(nn.Module):
    """``p[t] = p[t-1] + (x[t] - p[t-1]) / tau_s`` over ``[T, ...]``, all T steps."""

    def __init__(self, tau_s: float = 2.0):
        super().__init__()
        self.tau_s = tau_s

    def forward(self, x_seq):
        out, p = None, 0.0
        for t in range(x_seq.shape[0]):
            p = p + (x_seq[t] - p) / self.tau_s
            # ref habit: the result is re-concatenated at every step
            out = p.unsqueeze(0) if out is None else torch.cat([out, p.unsqueeze(0)], dim=0)
        return out


class SJMembraneOutput(nn.Module):
    """``sum_t decay^(T-1-t) x[t]`` of ``[T, B, ...]``."""

    def __init__(self, T: int = 16, decay: float = 0.8):
        super().__init__()
        # non-persistent, so that the state dicts of the two builds hold the same entries
        coef = torch.pow(decay, torch.arange(T - 1, -1, -1, dtype=torch.float64)).float()
        self.register_buffer("coef", coef.view(T, 1, 1, 1, 1), persistent=False)

    def forward(self, x_seq):
        return torch.sum(x_seq * self.coef, dim=0)  # ref habit: broadcast multiply, then sum


class SJVectorQuantizer(nn.Module):
    """Feature mix, codebook, straight-through estimator and the adaptive spike generator
    (``poisson``, which is deterministic); in training mode it also returns L1 + L2."""

    def __init__(self, embedding_dim=16, num_embeddings=128, commitment_cost=0.25, T=16,
                 readout_decay=0.8, psp_tau=2.0, alpha_init=0.5):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost
        self.T = T
        self.memout = SJMembraneOutput(T, readout_decay)
        self.psp = SJPSP(psp_tau)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.embeddings = nn.Embedding(num_embeddings, embedding_dim)
        self.poisson = nn.Sequential(*_conv_bn_lif(layer.Conv2d(embedding_dim, embedding_dim, kernel_size=1)))

    def _spikes(self, q_bhwd):
        q = q_bhwd.permute(0, 3, 1, 2).contiguous()  # ref habit: copies
        return self.poisson(q.unsqueeze(0).repeat(self.T, 1, 1, 1, 1))  # ref habit: T copies

    def forward(self, s):
        z = (1 - self.alpha) * self.memout(s) + self.alpha * torch.sum(s, dim=0) / self.T
        z = z.permute(0, 2, 3, 1).contiguous()  # [B, h, w, D]; ref habit: copies
        flat = z.reshape(-1, self.embedding_dim)
        e = self.embeddings.weight
        dist = torch.sum(flat ** 2, dim=1, keepdim=True) + torch.sum(e ** 2, dim=1) - 2.0 * torch.matmul(flat, e.t())
        indices = torch.argmin(dist, dim=1)
        q = self.embeddings(indices).view_as(z)
        if not self.training:
            return self._spikes(q), indices.view(z.shape[:3])
        loss_1 = F.mse_loss(q, z.detach()) + self.commitment_cost * F.mse_loss(z, q.detach())
        s_hat = self._spikes(z + (q - z).detach())
        loss_2 = (torch.mean((self.psp(s_hat) - self.psp(s.detach())) ** 2)
                  + self.commitment_cost * torch.mean((self.psp(s_hat.detach()) - self.psp(s)) ** 2))
        return s_hat, loss_1 + loss_2


class SJVQSVAE(nn.Module):
    """``forward(x_seq [T, B, C, H, W], image [B, C, H, W])``, both in model space ([-0.5, 0.5]).

    Training mode returns ``(L1 + L2, MSE / data_variance, MSE)``; eval mode returns
    ``(ASG spikes, reconstruction, indices [B, h, w])``."""

    def __init__(self, in_dim=1, channels=(32, 64), embedding_dim=16, num_embeddings=128, data_variance=1.0,
                 commitment_cost=0.25, T=16, readout_decay=0.8, psp_tau=2.0, alpha_init=0.5):
        super().__init__()
        self.data_variance = data_variance
        enc, cin = [], in_dim
        for c in channels:
            enc += _conv_bn_lif(layer.Conv2d(cin, c, kernel_size=3, stride=2, padding=1))
            cin = c
        enc += _conv_bn_lif(layer.Conv2d(cin, embedding_dim, kernel_size=1))
        self.encoder = nn.Module()
        self.encoder.snn_convs = nn.Sequential(*enc)
        self.vq_layer = SJVectorQuantizer(embedding_dim, num_embeddings, commitment_cost, T, readout_decay,
                                          psp_tau, alpha_init)
        dec, cin = [], embedding_dim
        for c in reversed(channels):
            dec += _conv_bn_lif(layer.ConvTranspose2d(cin, c, 3, stride=2, padding=1, output_padding=1))
            cin = c
        dec.append(layer.ConvTranspose2d(cin, in_dim, 3, stride=1, padding=1))
        self.decoder = nn.Module()
        self.decoder.snn_convs = nn.Sequential(*dec)
        self.memout = SJMembraneOutput(T, readout_decay)
        functional.set_step_mode(self, step_mode="m")

    def forward(self, x_seq, image):
        s = self.encoder.snn_convs(x_seq)
        if not self.training:
            s_hat, indices = self.vq_layer(s)
            return s_hat, torch.tanh(self.memout(self.decoder.snn_convs(s_hat))), indices
        s_hat, e_q_loss = self.vq_layer(s)
        recon = torch.tanh(self.memout(self.decoder.snn_convs(s_hat)))
        real_recon_loss = F.mse_loss(recon, image)
        return e_q_loss, real_recon_loss / self.data_variance, real_recon_loss


class SJSDID(nn.Module):
    """The reference's ``DummyModel``: ``forward(x [B, 1, h, w] float tokens, t [B]) -> logits [B, K, h, w]``."""

    def __init__(self, num_embeddings=128, channels=(64, 128, 256, 512, 256), T=16):
        super().__init__()
        self.T = T
        self.n_convs = len(channels)
        cin = 2  # token value and t
        for i, c in enumerate(channels):
            setattr(self, f"conv{i + 1}", nn.Sequential(*_conv_bn_lif(layer.Conv2d(cin, c, 3, stride=1, padding=1))))
            cin = c
        head = nn.Sequential(layer.Conv2d(channels[-1] + channels[0], num_embeddings, 3, 1, 1))
        setattr(self, f"conv{self.n_convs + 1}", head)
        functional.set_step_mode(self, step_mode="m")

    def forward(self, x, t):
        tt = torch.ones_like(x) * t.view(-1, 1, 1, 1)
        h = torch.cat((x, tt), dim=1).unsqueeze(0).repeat(self.T, 1, 1, 1, 1)  # ref habit: T copies
        skip = h = self.conv1(h)
        for i in range(2, self.n_convs + 1):
            h = getattr(self, f"conv{i}")(h)
        # ref habit: the head runs on every step, then the mean
        h = getattr(self, f"conv{self.n_convs + 1}")(torch.cat((h, skip), dim=2))
        return torch.sum(h, dim=0) / self.T


# ----- weights from ours ---------------------------------------------------------------------

def _vqsvae_name(name: str, n_dec: int) -> str:
    """Name in ``VQSVAE``'s state dict -> name in :class:`SJVQSVAE`'s."""
    fixed = {"alpha": "vq_layer.alpha", "codebook.weight": "vq_layer.embeddings.weight"}
    if name in fixed:
        return fixed[name]
    m = re.fullmatch(r"(encoder|decoder)\.(\d+)\.(conv|bn)\.(.+)", name)
    if m:
        part, i, kind, rest = m.groups()
        return f"{part}.snn_convs.{3 * int(i) + (kind == 'bn')}.{rest}"
    m = re.fullmatch(r"asg\.(conv|bn)\.(.+)", name)
    if m:
        return f"vq_layer.poisson.{int(m.group(1) == 'bn')}.{m.group(2)}"
    if name.startswith("out_conv."):
        return f"decoder.snn_convs.{3 * n_dec}.{name[len('out_conv.'):]}"
    raise KeyError(name)


def _sdid_name(name: str, n_convs: int) -> str:
    """Name in ``SDID``'s state dict -> name in :class:`SJSDID`'s."""
    m = re.fullmatch(r"layers\.(\d+)\.(conv|bn)\.(.+)", name)
    if m:
        i, kind, rest = m.groups()
        return f"conv{int(i) + 1}.{int(kind == 'bn')}.{rest}"
    if name.startswith("head."):
        return f"conv{n_convs + 1}.0.{name[len('head.'):]}"
    raise KeyError(name)


def vqsvae_from_ours(ours: nn.Module, data_variance: float) -> SJVQSVAE:
    """An :class:`SJVQSVAE` with the architecture and the weights of ``ours`` (a ``VQSVAE``)."""
    c = ours.cfg
    sj = SJVQSVAE(c.img_ch, c.channels, c.latent_dim, c.codebook_size, data_variance, c.commitment, c.T,
                  c.readout_decay, c.psp_tau, c.alpha_init)
    load_renamed(sj, ours, lambda name: _vqsvae_name(name, len(c.channels)))
    return sj


def sdid_from_ours(ours: nn.Module) -> SJSDID:
    """An :class:`SJSDID` with the architecture and the weights of ``ours`` (an ``SDID``, inputs "raw")."""
    c = ours.cfg
    if c.inputs != "raw":
        raise ValueError("the reference's DummyModel takes the raw token value and t (inputs='raw')")
    sj = SJSDID(c.codebook_size, c.channels, c.T)
    load_renamed(sj, ours, lambda name: _sdid_name(name, len(c.channels)))
    return sj
