"""Samplers: which diffusion steps a reverse chain visits and how it steps, as one object each.

A sampler is built from a :class:`~sdm.train.diffusion.GaussianDiffusion` (the schedule of a
checkpoint or of a NIR file's host section).  ``pairs()`` lists the denoiser calls as
``(t, s)``: the call at step ``t`` moves the sample to step ``s`` (``s = -1``: the final step to
``x_0``); ``step(x, t, s, eps, noise)`` is that move given the model's ``eps`` and a standard
normal ``noise`` (None where ``needs_noise(t, s)`` is false).  :func:`denoise` is the one loop
that drives any denoiser with any sampler; the Lava simulation drives two trajectories in
lockstep with the same ``pairs`` and ``step``.  A new sampler is one subclass and one entry in
``SAMPLERS``.

Multistep solvers keep the model outputs of earlier calls: a sampler instance drives one
trajectory at a time, from ``reset()`` (which :func:`denoise` calls) to the final step; a
second trajectory in lockstep uses its own copy (``copy.deepcopy``).

The samplers of SDM's Table 1 / Table 6:

* ``ddpm``: ancestral sampling over all steps (Ho et al. 2020);
* ``ddim``: DDIM over ``K`` uniformly spaced steps, stochasticity ``eta`` (Song et al. 2021);
* ``dpm-solver`` / ``dpm-solver++``: multistep DPM-Solver of order 1-3 on the noise prediction,
  and DPM-Solver++ on the data prediction (Lu et al. 2022), on the DDIM grid;
* ``analytic-ddpm`` / ``analytic-ddim``: the DDPM (``eta = 1``) or DDIM (``eta = 0``) mean on the
  DDIM grid with Analytic-DPM's optimal variance from the model's moments (Bao et al. 2022).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable

import torch

from sdm.errors import ConfigError

from .diffusion import Denoiser, GaussianDiffusion
from .moments import Moments


class Sampler(ABC):
    """The timesteps of a reverse chain and its step rule (module docstring)."""

    name = ""

    def __init__(self, diffusion: GaussianDiffusion, clip: bool = True):
        self.diffusion = diffusion
        self.clip = clip

    def reset(self) -> None:  # noqa: B027 (a hook: most samplers keep no state)
        """Start a new trajectory (multistep solvers forget their history)."""

    @property
    @abstractmethod
    def timesteps(self) -> list[int]:
        """The diffusion steps at which the denoiser is called, in calling (descending) order."""

    def pairs(self, limit: int | None = None) -> list[tuple[int, int]]:
        """``(t, s)`` of each call (the first ``limit`` of them): from step ``t`` to step ``s``."""
        ts = self.timesteps
        pairs = list(zip(ts, ts[1:] + [-1]))
        return pairs if limit is None else pairs[:limit]

    @abstractmethod
    def needs_noise(self, t: int, s: int) -> bool:
        """Whether the move from ``t`` to ``s`` draws fresh noise."""

    @abstractmethod
    def step(self, x: torch.Tensor, t: int, s: int, eps: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """``x_s`` from ``x_t`` and the model's ``eps``."""


