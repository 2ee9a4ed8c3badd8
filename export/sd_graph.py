"""The deployed Spiking-Diffusion model: three spiking graphs and what the host does around each.

Spiking-Diffusion (Liu et al. 2023; docs/spiking-diffusion.md) generates in two stages, so its
deployment is three spiking networks that the host calls in turn, each an :class:`SNNGraph` of the
same IR as the UNet's, with one host record (:class:`SDIDHost`, :class:`DecoderHost`,
:class:`EncoderHost`) that says how the call's input current is made and how its per-step output is
read out::

    sdid      tokens x_t [B, h, w], step t  ->  current [B, C_in, h, w] (raw: token value and t;
              onehot: one-hot over K + 1 classes and t / S)  ->  graph, T steps  ->  y [T, B, K, h, w]
              logits = mean_t y[t]                                  (49 calls per sample, S = 49)
    decoder   tokens [B, h, w]  ->  code vectors e[tokens] [B, D, h, w]  ->  graph (ASG, decoder)
              image = clamp(tanh(sum_t decay^(T-1-t) y[t]) / data_scale, -1, 1)
    encoder   images [B, C, H, W] in [-1, 1]  ->  current x * data_scale  ->  graph (encoder, and the
              codebook as a 1x1 conv: y[t] = E s[t])
              tokens = argmax_k (sum_t w[t] y[t, k] + bias[k]),  w[t] = (1 - alpha) decay^(T-1-t) + alpha / T,
              bias = -|e_k|^2 / 2     (argmin_k |z - e_k|^2 = argmax_k (e_k . z - |e_k|^2 / 2))

Input currents are made in float64 (each runner casts them to its precision).  Sampling (the
unmasking schedule, temperature, the categorical draws) is the host's, the same code as the PyTorch
model's (:class:`sdm.train.absorbing.AbsorbingDiffusion`), so a spike-exact denoiser gives the same
samples for the same seed.  Every record checks its fields on construction (:class:`GraphError`
naming the field); :class:`SDGraphs` checks the records against the graphs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from sdm.errors import GraphError
from sdm.train.sdid import INPUTS

from .ir import AnalogInput, SNNGraph, _array, _integer, _number

ROLES = ("sdid", "decoder", "encoder")
CURRENT_DTYPE = torch.float64  # input currents are made in float64; each runner casts them to its precision


def _one_input(graph: SNNGraph, role: str) -> AnalogInput:
    inputs = list(graph.of_type(AnalogInput))
    if len(inputs) != 1 or inputs[0].kind != "image":
        raise GraphError(f"{role}: a Spiking-Diffusion graph has one host-fed input, found {len(inputs)}")
    return inputs[0]


def _weighted_sum(w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sum_t w[t] y[t]`` of ``y [T, ...]``."""
    return torch.einsum("t,t...->...", w.to(y.dtype), y)


