"""Gaussian diffusion: noise schedule, training loss and samplers.

Nothing here knows about spikes: any callable ``eps = denoiser(x_t, t)`` plugs in.  The
samplers that walk the reverse chain with these steps are in :mod:`sdm.train.samplers`.
Notation (Ho et al. 2020; Song et al. 2021)::

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s<=t} (1 - beta_s)
    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)

DDPM ancestral step (t -> t-1)::

    mean = c0_t x0_hat + ct_t x_t,   c0_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t),
                                     ct_t = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)
    var  = beta_t (1 - abar_{t-1}) / (1 - abar_t)   ("fixedsmall")  or  beta_t ("fixedlarge",
           the reference's default); no noise is added on the last step (t = 0)

DDIM step (t -> s < t, eta in [0, 1])::

    sigma^2 = eta^2 (1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s)
    x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z

With S = 1000 steps and eta = 1, DDIM's sigma^2 equals DDPM's fixedsmall variance and its
mean equals the DDPM posterior mean, which the tests check.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from sdm.errors import ConfigError

from .config import strict_from_dict

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ScheduleConfig:
    """The linear beta schedule: ``beta_t`` from ``beta_start`` to ``beta_end`` over ``steps`` steps.
    Stored in every checkpoint (``diffusion``) and NIR file (``host/schedule``)."""

    steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral) or self.steps < 1:
            raise ConfigError(f"diffusion steps must be a positive integer, got {self.steps!r}")
        for name in ("beta_start", "beta_end"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), numbers.Real):
                raise ConfigError(f"diffusion {name} must be a number, got {getattr(self, name)!r}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ConfigError(f"invalid diffusion schedule {self}: need 0 < beta_start <= beta_end < 1")

    @classmethod
    def from_dict(cls, d: dict) -> "ScheduleConfig":
        """The schedule of a ``diffusion`` section (checkpoint, config file); unknown keys are refused."""
        if not isinstance(d, dict):
            raise ConfigError(f"the diffusion section must be a mapping of steps, beta_start, beta_end, "
                              f"got {type(d).__name__}")
        return strict_from_dict(cls, d, "diffusion")


class GaussianDiffusion:
    """Linear-beta schedule with the quantities the loss and samplers need (float64 on host)."""

    def __init__(self, cfg: ScheduleConfig = ScheduleConfig()):
        self.cfg = cfg
        self.steps = cfg.steps
        self.betas = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.steps, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.abar = torch.cumprod(self.alphas, 0)
        self.abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.abar[:-1]])
        self.posterior_var = self.betas * (1.0 - self.abar_prev) / (1.0 - self.abar)
        self.coef_x0 = self.betas * self.abar_prev.sqrt() / (1.0 - self.abar)
        self.coef_xt = (1.0 - self.abar_prev) * self.alphas.sqrt() / (1.0 - self.abar)

    @staticmethod
    def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    # ----- training -------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._gather(self.abar.sqrt(), t, x0) * x0 + self._gather((1 - self.abar).sqrt(), t, x0) * noise

    def diffuse(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        """A training input: ``(x_t, t, noise)`` at uniformly drawn t (t drawn first, then noise)."""
        t = torch.randint(0, self.steps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return self.q_sample(x0, t, noise), t, noise

    def loss(self, denoiser: Denoiser, x0: torch.Tensor, generator: torch.Generator | None = None,
             teacher: Denoiser | None = None, teacher_weight: float = 0.0) -> torch.Tensor:
        """epsilon-prediction MSE at uniformly drawn t; with a ``teacher`` (distillation)
        ``(1 - w) * MSE(eps, noise) + w * MSE(eps, teacher(x_t, t))``, ``w = teacher_weight``: the teacher's
        eps estimates E[noise | x_t], a target of far lower variance than the noise itself."""
        x_t, t, noise = self.diffuse(x0, generator)
        eps = denoiser(x_t, t)
        if teacher is None or teacher_weight <= 0:
            return F.mse_loss(eps, noise)
        with torch.no_grad():
            target = teacher(x_t, t).to(eps.dtype)
        return (1.0 - teacher_weight) * F.mse_loss(eps, noise) + teacher_weight * F.mse_loss(eps, target)

    # ----- sampling -------------------------------------------------------------------
    def predict_x0(self, x_t, t, eps, clip: bool) -> torch.Tensor:
        x0 = (x_t - self._gather((1 - self.abar).sqrt(), t, x_t) * eps) / self._gather(self.abar.sqrt(), t, x_t)
        return x0.clamp(-1.0, 1.0) if clip else x0

    def ddpm_step(self, x_t, t: int, eps, noise, var_type: str = "fixedlarge", clip: bool = True):
        """One ancestral step t -> t-1 given the model's eps and a standard normal ``noise``."""
        tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        x0 = self.predict_x0(x_t, tt, eps, clip)
        mean = self._gather(self.coef_x0, tt, x_t) * x0 + self._gather(self.coef_xt, tt, x_t) * x_t
        if t == 0:
            return mean
        if var_type == "fixedsmall":
            var = self.posterior_var[t]
        elif var_type == "fixedlarge":
            var = self.betas[t]
        else:
            raise ConfigError(f"unknown var_type {var_type!r} (fixedlarge|fixedsmall)")
        return mean + float(var.sqrt()) * noise

    def ddim_timesteps(self, num_steps: int) -> list[int]:
        if not 1 <= num_steps <= self.steps:
            raise ConfigError(f"DDIM steps must be in [1, {self.steps}], got {num_steps}")
        # uniform spacing including t = 0; descending order
        ts = torch.linspace(0, self.steps - 1, num_steps).round().long().unique()
        return ts.flip(0).tolist()

    def logsnr_timesteps(self, num_steps: int) -> list[int]:
        """Up to ``num_steps`` timesteps (descending, from ``steps - 1`` to 0) uniform in the half log-SNR
        ``lambda_t = log(sqrt(abar_t) / sqrt(1 - abar_t))``: DPM-Solver's grid for low-resolution images."""
        if not 2 <= num_steps <= self.steps:
            raise ConfigError(f"sampling steps must be in [2, {self.steps}] for a log-SNR grid, got {num_steps}")
        lam = 0.5 * (self.abar.log() - (1.0 - self.abar).log())
        targets = torch.linspace(float(lam[-1]), float(lam[0]), num_steps, dtype=torch.float64)
        ts = (lam[None, :] - targets[:, None]).abs().argmin(dim=1).unique()
        return ts.flip(0).tolist()

    def ddim_step(self, x_t, t: int, s: int, eps, noise, eta: float = 0.0, clip: bool = True):
        """One DDIM step t -> s (s = -1 means the final step to x_0)."""
        tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        x0 = self.predict_x0(x_t, tt, eps, clip)
        if s < 0:
            return x0
        a_t, a_s = float(self.abar[t]), float(self.abar[s])
        sigma2 = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        # eps consistent with the (possibly clipped) x0, so that x0 and eps describe the same x_t
        eps_hat = (x_t - a_t**0.5 * x0) / (1 - a_t) ** 0.5
        x_s = a_s**0.5 * x0 + max(1 - a_s - sigma2, 0.0) ** 0.5 * eps_hat
        return x_s + sigma2**0.5 * noise if eta > 0 else x_s