class DDPMSampler(Sampler):
    """Ancestral sampling over every step of the schedule (``t -> t - 1``); variance
    ``fixedlarge`` (beta_t, the reference's) or ``fixedsmall`` (the posterior's)."""

    name = "ddpm"

    def __init__(self, diffusion: GaussianDiffusion, var_type: str = "fixedlarge", clip: bool = True):
        super().__init__(diffusion, clip)
        if var_type not in ("fixedlarge", "fixedsmall"):
            raise ConfigError(f"unknown var_type {var_type!r} (fixedlarge|fixedsmall)")
        self.var_type = var_type

    @property
    def timesteps(self) -> list[int]:
        return list(range(self.diffusion.steps - 1, -1, -1))

    def needs_noise(self, t: int, s: int) -> bool:
        return t > 0

    def step(self, x, t, s, eps, noise):
        return self.diffusion.ddpm_step(x, t, eps, noise, var_type=self.var_type, clip=self.clip)


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021) over ``num_steps`` uniformly spaced steps, stochasticity ``eta``."""

    name = "ddim"

    def __init__(self, diffusion: GaussianDiffusion, num_steps: int = 50, eta: float = 0.0, clip: bool = True):
        super().__init__(diffusion, clip)
        if not eta >= 0.0:
            raise ConfigError(f"DDIM eta must be >= 0, got {eta}")
        self._timesteps = diffusion.ddim_timesteps(num_steps)
        self.eta = float(eta)

    @property
    def timesteps(self) -> list[int]:
        return list(self._timesteps)

    def needs_noise(self, t: int, s: int) -> bool:
        return self.eta > 0 and s >= 0

    def step(self, x, t, s, eps, noise):
        return self.diffusion.ddim_step(x, t, s, eps, noise, eta=self.eta, clip=self.clip)


def _alpha_sigma_lambda(diffusion: GaussianDiffusion, t: int) -> tuple[float, float, float]:
    """``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)`` and the half log-SNR ``lambda_t``."""
    abar = float(diffusion.abar[t])
    alpha, sigma = abar ** 0.5, (1.0 - abar) ** 0.5
    return alpha, sigma, math.log(alpha) - math.log(sigma)


class DPMSolverSampler(Sampler):
    """Multistep DPM-Solver (Lu et al. 2022) of order 1-3 on the DDIM grid, deterministic.

    With ``h = lambda_s - lambda_t`` and the differences ``D1, D2`` of the last model outputs
    (``r_k = h_k / h``, the earlier steps' log-SNR widths), the noise-prediction solver takes::

        x_s = (alpha_s/alpha_t) x_t - sigma_s (e^h - 1) D0 - sigma_s ((e^h - 1)/h - 1) D1
              - sigma_s ((e^h - 1 - h)/h^2 - 1/2) D2                       (order 3; 2: midpoint D1/2)

    and ``plus=True`` (DPM-Solver++) the data-prediction one::

        x_s = (sigma_s/sigma_t) x_t - alpha_s (e^-h - 1) D0 + alpha_s ((e^-h - 1)/h + 1) D1
              - alpha_s ((e^-h - 1 + h)/h^2 - 1/2) D2                      (order 3; 2: -alpha_s (e^-h - 1) D1/2)

    Order 1 of either is DDIM.  The first steps use the orders their history allows, and with
    fewer than 15 steps the last steps lower the order (the authors' advice for few steps).  The
    model's output is used through the (clipped, with ``clip``) ``x_0`` prediction, as in DDIM;
    the final step returns it.  ``grid="logsnr"`` (default; the authors' choice for low-resolution
    images) spaces the steps uniformly in lambda, ``"time"`` uses DDIM's grid.
    """

    name = "dpm-solver"

    def __init__(self, diffusion: GaussianDiffusion, num_steps: int = 20, order: int = 2, plus: bool = False,
                 clip: bool = True, grid: str = "logsnr"):
        super().__init__(diffusion, clip)
        if order not in (1, 2, 3):
            raise ConfigError(f"DPM-Solver order must be 1, 2 or 3, got {order}")
        if grid not in ("logsnr", "time"):
            raise ConfigError(f"DPM-Solver grid must be logsnr or time, got {grid!r}")
        self._timesteps = diffusion.logsnr_timesteps(num_steps) if grid == "logsnr" else \
            diffusion.ddim_timesteps(num_steps)
        self.order, self.plus = order, plus
        self.name = "dpm-solver++" if plus else "dpm-solver"
        self.reset()

    @property
    def timesteps(self) -> list[int]:
        return list(self._timesteps)

    def reset(self) -> None:
        self._history: list[tuple[float, torch.Tensor]] = []  # (lambda_t, model output) of earlier calls

    def needs_noise(self, t: int, s: int) -> bool:
        return False

    def _order_now(self) -> int:
        calls = len(self._timesteps)
        i = len(self._history) - 1  # index of the current call
        order = min(self.order, i + 1)
        return min(order, calls - i) if calls < 15 else order

    def step(self, x, t, s, eps, noise):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0 = self.diffusion.predict_x0(x, tt, eps, self.clip)
        a_t, sig_t, lam_t = _alpha_sigma_lambda(self.diffusion, t)
        self._history.append((lam_t, x0 if self.plus else (x - a_t * x0) / sig_t))
        if s < 0:
            return x0
        a_s, sig_s, lam_s = _alpha_sigma_lambda(self.diffusion, s)
        h = lam_s - lam_t
        d0, d1, d2 = self._differences(self._order_now(), h)
        if self.plus:
            e = math.expm1(-h)
            out = (sig_s / sig_t) * x - a_s * e * d0
            if d2 is None:
                return out - 0.5 * a_s * e * d1 if d1 is not None else out
            return out + a_s * (e / h + 1.0) * d1 - a_s * ((e + h) / h ** 2 - 0.5) * d2
        e = math.expm1(h)
        out = (a_s / a_t) * x - sig_s * e * d0
        if d2 is None:
            return out - 0.5 * sig_s * e * d1 if d1 is not None else out
        return out - sig_s * (e / h - 1.0) * d1 - sig_s * ((e - h) / h ** 2 - 0.5) * d2

    def _differences(self, order: int, h: float):
        """``D0`` and, for order 2/3, the scaled first and second differences of the history."""
        (lam0, m0) = self._history[-1]
        if order == 1:
            return m0, None, None
        lam1, m1 = self._history[-2]
        r0 = (lam0 - lam1) / h
        d1_0 = (m0 - m1) / r0
        if order == 2:
            return m0, d1_0, None
        lam2, m2 = self._history[-3]
        r1 = (lam1 - lam2) / h
        d1_1 = (m1 - m2) / r1
        return m0, d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)


class AnalyticSampler(Sampler):
    """Analytic-DPM (Bao et al. 2022): the DDIM-family mean on the DDIM grid (``eta = 1``: the
    DDPM posterior mean, ``eta = 0``: DDIM's) with the optimal variance given the model's moment
    ``Gamma_t`` (:mod:`sdm.train.moments`)::

        sigma^2 = lambda^2 + (sqrt(abar_s) - sqrt((1 - abar_s - lambda^2) abar_t / (1 - abar_t)))^2
                  * clip((1 - abar_t) / abar_t * (1 - Gamma_t), 0, 1)

    with ``lambda^2 = eta^2 (1 - abar_s)/(1 - abar_t) (1 - abar_t/abar_s)`` the family's own variance;
    the clip bounds the posterior variance of ``x_0`` by that of data in [-1, 1].  As in the
    paper, the last noisy step's standard deviation is clipped so that its mean absolute noise is
    at most ``clip_pixel`` pixel bins: ``sigma <= clip_pixel * 2/255 * sqrt(pi/2)`` (0: no clip).
    """

    def __init__(self, diffusion: GaussianDiffusion, moments: Moments | None, num_steps: int = 50,
                 eta: float = 1.0, clip: bool = True, clip_pixel: float = 2.0):
        super().__init__(diffusion, clip)
        self.name = "analytic-ddpm" if eta > 0 else "analytic-ddim"
        if moments is None:
            raise ConfigError(f"{self.name} needs the model's moments: estimate them once with `sdm moments "
                              "MODEL.pt --data SPEC`")
        if moments.timesteps[-1] >= diffusion.steps:
            raise ConfigError(f"moments reach timestep {moments.timesteps[-1]}, the schedule has {diffusion.steps}")
        self.moments, self.eta, self.clip_pixel = moments, float(eta), float(clip_pixel)
        self._timesteps = diffusion.ddim_timesteps(num_steps)

    @property
    def timesteps(self) -> list[int]:
        return list(self._timesteps)

    def needs_noise(self, t: int, s: int) -> bool:
        return s >= 0

    def variance(self, t: int, s: int) -> float:
        a_t, a_s = float(self.diffusion.abar[t]), float(self.diffusion.abar[s])
        lam2 = self.eta ** 2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        cov_x0 = min(max((1 - a_t) / a_t * (1 - self.moments.at(t)), 0.0), 1.0)
        coef = (a_s ** 0.5 - (max(1 - a_s - lam2, 0.0) * a_t / (1 - a_t)) ** 0.5) ** 2
        var = lam2 + coef * cov_x0
        if self.clip_pixel > 0 and s == self._timesteps[-1]:  # the last step that adds noise
            var = min(var, (self.clip_pixel * 2.0 / 255.0 * (math.pi / 2.0) ** 0.5) ** 2)
        return var

    def step(self, x, t, s, eps, noise):
        if s < 0:
            return self.diffusion.ddim_step(x, t, s, eps, None, clip=self.clip)
        mean = self.diffusion.ddim_step(x, t, s, eps, torch.zeros_like(x), eta=self.eta, clip=self.clip)
        return mean + self.variance(t, s) ** 0.5 * noise


SAMPLERS = ("ddpm", "ddim", "dpm-solver", "dpm-solver++", "analytic-ddpm", "analytic-ddim")


def make_sampler(name: str, diffusion: GaussianDiffusion, steps: int = 50, eta: float = 0.0,
                 var_type: str = "fixedlarge", clip: bool = True, order: int = 2,
                 moments: Moments | None = None) -> Sampler:
    """The sampler called ``name`` (``SAMPLERS``): ``ddim`` over ``steps`` steps with ``eta``;
    ``ddpm`` over the whole schedule (``steps`` is then ignored; :meth:`Sampler.pairs` with a
    limit takes a prefix); ``dpm-solver[++]`` of ``order`` over ``steps``; ``analytic-ddpm|ddim``
    over ``steps`` with the model's ``moments``."""
    if name == "ddim":
        return DDIMSampler(diffusion, steps, eta=eta, clip=clip)
    if name == "ddpm":
        return DDPMSampler(diffusion, var_type=var_type, clip=clip)
    if name in ("dpm-solver", "dpm-solver++"):
        return DPMSolverSampler(diffusion, steps, order=order, plus=name == "dpm-solver++", clip=clip)
    if name in ("analytic-ddpm", "analytic-ddim"):
        return AnalyticSampler(diffusion, moments, steps, eta=1.0 if name == "analytic-ddpm" else 0.0, clip=clip)
    raise ConfigError(f"unknown sampler {name!r} ({'|'.join(SAMPLERS)})")


OnCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def denoise(denoiser: Denoiser, sampler: Sampler, x: torch.Tensor, generator: torch.Generator | None = None,
            limit: int | None = None, progress: bool = False, on_call: OnCall | None = None) -> torch.Tensor:
    """Run the reverse chain from ``x`` (the first ``limit`` calls of it); returns the last ``x``.

    Noise is drawn from ``generator`` after each call, where the step needs it; ``on_call(x_t, t, eps)``
    sees every call's input and output (energy counts record trajectories with it)."""
    from tqdm.auto import tqdm

    sampler.reset()
    for t, s in tqdm(sampler.pairs(limit), desc=sampler.name, disable=not progress, leave=False):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = denoiser(x, tt)
        if on_call is not None:
            on_call(x, tt, eps)
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator) \
            if sampler.needs_noise(t, s) else None
        x = sampler.step(x, t, s, eps, noise)
    return x


@torch.no_grad()
def sample(denoiser: Denoiser, diffusion: GaussianDiffusion, shape, sampler: str = "ddim", steps: int = 50,
           eta: float = 0.0, var_type: str = "fixedlarge", clip: bool = True,
           generator: torch.Generator | None = None, device: torch.device | str = "cpu", progress: bool = False,
           x_T: torch.Tensor | None = None, order: int = 2, moments: Moments | None = None) -> torch.Tensor:
    """Draw samples in [-1, 1] with the sampler called ``sampler`` (:func:`make_sampler`)."""
    chain = make_sampler(sampler, diffusion, steps, eta=eta, var_type=var_type, clip=clip, order=order,
                         moments=moments)
    shape = tuple(shape)
    x = x_T.to(device) if x_T is not None else torch.randn(shape, device=device, generator=generator)
    return denoise(denoiser, chain, x, generator, progress=progress).clamp(-1.0, 1.0)