@dataclass(eq=False)
class SDIDHost:
    """The SDID's host side: input currents from tokens and t, ``logits = mean_t y[t]``."""

    T: int
    codebook_size: int  # K; the mask token is K
    steps: int  # S, the diffusion steps (t runs S .. 1)
    inputs: str = "raw"  # raw | onehot (sdm.train.sdid)

    role: ClassVar[str] = "sdid"

    def __post_init__(self):
        self.T = _integer("sdid host", "T", self.T, 1)
        self.codebook_size = _integer("sdid host", "codebook_size", self.codebook_size, 2)
        self.steps = _integer("sdid host", "steps", self.steps, 1)
        if self.inputs not in INPUTS:
            raise GraphError(f"sdid host: inputs must be one of {', '.join(INPUTS)}, got {self.inputs!r}")

    @property
    def in_channels(self) -> int:
        return 2 if self.inputs == "raw" else self.codebook_size + 2

    def currents(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, h, w]`` input of tokens ``x_t [B, h, w]`` (0..K, K = mask) at steps ``t [B]``."""
        K = self.codebook_size
        if x_t.dtype.is_floating_point or x_t.dim() != 3 or int(x_t.min()) < 0 or int(x_t.max()) > K:
            raise GraphError(f"sdid: tokens must be an integer [B, h, w] grid of 0..{K} (mask = {K})")
        B, h, w = x_t.shape
        tt = t.to(CURRENT_DTYPE).view(B, 1, 1, 1).expand(B, 1, h, w)
        if self.inputs == "raw":
            return torch.cat((x_t.to(CURRENT_DTYPE).unsqueeze(1), tt), 1)
        onehot = F.one_hot(x_t, K + 1).permute(0, 3, 1, 2).to(CURRENT_DTYPE)
        return torch.cat((onehot, tt / self.steps), 1)

    def readout(self, y: torch.Tensor) -> torch.Tensor:
        return y.mean(0)

    def metadata(self) -> dict:
        return {"T": self.T, "codebook_size": self.codebook_size, "steps": self.steps, "inputs": self.inputs}


@dataclass(eq=False)
class DecoderHost:
    """The decoder's host side: code vectors in, ``clamp(tanh(leaky sum) / data_scale, -1, 1)`` out."""

    T: int
    codebook: np.ndarray  # [K, D]
    readout_decay: float = 0.8
    data_scale: float = 0.5

    role: ClassVar[str] = "decoder"

    def __post_init__(self):
        self.T = _integer("decoder host", "T", self.T, 1)
        self.codebook = _array("decoder host", "codebook", self.codebook, ndim=2)
        self.readout_decay = _number("decoder host", "readout_decay", self.readout_decay, positive=True)
        self.data_scale = _number("decoder host", "data_scale", self.data_scale, positive=True)

    @property
    def codebook_size(self) -> int:
        return int(self.codebook.shape[0])

    def currents(self, tokens: torch.Tensor) -> torch.Tensor:
        """Code vectors ``[B, D, h, w]`` of ``tokens [B, h, w]`` (codes 0..K-1)."""
        K = self.codebook_size
        if tokens.dtype.is_floating_point or tokens.dim() != 3 or int(tokens.min()) < 0 or int(tokens.max()) >= K:
            raise GraphError(f"decoder: tokens must be an integer [B, h, w] grid of codes 0..{K - 1}")
        e = torch.as_tensor(self.codebook, dtype=CURRENT_DTYPE)
        return e[tokens].permute(0, 3, 1, 2)

    def weights(self) -> torch.Tensor:
        return self.readout_decay ** torch.arange(self.T - 1, -1, -1, dtype=torch.float64)

    def readout(self, y: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(_weighted_sum(self.weights(), y)) / self.data_scale).clamp(-1.0, 1.0)

    def metadata(self) -> dict:
        return {"T": self.T, "codebook": self.codebook, "readout_decay": self.readout_decay,
                "data_scale": self.data_scale}


