"""The Spiking-Diffusion family (docs/spiking-diffusion.md): the LIF neuron, the VQ-SVAE, the absorbing
diffusion with the SDID denoiser, their training, checkpoints and sampler."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_same, run_ddp_cli

from sdm.errors import ConfigError
from sdm.testing.oracles import lif_step, multistep_lif_reference
from sdm.train.absorbing import AbsorbingConfig, AbsorbingDiffusion, categorical
from sdm.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sdm.train.neuron import IFNeuron, NeuronParams, atan_surrogate, multistep_if
from sdm.train.sd_model import (
    SpikingDiffusion,
    check_stages,
    load_absorbing,
    reconstruction_mse,
    sample_absorbing,
    vqsvae_from_checkpoint,
)
from sdm.train.sd_trainer import SDTrainConfig, holdout_split, train_absorbing, train_vqsvae
from sdm.train.sdid import SDID, SDIDConfig
from sdm.train.vqsvae import VQSVAE, VQSVAEConfig, VQSVAEOutput, psp, vqsvae_loss

pytestmark = pytest.mark.usefixtures("torch_threads")

LIF = NeuronParams.lif(2.0)
TINY_VQ = VQSVAEConfig(T=4, channels=(4, 8), latent_dim=4, codebook_size=16)
TINY_SDID = SDIDConfig(codebook_size=16, T=2, channels=(8, 8, 8, 8, 8))


def lif(x: torch.Tensor) -> list[float]:
    return multistep_if(x.view(-1, 1), 1.0, params=LIF).flatten().tolist()


# ----- the LIF neuron ---------------------------------------------------------------------
def test_lif_params_keep_if_as_the_special_case():
    assert (LIF.decay, LIF.input_scale, LIF.reset, LIF.is_lif) == (0.5, 0.5, "zero", True)
    assert NeuronParams().input_scale == 1.0 and not NeuronParams().is_lif
    assert NeuronParams.lif(4.0).decay == 0.75 and NeuronParams.lif(4.0).input_scale == 0.25
    for bad in ({"input_scale": 0.0}, {"input_scale": 1.5}, {"input_scale": float("nan")},
                {"input_scale": 0.5, "signed": True, "reset": "subtract"}):
        with pytest.raises(ConfigError):
            NeuronParams(**bad)
    for tau in (1.0, 0.5, float("inf"), True):
        with pytest.raises(ConfigError):
            NeuronParams.lif(tau)


def test_lif_dynamics_hand_computed():
    # h = v + (x - v) / 2, hard reset to 0, threshold 1 (fires at h >= 1)
    # x = 1.4: h = 0.7, 1.05 (fire), 0.7, 1.05 (fire): rate 1/2
    assert lif(torch.full((4,), 1.4)) == [0.0, 1.0, 0.0, 1.0]
    # x = 1.2: h = 0.6, 0.9, 1.05 (fire), then again: rate 1/3 (the ASG's rate quantiser)
    assert lif(torch.full((8,), 1.2)) == [0, 0, 1, 0, 0, 1, 0, 0]
    # x = 2: h = 1 at once, every step (H(0) = 1)
    assert lif(torch.full((3,), 2.0)) == [1.0, 1.0, 1.0]
    # x = 0.9 stays below threshold: h -> 0.9
    assert lif(torch.full((10,), 0.9)) == [0.0] * 10
    # x = 1, 1, 3, 0: h = 0.5, 0.75, 1.875 (fire, reset), 0
    assert lif(torch.tensor([1.0, 1.0, 3.0, 0.0])) == [0.0, 0.0, 1.0, 0.0]
    # the leak: 1.6 then nothing: h = 0.8, 0.4, 0.2; an input of 1.6 after that: 0.1 + 0.8 < 1
    assert lif(torch.tensor([1.6, 0.0, 0.0, 0.0, 1.6])) == [0.0] * 5


def test_lif_matches_the_spikingjelly_step():
    torch.manual_seed(0)
    x = torch.randn(12, 5, 6, dtype=torch.float64) * 1.2 + 0.8
    v, steps = torch.zeros(5, 6, dtype=torch.float64), []
    for t in range(12):
        s, v, _ = lif_step(v, x[t])
        steps.append(s)
    assert torch.equal(multistep_if(x, params=LIF), torch.stack(steps))
    layer = IFNeuron(params=LIF)
    assert torch.equal(layer(x), torch.stack(steps)) and "input_scale=0.5" in repr(layer)


@pytest.mark.parametrize("tau", [2.0, 3.0])
def test_lif_gradient_equals_stepwise_autograd(tau):
    """The fused hand-written BPTT (gradient through the hard reset) equals autograd on spikingjelly's
    step-by-step formulation."""
    torch.manual_seed(1)
    x = (torch.randn(7, 4, 9, dtype=torch.float64) * 1.5 + 1.0).requires_grad_()
    w = torch.randn(7, 4, 9, dtype=torch.float64)
    s_fused = multistep_if(x, params=NeuronParams.lif(tau))
    (s_fused * w).sum().backward()
    g_fused = x.grad.clone()
    x.grad = None
    s_ref = multistep_lif_reference(x, tau)
    (s_ref * w).sum().backward()
    assert torch.equal(s_fused.detach(), s_ref.detach()) and 0 < float(s_ref.detach().mean()) < 1
    torch.testing.assert_close(g_fused, x.grad, rtol=1e-12, atol=1e-12)


def test_lif_gradient_hand_computed():
    # T = 1: s = H(x/2 - 1), ds/dx = sg(x/2 - 1) / 2
    x = torch.tensor([[1.4]], dtype=torch.float64, requires_grad=True)
    multistep_if(x, params=LIF).sum().backward()
    assert x.grad.item() == pytest.approx(0.5 / (1.0 + (math.pi * -0.3) ** 2))
    # T = 2, loss = s[1]: dh1/dx0 = dh1/dv0 * dv0/dh0 * dh0/dx0 = 0.5 * (1 - h0 * sg(h0 - 1)) * 0.5
    x = torch.tensor([[1.4], [1.4]], dtype=torch.float64, requires_grad=True)
    multistep_if(x, params=LIF)[1].sum().backward()
    h0, h1 = 0.7, 1.05
    sg1 = atan_surrogate(torch.tensor(h1 - 1.0, dtype=torch.float64)).item()
    sg0 = atan_surrogate(torch.tensor(h0 - 1.0, dtype=torch.float64)).item()
    assert x.grad[1].item() == pytest.approx(0.5 * sg1)
    assert x.grad[0].item() == pytest.approx(sg1 * 0.5 * (1.0 - h0 * sg0) * 0.5)


# ----- VQ-SVAE ----------------------------------------------------------------------------
def test_parameter_counts_match_the_reference():
    vq = VQSVAE()
    count = lambda *mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
    assert count(vq) == 50_658
    assert count(vq.encoder) == 20_080
    assert count(vq.codebook, vq.asg) + 1 == 2_353  # + alpha
    assert count(vq.decoder, vq.out_conv) == 28_225
    assert count(SDID()) == 3_101_504
    assert VQSVAE().cfg.latent_size == 7


def test_psp_and_feature_mix_hand_computed():
    s = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1, 1, 1)
    assert psp(s).flatten().tolist() == [0.5, 0.25, 0.625]
    vq = VQSVAE(VQSVAEConfig(T=3, channels=(4,), latent_dim=1, codebook_size=2, img_size=2))
    with torch.no_grad():
        vq.alpha.fill_(0.25)
    z = vq.features(s)
    membrane, rate = 0.8 ** 2 + 1.0, 2.0 / 3.0  # sum_t 0.8^(T-1-t) s[t], mean_t s[t]
    assert z.item() == pytest.approx(0.75 * membrane + 0.25 * rate)
    z.sum().backward()
    assert vq.alpha.grad.item() == pytest.approx(rate - membrane)  # dz/dalpha = R - M


def _output_of(vq: VQSVAE, z: torch.Tensor) -> VQSVAEOutput:
    """Hand-built forward pass around a given feature ``z`` with silent spike trains."""
    idx = vq.nearest(z)
    zeros = torch.zeros(vq.cfg.T, *z.shape)
    return VQSVAEOutput(torch.zeros(z.shape[0], 1, 4, 4), idx, z, vq.lookup(idx), zeros, zeros)


def test_vq_codebook_and_commitment_gradients():
    vq = VQSVAE(VQSVAEConfig(T=2, channels=(4,), latent_dim=2, codebook_size=3, img_size=4))
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, -5.0]]))
    z = torch.tensor([[0.2, -0.1], [0.9, 1.3], [1.1, 0.6], [-0.3, 0.1]]).t().reshape(1, 2, 2, 2).requires_grad_()
    out = _output_of(vq, z)
    assert out.indices.flatten().tolist() == [0, 1, 1, 0]
    loss, parts = vqsvae_loss(vq, out, torch.zeros(1, 1, 4, 4), 1.0)
    loss.backward()
    n, beta = z.numel(), vq.cfg.commitment
    q = out.q.detach()
    # commitment: d/dz beta * MSE(z, sg q) = 2 beta (z - q) / N; the codebook term does not reach z
    torch.testing.assert_close(z.grad, 2 * beta * (z.detach() - q) / n)
    # codebook: d/de_k MSE(q, sg z) = sum over the positions coded k of 2 (e_k - z) / N; code 2 unused
    flat_z, flat_idx = z.detach().permute(0, 2, 3, 1).reshape(-1, 2), out.indices.flatten()
    for k in range(3):
        want = (2 * (vq.codebook.weight[k].detach() - flat_z[flat_idx == k]) / n).sum(0)
        torch.testing.assert_close(vq.codebook.weight.grad[k], want)
    assert parts["vq"] == pytest.approx(float((1 + beta) * (q - z.detach()).square().mean()))


def test_straight_through_reaches_the_encoder_not_the_codebook():
    torch.manual_seed(0)
    vq = VQSVAE(TINY_VQ)
    out = vq(torch.rand(3, 1, 28, 28) * 2 - 1)
    assert out.recon.shape == (3, 1, 28, 28) and out.indices.shape == (3, 7, 7)
    assert out.spikes.shape == out.gen_spikes.shape == (4, 3, 4, 7, 7)
    assert torch.equal(out.q, vq.codebook.weight[out.indices].permute(0, 3, 1, 2))
    out.recon.square().sum().backward()  # only the decoder's loss
    assert vq.encoder[0].conv.weight.grad.abs().sum() > 0  # through q_st = z + sg(q - z)
    assert vq.alpha.grad is not None and vq.alpha.grad != 0
    assert vq.codebook.weight.grad is None or not vq.codebook.weight.grad.any()


# ----- absorbing diffusion ----------------------------------------------------------------
def test_forward_masking_rate_is_t_over_steps():
    diff = AbsorbingDiffusion(AbsorbingConfig(codebook_size=16, steps=49))
    x0 = torch.randint(0, 16, (4000, 7, 7))
    gen = torch.Generator().manual_seed(0)
    for t in (1, 10, 25, 48, 49):
        x_t, target, mask = diff.q_sample(x0, torch.full((4000,), t), gen)
        p, n = t / 49, mask.numel()
        assert abs(mask.float().mean().item() - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-9, t
        assert torch.equal(x_t[mask], torch.full_like(x_t[mask], 16)) and torch.equal(x_t[~mask], x0[~mask])
        assert torch.equal(target[mask], x0[mask]) and bool((target[~mask] == -1).all())
    t = diff.sample_t(10_000, gen, torch.device("cpu"))
    assert int(t.min()) == 1 and int(t.max()) == 49


@pytest.mark.parametrize("loss", ["reweighted_elbo", "elbo"])
def test_elbo_weights(loss):
    diff = AbsorbingDiffusion(AbsorbingConfig(codebook_size=8, steps=49, loss=loss))
    t = torch.tensor([1, 7, 49])
    want = (1 - t / 49) if loss == "reweighted_elbo" else 49 / t
    torch.testing.assert_close(diff.weights(t, 49), want.float() / (math.log(2) * 49))
    # with uniform logits every masked token costs ln K: loss = mean_b w(t_b) * masked_b * ln K
    x0 = torch.randint(0, 8, (64, 7, 7))
    got = diff.loss(lambda x_t, t: torch.zeros(x_t.shape[0], 8, 7, 7), x0, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)  # replay the draws: t, then the mask
    t = diff.sample_t(64, gen, torch.device("cpu"))
    _, _, mask = diff.q_sample(x0, t, gen)
    want = (diff.weights(t, 49) * mask.flatten(1).sum(1) * math.log(8)).mean()
    torch.testing.assert_close(got, want)


def test_sampler_unmasks_everything_and_never_rewrites():
    K, steps = 10, 49
    diff = AbsorbingDiffusion(AbsorbingConfig(codebook_size=K, steps=steps))
    logits_gen = torch.Generator().manual_seed(1)
    seen_t = []

    def denoiser(x_t, t):
        seen_t.append(int(t[0]))
        return torch.randn(x_t.shape[0], K, *x_t.shape[1:], generator=logits_gen) * 3

    history = []
    out = diff.sample(denoiser, 6, (7, 7), 1.0, torch.Generator().manual_seed(0),
                      on_step=lambda t, x, ch: history.append((x.clone(), ch.clone())))
    assert seen_t == list(range(steps, 0, -1))
    assert not bool((out == K).any()) and int(out.min()) >= 0 and int(out.max()) < K
    fixed_count = torch.zeros(6, 7, 7, dtype=torch.long)
    previous = torch.full((6, 7, 7), K)
    for x, changes in history:
        was_fixed = previous != K
        assert torch.equal(x[was_fixed], previous[was_fixed])  # a fixed token is never rewritten
        assert not bool((changes & was_fixed).any())
        assert torch.equal(x != K, was_fixed | changes)  # exactly the new positions were written
        fixed_count += changes.long()
        previous = x
    assert bool((fixed_count == 1).all())
    # a near-zero temperature takes the arg-max; the same seed gives the same grid
    peak = torch.zeros(2, K, 7, 7)
    peak[:, 3] = 1.0
    cold = diff.sample(lambda x_t, t: peak, 2, (7, 7), 1e-3, torch.Generator().manual_seed(5))
    assert bool((cold == 3).all())
    a = diff.sample(lambda x_t, t: torch.zeros(2, K, 7, 7), 2, (7, 7), 1.0, torch.Generator().manual_seed(9))
    b = diff.sample(lambda x_t, t: torch.zeros(2, K, 7, 7), 2, (7, 7), 1.0, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    with pytest.raises(ConfigError):
        diff.sample(denoiser, 1, (7, 7), 0.0)


def test_categorical_draws_follow_the_softmax():
    logits = torch.log(torch.tensor([0.1, 0.2, 0.7])).expand(30_000, 3)
    freq = torch.bincount(categorical(logits, torch.Generator().manual_seed(0)), minlength=3) / 30_000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.7]), atol=0.015, rtol=0)


def test_sdid_inputs_and_head():
    torch.manual_seed(0)
    x_t, t = torch.tensor([[[0, 16], [5, 15]]]), torch.tensor([7])
    raw = SDID(TINY_SDID)
    inp = raw.inputs(x_t, t)
    assert torch.equal(inp[0, 0], x_t[0].float()) and bool((inp[0, 1] == 7.0).all())  # faithful: raw values
    onehot = SDID(SDIDConfig(codebook_size=16, T=2, channels=(8, 8), inputs="onehot"))
    inp = onehot.inputs(x_t, t)
    assert inp.shape == (1, 18, 2, 2) and inp[0, 16, 0, 1] == 1 and inp[0, 17, 0, 0] == pytest.approx(7 / 49)
    logits = raw(x_t, t)
    assert logits.shape == (1, 16, 2, 2)
    # the head on the time-mean equals the reference's mean over T of the per-step head
    h = inp_seq = raw.inputs(x_t, t).unsqueeze(0).expand(2, 1, 2, 2, 2)
    skip = h = raw.layers[0](inp_seq)
    for layer in raw.layers[1:]:
        h = layer(h)
    cat = torch.cat((h, skip), 2)
    per_step = torch.stack([raw.head(cat[i]) for i in range(2)]).mean(0)
    torch.testing.assert_close(logits, per_step)
    with pytest.raises(ConfigError):
        raw(torch.tensor([[[17]]]), torch.tensor([1]))


def test_configs_are_validated():
    with pytest.raises(ConfigError, match="img_size"):
        VQSVAEConfig(img_size=30)
    with pytest.raises(ConfigError, match=r"unknown VQ-SVAE config fields: \['bogus'\]"):
        VQSVAEConfig.from_dict({"bogus": 1})
    assert VQSVAEConfig.from_dict(TINY_VQ.to_dict()) == TINY_VQ
    assert SDIDConfig.from_dict(TINY_SDID.to_dict()) == TINY_SDID
    for bad in (lambda: SDIDConfig(inputs="embed"), lambda: SDIDConfig(channels=(8,)),
                lambda: AbsorbingConfig(loss="mse"), lambda: AbsorbingConfig(steps=0),
                lambda: SDTrainConfig(batch_size=0), lambda: VQSVAEConfig(T="16")):
        with pytest.raises(ConfigError):
            bad()
    with pytest.raises(ConfigError, match="codebook sizes differ"):
        check_stages(VQSVAEConfig(), SDIDConfig(codebook_size=64), AbsorbingConfig())


# ----- training, checkpoints, resume, sampling ----------------------------------------------
# with an EMA (the reference has none), so that resume is checked with its average and BN statistics too
VQ_TRAIN = SDTrainConfig(steps=6, batch_size=8, log_every=1, ckpt_every=4, seed=3, holdout=4900, ema_decay=0.9,
                         ema_bn_batches=2)
AB_TRAIN = SDTrainConfig(steps=6, batch_size=8, log_every=1, ckpt_every=4, seed=4, lr=3e-3, holdout=4900,
                         ema_decay=0.9, ema_bn_batches=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, torch_threads):
    """Each stage trained 6 steps straight and 3 + 3 steps with a resume in between."""
    root = tmp_path_factory.mktemp("sd")
    out = {"root": root}
    out["vq"] = train_vqsvae(root / "vq", TINY_VQ, VQ_TRAIN, device="cpu", progress=False)
    first = train_vqsvae(root / "vq_split", TINY_VQ, VQ_TRAIN, device="cpu", progress=False, max_steps_this_run=3)
    assert first["steps"] == 3 and load_checkpoint(root / "vq_split" / "model.pt")["step"] == 3
    torch.manual_seed(999)  # resume must not depend on the caller's RNG
    out["vq_split"] = train_vqsvae(root / "vq_split", resume=root / "vq_split" / "model.pt", device="cpu",
                                   progress=False)
    vq_path = root / "vq" / "model.pt"
    out["ab"] = train_absorbing(root / "ab", vq_path, TINY_SDID, AB_TRAIN, device="cpu", progress=False)
    train_absorbing(root / "ab_split", vq_path, TINY_SDID, AB_TRAIN, device="cpu", progress=False,
                    max_steps_this_run=3)
    torch.manual_seed(998)
    out["ab_split"] = train_absorbing(root / "ab_split", resume=root / "ab_split" / "model.pt", device="cpu",
                                      progress=False)
    return out


def test_holdout_is_a_fixed_random_subset():
    """Held-out images: the same for any seed and in both stages, every class of the label-sorted
    mnist-bundled in training, and none of them ever trained on."""
    keep, held = holdout_split(5000, 500)
    assert len(keep) == 4500 and len(held) == 500 and not set(keep.tolist()) & set(held.tolist())
    assert torch.equal(keep, keep.sort().values) and torch.equal(holdout_split(5000, 500)[1], held)
    from sdm.train.data import load_dataset

    labels = load_dataset("mnist-bundled", image_size=28).labels
    assert torch.bincount(labels[held], minlength=10).min() > 25  # mnist-bundled is sorted by digit
    assert len(holdout_split(5000, 0)[1]) == 0
    with pytest.raises(ConfigError, match="holdout=5000"):
        holdout_split(5000, 5000)


@pytest.mark.parametrize("stage", ["vq", "ab"])
def test_resume_is_bit_identical(runs, stage):
    a = load_checkpoint(runs["root"] / stage / "model.pt")
    b = load_checkpoint(runs["root"] / f"{stage}_split" / "model.pt")
    assert a["step"] == b["step"] == 6 and runs[f"{stage}_split"]["trained_steps"] == 3
    assert len(a["history"]) == 6
    keys = ["model", "ema", "optimizer", "history", "history_parts", "train_config", "model_config", "model_kind"]
    keys += ["data_variance"] if stage == "vq" else ["tokens", "vqvae", "absorbing"]
    for key in keys:
        assert_same(a[key], b[key], key)


def test_checkpoints_round_trip(runs, tmp_path):
    root = runs["root"]
    ckpt = load_checkpoint(root / "vq" / "model.pt")
    assert ckpt["model_kind"] == "vq-svae" and ckpt["data"]["images"] == 100
    vq, variance = vqsvae_from_checkpoint(root / "vq" / "model.pt")
    assert not vq.training and variance == ckpt["data_variance"] and 0.05 < variance < 0.15
    assert_same(vq.state_dict(), ckpt["ema"])  # the EMA weights by default
    assert_same(vqsvae_from_checkpoint(root / "vq" / "model.pt", use_ema=False)[0].state_dict(), ckpt["model"])
    ab = load_checkpoint(root / "ab" / "model.pt")
    assert ab["tokens"].shape == (100, 7, 7) and ab["tokens"].dtype == torch.int16
    assert_same(ab["vqvae"]["model"], ckpt["ema"])  # the frozen first stage travels along, as it encoded
    model = load_absorbing(root / "ab" / "model.pt")
    assert isinstance(model, SpikingDiffusion) and model.token_shape == (7, 7)
    assert_same(model.denoiser.state_dict(), ab["ema"])
    assert_same(load_absorbing(root / "ab" / "model.pt", use_ema=False).denoiser.state_dict(), ab["model"])
    # the tokens are what the VQ-SVAE gives the training images
    from sdm.train.data import load_dataset

    images = load_dataset("mnist-bundled", image_size=28).images_uint8[holdout_split(5000, 4900)[0]].float() / 127.5 - 1
    assert torch.equal(vq.tokens(images).to(torch.int16), ab["tokens"])
    # no state carries over between calls: an image's tokens do not depend on its batch or on earlier calls
    assert torch.equal(vq.tokens(images[:7]), vq.tokens(images)[:7])
    assert torch.equal(vq.tokens(images[3:9]), vq.tokens(images[3:9]))
    err = reconstruction_mse(vq, images[:20])
    assert err["mse"] > 0 and err["mse_data"] > 0 and 1 <= err["codes_used"] <= 16
    # wrong kinds are refused in one line naming the file
    with pytest.raises(CheckpointError, match="expected a absorbing checkpoint"):
        load_absorbing(root / "vq" / "model.pt")
    with pytest.raises(CheckpointError, match="expected a vq-svae"):
        train_absorbing(tmp_path / "x", root / "ab" / "model.pt", device="cpu", progress=False)
    unet_like = save_checkpoint(tmp_path / "unet.pt", {"model_config": {}, "model": {}})
    with pytest.raises(CheckpointError, match="not a Spiking-Diffusion checkpoint"):
        load_absorbing(unet_like)


def test_ema_weights_and_their_batchnorm_statistics(runs):
    """The EMA is an average of the weights (not a copy), and its saved BatchNorm statistics are
    recomputed for the averaged network, not copied from the raw one (train/ema.py)."""
    for stage in ("vq", "ab"):
        ckpt = load_checkpoint(runs["root"] / stage / "model.pt")
        raw, ema = ckpt["model"], ckpt["ema"]
        weights = [k for k, v in raw.items() if v.is_floating_point() and "running" not in k]
        assert any(not torch.equal(raw[k], ema[k]) for k in weights), stage
        running = [k for k in raw if k.endswith("running_var")]
        assert running and all(not torch.equal(raw[k], ema[k]) for k in running), stage
    # the statistics are those of the EMA network on the training distribution: recomputing them on
    # the same batches gives the saved ones exactly
    from sdm.train.ema import recalibrate_batchnorm
    from sdm.train.sd_model import build_vqsvae

    ckpt = load_checkpoint(runs["root"] / "vq" / "model.pt")
    vq, _ = build_vqsvae(ckpt, "test")
    for k in ckpt["ema"]:
        if "running" in k:
            vq.state_dict()[k].fill_(0.5)  # what recalibration must overwrite
    from sdm.train.data import infinite_loader, load_dataset

    data = load_dataset("mnist-bundled", image_size=28)
    data.images_uint8 = data.images_uint8[holdout_split(5000, VQ_TRAIN.holdout)[0]]
    seed = VQ_TRAIN.seed * 10_000_019 + 6 + 1
    batches = [(x,) for _, x in zip(range(2), infinite_loader(data, VQ_TRAIN.batch_size, seed=seed))]
    recalibrate_batchnorm(vq, batches)
    for k, v in ckpt["ema"].items():
        if "running" in k:
            torch.testing.assert_close(vq.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_sample_absorbing(runs):
    path = runs["root"] / "ab" / "model.pt"
    images, tokens = sample_absorbing(path, 5, temperature=0.8, seed=1, batch_size=2, return_tokens=True)
    assert images.shape == (5, 1, 28, 28) and tokens.shape == (5, 7, 7)
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 16
    model = load_absorbing(path)
    again = sample_absorbing(model, 5, temperature=0.8, seed=1, batch_size=2)
    assert torch.equal(images, again)
    torch.testing.assert_close(images, model.decode(tokens))
    other = sample_absorbing(model, 5, temperature=0.8, seed=2, batch_size=2, return_tokens=True)[1]
    assert not torch.equal(tokens, other)


def test_a_short_run_lowers_both_losses(tmp_path):
    # VQ-SVAE: the loss (L1 + L2 + MSE / variance) falls from ~8 to ~4 in 30 steps at this size (seeds 0-2: 0.5-0.72x)
    cfg = SDTrainConfig(steps=30, batch_size=16, log_every=5, seed=0, lr=3e-3, holdout=4000)
    vq = train_vqsvae(tmp_path / "vq", TINY_VQ, cfg, device="cpu", progress=False)
    losses = [h[1] for h in vq["history"]]
    assert losses[-1] < 0.8 * losses[0], losses
    assert vq["history_parts"][-1][3] < vq["history_parts"][0][3]  # the raw reconstruction MSE too
    # absorbing: the reweighted ELBO on a fixed set of (t, mask) draws, before and after training
    ab_cfg = SDTrainConfig(steps=40, batch_size=32, log_every=10, seed=0, lr=3e-3, holdout=4000)
    torch.manual_seed(0)
    untrained = SDID(TINY_SDID)
    train_absorbing(tmp_path / "ab", tmp_path / "vq" / "model.pt", TINY_SDID, ab_cfg, device="cpu", progress=False)
    ckpt = load_checkpoint(tmp_path / "ab" / "model.pt")
    trained = load_absorbing(ckpt).denoiser
    diff = AbsorbingDiffusion(AbsorbingConfig(codebook_size=16))
    x0 = ckpt["tokens"][:256].long()

    def held_loss(model):
        model.train()  # batch statistics: the untrained network has no running ones
        with torch.no_grad():
            return float(diff.loss(model, x0, torch.Generator().manual_seed(11)))

    before, after = held_loss(untrained), held_loss(trained)
    assert after < 0.8 * before, (before, after)


# ----- DDP ------------------------------------------------------------------------------
# The real CLI on two ranks (helpers.run_ddp_cli), each rank writing the parameters it ends with.
def test_absorbing_ddp_two_cpu_processes(runs, tmp_path):
    out = tmp_path / "run"
    r = run_ddp_cli(tmp_path, "sdm.train.sd_trainer", "SDID", [
        "train", "--model", "absorbing", "--vqvae", str(runs["root"] / "vq" / "model.pt"), "--out", str(out),
        "--steps", "3", "--batch-size", "8", "--channels", "8,8", "--holdout", "4900", "--seed", "5",
        "--ema-decay", "0.5", "--device", "cpu"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt["step"] == 3 and ckpt["train_config"]["batch_size"] == 8 and ckpt["ema"] is not None
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["model.pt", "params_rank0.pt", "params_rank1.pt"]
    p0 = torch.load(out / "params_rank0.pt", weights_only=True)
    p1 = torch.load(out / "params_rank1.pt", weights_only=True)
    for k in p0:  # gradients were all-reduced: both ranks hold the saved parameters
        assert torch.equal(p0[k], p1[k]) and torch.equal(p0[k], ckpt["model"][k]), k
    torch.manual_seed(5)
    init = SDID(SDIDConfig.from_dict(ckpt["model_config"]))
    assert not torch.equal(init.head.weight, p0["head.weight"])
