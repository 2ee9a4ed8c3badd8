"""Samplers against a closed-form case: data ~ N(mu, s^2 I) has an exact optimal eps-predictor,
an exact probability-flow map and an exact moment Gamma_t."""

from __future__ import annotations

import math

import pytest
import torch

from sdm.errors import ConfigError
from sdm.train.diffusion import GaussianDiffusion
from sdm.train.moments import Moments, estimate_moments, moment_grid
from sdm.train.samplers import AnalyticSampler, DPMSolverSampler, denoise, make_sampler

MU, S, D = 0.3, 0.5, 64
DIFF = GaussianDiffusion()


def optimal_eps(x, t):
    """E[eps | x_t] for x_0 ~ N(MU, S^2 I)."""
    abar = DIFF.abar[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return (1 - abar).sqrt() * (x - abar.sqrt() * MU) / (abar * S ** 2 + 1 - abar)


def exact_gamma(t: int) -> float:
    abar = float(DIFF.abar[t])
    return (1 - abar) / (abar * S ** 2 + 1 - abar)


def exact_flow(x_T: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE from t = 999 to t = 0 (a per-coordinate affine map for Gaussian data),
    then the samplers' final step to x_0 (the x_0 prediction at t = 0)."""
    def std(t):
        abar = float(DIFF.abar[t])
        return abar ** 0.5, (abar * S ** 2 + 1 - abar) ** 0.5

    (a_T, s_T), (a_0, s_0) = std(999), std(0)
    x_0 = a_0 * MU + s_0 * (x_T - a_T * MU) / s_T
    t0 = torch.zeros(x_T.shape[0], dtype=torch.long)
    return DIFF.predict_x0(x_0, t0, optimal_eps(x_0, t0), clip=False)


def run(name, steps, x_T, grid=None, **kw):
    chain = make_sampler(name, DIFF, steps, clip=False, **kw)
    if grid is not None:
        chain = DPMSolverSampler(DIFF, steps, order=kw.get("order", 2), plus=name == "dpm-solver++", clip=False,
                                 grid=grid)
    return denoise(optimal_eps, chain, x_T.clone(), torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(256, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_dpm_solver_order_1_is_ddim(x_T):
    for plus in (False, True):
        name = "dpm-solver++" if plus else "dpm-solver"
        torch.testing.assert_close(run(name, 10, x_T, order=1, grid="time"), run("ddim", 10, x_T), rtol=1e-10,
                                   atol=1e-10)


def test_many_steps_agree_and_few_steps_are_more_accurate(x_T):
    exact = exact_flow(x_T)
    many_ddim, many_dpm = run("ddim", 500, x_T), run("dpm-solver", 500, x_T, order=2, grid="time")
    assert (many_ddim - many_dpm).abs().max() < 0.02  # DDIM is first order: its own error is ~1e-2 here
    assert (many_dpm - exact).abs().max() < 1e-3 and (many_ddim - exact).abs().max() < 0.02
    assert (run("dpm-solver", 500, x_T, order=3, grid="time") - exact).abs().max() < 1e-4
    err = {name: float((run(solver, 10, x_T, order=order) - exact).abs().mean())
           for name, solver, order in [("ddim", "ddim", 1), ("dpm2", "dpm-solver", 2), ("dpm3", "dpm-solver", 3),
                                       ("dpm++2", "dpm-solver++", 2)]}
    assert max(err["dpm2"], err["dpm3"], err["dpm++2"]) < 0.5 * err["ddim"], err
    # and the sample distribution: std closer to S than DDIM's
    std = {k: float(run(*v, x_T, order=o).std()) for k, v, o in [("ddim", ("ddim", 10), 1),
                                                                 ("dpm3", ("dpm-solver", 10), 3)]}
    assert abs(std["dpm3"] - S) < abs(std["ddim"] - S), std


def test_moment_estimate_matches_the_closed_form():
    g = torch.Generator().manual_seed(3)
    images = MU + S * torch.randn(2000, D, generator=g, dtype=torch.float64)
    grid = moment_grid(DIFF, 11)
    assert grid[0] == 0 and grid[-1] == 999 and len(grid) == 11
    m = estimate_moments(optimal_eps, DIFF, images, grid, batch_size=500, generator=g)
    for t, gamma in zip(m.timesteps, m.gamma):
        assert gamma == pytest.approx(exact_gamma(int(t)), rel=0.03, abs=2e-3)
    assert m.n == 2000 and Moments.from_dict(m.to_dict()).at(500) == pytest.approx(m.at(500))
    assert min(m.gamma[0], m.gamma[1]) <= m.at(50) <= max(m.gamma[0], m.gamma[1])  # interpolated


def test_analytic_variances_lie_between_the_ddpm_bounds():
    m = Moments(list(range(1000)), [exact_gamma(t) for t in range(1000)])
    chain = AnalyticSampler(DIFF, m, 20, eta=1.0, clip_pixel=0)
    for t, s in chain.pairs()[:-1]:
        a_t, a_s = float(DIFF.abar[t]), float(DIFF.abar[s])
        lower = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)  # the strided DDPM posterior variance
        upper = (1 - a_t / a_s) / (a_t / a_s)  # Gamma = 0: beta / alpha of the stride
        assert lower <= chain.variance(t, s) <= upper * (1 + 1e-12)
    clipped = AnalyticSampler(DIFF, m, 20, eta=1.0)
    t, s = clipped.pairs()[-2]
    assert clipped.variance(t, s) <= (2 * 2 / 255 * math.sqrt(math.pi / 2)) ** 2 < chain.variance(t, s)


def test_analytic_samplers_draw_from_the_data_distribution(x_T):
    m = Moments(list(range(1000)), [exact_gamma(t) for t in range(1000)])
    for name in ("analytic-ddpm", "analytic-ddim"):
        x = run(name, 50, x_T, moments=m)
        assert float(x.mean()) == pytest.approx(MU, abs=0.02)
        assert float(x.std()) == pytest.approx(S, rel=0.05)


def test_refusals_are_one_line():
    with pytest.raises(ConfigError, match="sdm moments"):
        make_sampler("analytic-ddim", DIFF, 10)
    with pytest.raises(ConfigError, match="order"):
        DPMSolverSampler(DIFF, 10, order=4)
    with pytest.raises(ConfigError, match="ascending"):
        Moments([5, 3], [0.1, 0.2])