@dataclass(eq=False)
class EncoderHost:
    """The encoder's host side: ``x * data_scale`` in, the nearest code of every position out."""

    weights: np.ndarray  # [T]: w[t] = (1 - alpha) decay^(T-1-t) + alpha / T
    bias: np.ndarray  # [K]: -|e_k|^2 / 2
    data_scale: float = 0.5

    role: ClassVar[str] = "encoder"

    def __post_init__(self):
        self.weights = _array("encoder host", "weights", self.weights, ndim=1)
        self.bias = _array("encoder host", "bias", self.bias, ndim=1)
        self.data_scale = _number("encoder host", "data_scale", self.data_scale, positive=True)

    @property
    def T(self) -> int:
        return int(self.weights.shape[0])

    def currents(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(CURRENT_DTYPE) * self.data_scale

    def readout(self, y: torch.Tensor) -> torch.Tensor:
        score = _weighted_sum(torch.as_tensor(self.weights, dtype=torch.float64), y.double())
        return (score + torch.as_tensor(self.bias, dtype=torch.float64).view(1, -1, 1, 1)).argmax(1)

    def metadata(self) -> dict:
        return {"weights": self.weights, "bias": self.bias, "data_scale": self.data_scale}


HOSTS = {cls.role: cls for cls in (SDIDHost, DecoderHost, EncoderHost)}


@dataclass(eq=False)
class Part:
    """One network of the model: its spiking graph and its host record."""

    graph: SNNGraph
    host: SDIDHost | DecoderHost | EncoderHost

    @property
    def role(self) -> str:
        return self.host.role

    @property
    def input(self) -> AnalogInput:
        return _one_input(self.graph, self.role)

    def check(self) -> None:
        """The record against the graph: T, and the shapes the host feeds and reads."""
        role, host, graph = self.role, self.host, self.graph
        if graph.host is not None:
            raise GraphError(f"{role}: a Spiking-Diffusion graph carries no UNet host section")
        c_in, c_out = self.input.shape[0], graph.output.shape[0]
        expect_in = {"sdid": lambda: host.in_channels, "decoder": lambda: host.codebook.shape[1]}.get(role)
        if expect_in is not None and c_in != expect_in():
            raise GraphError(f"{role}: input {self.input.name!r} has {c_in} channels, the host feeds {expect_in()}")
        expect_out = {"sdid": lambda: host.codebook_size, "encoder": lambda: host.bias.shape[0]}.get(role)
        if expect_out is not None and c_out != expect_out():
            raise GraphError(f"{role}: output has {c_out} channels, the host reads {expect_out()} (one per code)")


@dataclass(eq=False)
class SDGraphs:
    """A Spiking-Diffusion model as deployed: ``parts[role]`` for the roles it has (``decoder`` and
    ``encoder`` always; ``sdid`` for a generator, i.e. an absorbing checkpoint)."""

    parts: dict[str, Part]
    meta: dict = field(default_factory=dict)  # provenance (checkpoint, kind), written to the file

    def __post_init__(self):
        for role, part in self.parts.items():
            if role not in ROLES:
                raise GraphError(f"unknown Spiking-Diffusion part {role!r} (known: {', '.join(ROLES)})")
            if not isinstance(part, Part) or part.role != role:
                raise GraphError(f"part {role!r} must hold a {HOSTS[role].__name__} record")
            part.check()
        for role in ("decoder", "encoder"):
            if role not in self.parts:
                raise GraphError(f"a Spiking-Diffusion model needs a {role} part")
        self._check_codec()
        if "sdid" in self.parts:
            self._check_generator()

    def _check_codec(self) -> None:
        """The encoder writes the tokens the decoder reads: the same codes, grid and spiking steps."""
        enc, dec = self.parts["encoder"], self.parts["decoder"]
        if enc.host.bias.shape[0] != dec.host.codebook_size:
            raise GraphError(f"the encoder scores {enc.host.bias.shape[0]} codes, the decoder's codebook has "
                             f"{dec.host.codebook_size}")
        if enc.graph.output.shape[1:] != dec.input.shape[1:]:
            raise GraphError(f"the encoder's token grid {list(enc.graph.output.shape[1:])} differs from the "
                             f"decoder's {list(dec.input.shape[1:])}")
        if enc.host.T != dec.host.T:
            raise GraphError(f"the encoder runs T = {enc.host.T} steps, the decoder T = {dec.host.T}")

    def _check_generator(self) -> None:
        sdid, dec = self.parts["sdid"], self.parts["decoder"]
        if sdid.host.codebook_size != dec.host.codebook_size:
            raise GraphError(f"sdid predicts {sdid.host.codebook_size} codes, the decoder's codebook has "
                             f"{dec.host.codebook_size}")
        if sdid.input.shape[1:] != dec.input.shape[1:]:
            raise GraphError(f"sdid token grid {list(sdid.input.shape[1:])} differs from the decoder's "
                             f"{list(dec.input.shape[1:])}")

    @property
    def generator(self) -> bool:
        return "sdid" in self.parts

    @property
    def token_shape(self) -> tuple[int, int]:
        return tuple(self.parts["decoder"].input.shape[1:])

    def __getitem__(self, role: str) -> Part:
        if role not in self.parts:
            raise GraphError(f"this Spiking-Diffusion model has no {role} part (parts: {', '.join(self.parts)})")
        return self.parts[role]


def leaky_rate_weights(T: int, decay: float, alpha: float) -> np.ndarray:
    """``w[t] = (1 - alpha) decay^(T-1-t) + alpha / T``: the VQ-SVAE feature as one weighted sum."""
    if not (math.isfinite(alpha) and math.isfinite(decay)):
        raise GraphError(f"encoder readout: alpha {alpha} and decay {decay} must be finite")
    t = np.arange(T - 1, -1, -1, dtype=np.float64)
    return (1.0 - alpha) * decay ** t + alpha / T
