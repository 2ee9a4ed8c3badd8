"""EMA weights and the BatchNorm statistics that go with them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sdm.train.checkpoint import load_checkpoint
from sdm.train.data import infinite_loader, load_dataset
from sdm.train.diffusion import GaussianDiffusion
from sdm.train.ema import ema_decay_at, ema_update, recalibrate_batchnorm
from sdm.train.layers import SeqBatchNorm2d
from sdm.train.trainer import TrainConfig, train
from sdm.train.unet import SpikingUNet

pytestmark = pytest.mark.usefixtures("torch_threads")


def test_recalibration_gives_the_exact_statistics_of_the_batches_and_restores_the_model():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    model = nn.Sequential(conv, nn.BatchNorm2d(3, momentum=0.3), nn.Dropout(0.5)).eval()
    batches = [(torch.randn(4, 2, 5, 5),), (torch.randn(6, 2, 5, 5) + 1.0,)]
    assert recalibrate_batchnorm(model, batches) == 2

    bn = model[1]
    # momentum=None: the plain average of the per-batch statistics (unbiased variance), which
    # is what the layer sees in this network, whatever the running values were before
    with torch.no_grad():
        per_batch = [conv(x).transpose(0, 1).flatten(1) for (x,) in batches]  # [C, positions]
    mean = torch.stack([p.mean(1) for p in per_batch]).mean(0)
    var = torch.stack([p.var(1, unbiased=True) for p in per_batch]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 2
    assert bn.momentum == 0.3 and not model.training and not any(m.training for m in model)


def test_recalibration_of_a_model_without_batchnorm_is_a_no_op_and_no_batches_is_an_error():
    assert recalibrate_batchnorm(nn.Linear(2, 2), [(torch.zeros(1, 2),)]) == 0
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(nn.BatchNorm1d(2), [])


def test_ema_update_and_warm_up():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    before = a.weight.detach().clone()
    ema_update(a, b, 0.75)
    torch.testing.assert_close(a.weight, 0.75 * before + 0.25 * b.weight)
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1) and ema_decay_at(10**6, 0.999) == 0.999


def _bn_input_means(model: SpikingUNet, x, t) -> list[torch.Tensor]:
    """Per-channel mean of every BatchNorm's input for one batch (the layer's true statistics)."""
    means, hooks = [], []
    for m in model.modules():
        if isinstance(m, SeqBatchNorm2d):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args: means.append(args[0].detach().transpose(0, 1).flatten(1).mean(1))))
    with torch.no_grad():
        model.eval()(x, t)
    for h in hooks:
        h.remove()
    return means


@pytest.mark.parametrize("bn_batches", [0, 4], ids=["copied", "recalibrated"])
def test_checkpointed_ema_statistics(tmp_path, tiny_model_cfg, bn_batches):
    cfg = TrainConfig(data="mnist-bundled", steps=8, batch_size=8, lr=2e-3, ema_decay=0.9, seed=2,
                      ema_bn_batches=bn_batches)
    train(tmp_path, tiny_model_cfg, cfg, device="cpu", progress=False)
    ck = load_checkpoint(tmp_path / "model.pt")
    assert ck["train_config"]["ema_bn_batches"] == bn_batches
    stats = [k for k in ck["model"] if k.endswith(("running_mean", "running_var"))]
    assert stats
    if bn_batches == 0:  # the shortcut: the raw network's statistics
        assert all(torch.equal(ck["ema"][k], ck["model"][k]) for k in stats)
        return
    assert not any(torch.equal(ck["ema"][k], ck["model"][k]) for k in stats)

    # The recalibrated statistics describe the EMA network: on fresh noisy training inputs
    # its BatchNorm inputs' means are far closer to its running means than to the copied ones.
    ema = SpikingUNet(tiny_model_cfg)
    ema.load_state_dict(ck["ema"])
    copied = SpikingUNet(tiny_model_cfg)
    copied.load_state_dict({**ck["ema"], **{k: ck["model"][k] for k in stats}})
    data = load_dataset("mnist-bundled", image_size=tiny_model_cfg.img_size)
    x, t, _ = GaussianDiffusion().diffuse(next(infinite_loader(data, 64, seed=99)), torch.Generator().manual_seed(99))
    means = _bn_input_means(ema, x, t)
    running_ema = [m.running_mean for m in ema.modules() if isinstance(m, SeqBatchNorm2d)]
    running_raw = [m.running_mean for m in copied.modules() if isinstance(m, SeqBatchNorm2d)]
    err_ema = sum(float((m - r).abs().mean()) for m, r in zip(means, running_ema))
    err_raw = sum(float((m - r).abs().mean()) for m, r in zip(means, running_raw))
    assert err_ema < 0.5 * err_raw, (err_ema, err_raw)
