"""The model's own noise moment ``Gamma_t = E ||eps_theta(x_t, t)||^2 / d`` (Analytic-DPM).

Bao et al. (2022) show that the optimal reverse variance of a diffusion model follows from
this one number per timestep, estimated by Monte Carlo: noise training images to ``x_t``,
run the denoiser, average the squared output.  ``sdm moments`` estimates it on a grid of
timesteps once and stores it in the checkpoint (``moments``) and from there in the NIR host
section; :class:`~sdm.train.samplers.AnalyticSampler` reads it, linearly interpolated between
grid points.

For data ``x_0 ~ N(mu, s^2 I)`` the optimal predictor gives ``Gamma_t = (1 - abar_t) /
(abar_t s^2 + 1 - abar_t)`` exactly: the tests check the estimator against it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch

from sdm.errors import ConfigError

from .diffusion import Denoiser, GaussianDiffusion


@dataclass(eq=False)
class Moments:
    """``gamma[i] = E ||eps(x_t, t)||^2 / d`` at ``timesteps[i]`` (ascending), from ``n`` images of ``data``."""

    timesteps: np.ndarray  # int, ascending, within the schedule
    gamma: np.ndarray  # float, same length
    n: int = 0
    data: str = ""

    def __post_init__(self):
        steps = _numbers("timesteps", self.timesteps, "iuf")
        if steps.dtype.kind == "f" and not np.all(np.isfinite(steps) & (steps == np.round(steps))):
            raise ConfigError("moments: timesteps must be integers")
        self.timesteps = steps.astype(np.int64)
        self.gamma = _numbers("gamma", self.gamma, "iuf").astype(np.float64)
        if isinstance(self.n, bool) or not isinstance(self.n, numbers.Integral) or self.n < 0:
            raise ConfigError(f"moments: n must be a non-negative integer, got {self.n!r}")
        self.n = int(self.n)
        if not isinstance(self.data, str):
            raise ConfigError(f"moments: data must be a string, got {self.data!r}")
        if self.timesteps.size < 1 or self.timesteps.shape != self.gamma.shape:
            raise ConfigError(f"moments: {self.timesteps.size} timesteps but {self.gamma.size} values")
        if np.any(np.diff(self.timesteps) <= 0) or self.timesteps[0] < 0:
            raise ConfigError("moments: timesteps must be non-negative and strictly ascending")
        if not np.all(np.isfinite(self.gamma)) or np.any(self.gamma < 0):
            raise ConfigError("moments: gamma values must be finite and non-negative")

    def check_schedule(self, steps: int) -> None:
        """Refuse moments measured at timesteps the schedule of ``steps`` steps does not have."""
        if int(self.timesteps[-1]) >= steps:
            raise ConfigError(f"moments: timestep {int(self.timesteps[-1])} is outside the schedule's {steps} steps")

    def at(self, t: int) -> float:
        """Gamma at timestep ``t`` (linear interpolation; constant beyond the grid's ends)."""
        return float(np.interp(t, self.timesteps, self.gamma))

    def to_dict(self) -> dict:
        return {"timesteps": torch.from_numpy(self.timesteps.copy()), "gamma": torch.from_numpy(self.gamma.copy()),
                "n": int(self.n), "data": str(self.data)}

    @classmethod
    def from_dict(cls, d: dict) -> "Moments":
        if not isinstance(d, dict):
            raise ConfigError(f"moments: expected a record of timesteps, gamma, n, data, got {type(d).__name__}")
        missing = [k for k in ("timesteps", "gamma") if k not in d]
        if missing:
            raise ConfigError(f"moments: incomplete record (no {', '.join(missing)})")
        unknown = sorted(set(d) - {"timesteps", "gamma", "n", "data"})
        if unknown:
            raise ConfigError(f"moments: unknown fields {unknown}")
        return cls(_as_array(d["timesteps"]), _as_array(d["gamma"]), d.get("n", 0), d.get("data", ""))


def _as_array(v):
    """A tensor or sequence as a numpy array; anything else unchanged (``_numbers`` refuses it)."""
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return v


def _numbers(name: str, v, kinds: str) -> np.ndarray:
    """``v`` as a 1-D numpy array whose dtype kind is one of ``kinds`` ("i", "u": integers, "f": floats)."""
    try:
        a = np.asarray(v).reshape(-1)
    except (TypeError, ValueError):
        a = np.asarray([object()])
    if a.dtype.kind not in kinds:
        raise ConfigError(f"moments: {name} must be an array of numbers, got {type(v).__name__} of {a.dtype}")
    return a


def checkpoint_moments(ckpt: dict) -> Moments | None:
    """The moments a checkpoint carries (``sdm moments`` stores them), or None."""
    raw = ckpt.get("moments")
    return None if raw is None else Moments.from_dict(raw)


def moment_grid(diffusion: GaussianDiffusion, points: int) -> list[int]:
    """``points`` timesteps spread uniformly over the schedule, both ends included, ascending."""
    if not 2 <= points <= diffusion.steps:
        raise ConfigError(f"moment grid points must be in [2, {diffusion.steps}], got {points}")
    return sorted(diffusion.ddim_timesteps(points))


@torch.no_grad()
def estimate_moments(denoiser: Denoiser, diffusion: GaussianDiffusion, images: torch.Tensor, timesteps: list[int],
                     batch_size: int = 64, generator: torch.Generator | None = None, progress: bool = False,
                     data: str = "") -> Moments:
    """Monte-Carlo estimate of Gamma at ``timesteps`` from ``images`` [N, C, H, W] in [-1, 1]
    (every image at every timestep, fresh noise each time)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    gamma = []
    for t in tqdm(timesteps, desc="moments", disable=not progress, dynamic_ncols=True):
        total, count = 0.0, 0
        for i in range(0, len(images), batch_size):
            x0 = images[i:i + batch_size]
            tt = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=x0.device)
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
            eps = denoiser(diffusion.q_sample(x0, tt, noise), tt)
            total += float(eps.double().pow(2).sum())
            count += eps.numel()
        gamma.append(total / count)
    return Moments(np.asarray(timesteps), np.asarray(gamma), n=len(images), data=data)
