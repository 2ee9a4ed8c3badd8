"""Samplers: which diffusion steps a reverse chain visits and how it steps, as one object each.

A sampler is built from a :class:`~sdm.train.diffusion.GaussianDiffusion` (the schedule of a
checkpoint or of a NIR file's host section).  ``pairs()`` lists the denoiser calls as
``(t, s)``: the call at step ``t`` moves the sample to step ``s`` (``s = -1``: the final step to
``x_0``); ``step(x, t, s, eps, noise)`` is that move given the model's ``eps`` and a standard
normal ``noise`` (None where ``needs_noise(t, s)`` is false).  :func:`denoise` is the one loop
that drives any denoiser with any sampler; the Lava simulation drives two trajectories in
lockstep with the same ``pairs`` and ``step``.  A new sampler is one subclass and one entry in
``SAMPLERS``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch

from sdm.errors import ConfigError

from .diffusion import Denoiser, GaussianDiffusion


class Sampler(ABC):
    """The timesteps of a reverse chain and its step rule (module docstring)."""

    name = ""

    def __init__(self, diffusion: GaussianDiffusion, clip: bool = True):
        self.diffusion = diffusion
        self.clip = clip

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


SAMPLERS: dict[str, type[Sampler]] = {"ddpm": DDPMSampler, "ddim": DDIMSampler}


def make_sampler(name: str, diffusion: GaussianDiffusion, steps: int = 50, eta: float = 0.0,
                 var_type: str = "fixedlarge", clip: bool = True) -> Sampler:
    """The sampler called ``name``: ``ddim`` over ``steps`` steps with ``eta``, or ``ddpm`` over
    the whole schedule (``steps`` is then ignored; :meth:`Sampler.pairs` with a limit takes a prefix)."""
    if name == "ddim":
        return DDIMSampler(diffusion, steps, eta=eta, clip=clip)
    if name == "ddpm":
        return DDPMSampler(diffusion, var_type=var_type, clip=clip)
    raise ConfigError(f"unknown sampler {name!r} ({'|'.join(SAMPLERS)})")


OnCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def denoise(denoiser: Denoiser, sampler: Sampler, x: torch.Tensor, generator: torch.Generator | None = None,
            limit: int | None = None, progress: bool = False, on_call: OnCall | None = None) -> torch.Tensor:
    """Run the reverse chain from ``x`` (the first ``limit`` calls of it); returns the last ``x``.

    Noise is drawn from ``generator`` after each call, where the step needs it; ``on_call(x_t, t, eps)``
    sees every call's input and output (energy counts record trajectories with it)."""
    from tqdm.auto import tqdm

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
           x_T: torch.Tensor | None = None) -> torch.Tensor:
    """Draw samples in [-1, 1] with DDPM (always ``diffusion.steps`` steps) or DDIM(``steps``, eta)."""
    chain = make_sampler(sampler, diffusion, steps, eta=eta, var_type=var_type, clip=clip)
    shape = tuple(shape)
    x = x_T.to(device) if x_T is not None else torch.randn(shape, device=device, generator=generator)
    return denoise(denoiser, chain, x, generator, progress=progress).clamp(-1.0, 1.0)
