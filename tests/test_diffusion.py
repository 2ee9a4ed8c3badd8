"""Diffusion schedule and samplers, checked with an analytic denoiser."""

import pytest
import torch

from sdm.train.diffusion import GaussianDiffusion, ScheduleConfig
from sdm.train.samplers import sample

M, S = 0.3, 0.2  # data distribution N(M, S^2) per pixel


def gaussian_denoiser(diffusion):
    """Exact E[eps | x_t] for x_0 ~ N(M, S^2): the Bayes-optimal epsilon predictor."""
    abar = diffusion.abar

    def eps(x, t):
        a = abar[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return (1 - a).sqrt() * (x - a.sqrt() * M) / (a * S**2 + 1 - a)

    return eps


def test_schedule_values():
    d = GaussianDiffusion()
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(0.02)
    assert d.abar[0].item() == pytest.approx(1 - 1e-4)
    assert d.abar[-1].item() == pytest.approx(4.0358e-5, rel=1e-3)  # abar_999 of the linear schedule
    torch.testing.assert_close(d.abar, torch.cumprod(1 - d.betas, 0))
    with pytest.raises(ValueError):
        GaussianDiffusion(ScheduleConfig(beta_start=0.1, beta_end=0.01))


def test_q_sample_marginals():
    d = GaussianDiffusion()
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000,), 0.5)
    t = torch.full((20000,), 500)
    xt = d.q_sample(x0, t, torch.randn(20000, generator=g))
    a = d.abar[500].item()
    assert xt.mean().item() == pytest.approx(a**0.5 * 0.5, abs=0.02)
    assert xt.std().item() == pytest.approx((1 - a) ** 0.5, abs=0.02)


def test_ddim_eta1_full_steps_equals_ddpm_posterior_step():
    """With S = T and eta = 1 a DDIM step is the DDPM posterior step (same mean, same variance)."""
    d = GaussianDiffusion()
    den = gaussian_denoiser(d)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 1, 4, 4, generator=g, dtype=torch.float64)
    z = torch.randn(x.shape, generator=g, dtype=torch.float64)
    assert d.ddim_timesteps(1000) == list(range(999, -1, -1))
    for t in (999, 500, 10, 1):
        tt = torch.full((64,), t)
        eps = den(x, tt)
        for clip in (False, True):
            a = d.ddpm_step(x, t, eps, z, var_type="fixedsmall", clip=clip)
            b = d.ddim_step(x, t, t - 1, eps, z, eta=1.0, clip=clip)
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # last step: both return the x0 prediction
    eps = den(x, torch.zeros(64, dtype=torch.long))
    torch.testing.assert_close(d.ddpm_step(x, 0, eps, None), d.ddim_step(x, 0, -1, eps, None))


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", 1000, 0.0), ("ddim", 1000, 1.0), ("ddim", 250, 0.0)])
def test_samplers_recover_data_distribution(sampler, steps, eta):
    # (deterministic DDIM shrinks the spread at coarse steps: std 0.14 at S=20, 0.175 at 50, 0.193 at 200)
    d = GaussianDiffusion()
    g = torch.Generator().manual_seed(2)
    x = sample(gaussian_denoiser(d), d, (4000, 1), sampler=sampler, steps=steps, eta=eta,
               var_type="fixedsmall", clip=False, generator=g)
    assert x.mean().item() == pytest.approx(M, abs=0.015)
    assert x.std().item() == pytest.approx(S, abs=0.015)


def test_ddim_eta1_matches_ddpm_statistics():
    d = GaussianDiffusion()
    den = gaussian_denoiser(d)
    a = sample(den, d, (6000, 1), sampler="ddpm", var_type="fixedsmall", clip=False,
               generator=torch.Generator().manual_seed(3))
    b = sample(den, d, (6000, 1), sampler="ddim", steps=1000, eta=1.0, clip=False,
               generator=torch.Generator().manual_seed(4))
    assert abs(a.mean() - b.mean()).item() < 0.015
    assert abs(a.std() - b.std()).item() < 0.015


def test_ddim_timesteps():
    d = GaussianDiffusion()
    ts = d.ddim_timesteps(50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    with pytest.raises(ValueError):
        d.ddim_timesteps(0)
    with pytest.raises(ValueError):
        sample(gaussian_denoiser(d), d, (2, 1), sampler="euler")


def test_loss_is_mse_of_noise_prediction():
    d = GaussianDiffusion()
    x0 = torch.randn(8, 1, 4, 4)
    # a denoiser that returns zeros has loss E[eps^2] = mean of the drawn noise squared
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    loss = d.loss(lambda x, t: torch.zeros_like(x), x0, generator=g1)
    torch.randint(0, 1000, (8,), generator=g2)
    noise = torch.randn(x0.shape, generator=g2)
    assert loss.item() == pytest.approx(noise.square().mean().item(), rel=1e-6)
