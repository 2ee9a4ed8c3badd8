"""The training loop: it learns, resumes bit-exactly, runs the TSM stage and runs under DDP."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import assert_same, run_ddp_cli

from sdm.train.checkpoint import CheckpointError, load_checkpoint
from sdm.train.trainer import TrainConfig, train

pytestmark = pytest.mark.usefixtures("torch_threads")


def test_short_run_lowers_the_loss(tmp_path, tiny_model_cfg):
    # 30 steps at lr 2e-3: loss goes ~1.1 -> ~0.6 on seeds 0-2; the margin below is ~3x the spread
    cfg = TrainConfig(data="mnist-bundled", steps=30, batch_size=16, lr=2e-3, seed=0, log_every=5)
    summary = train(tmp_path, tiny_model_cfg, cfg, device="cpu", progress=False)
    hist = summary["history"]
    assert [h[0] for h in hist] == [5, 10, 15, 20, 25, 30]
    losses = [h[1] for h in hist]
    first, last = losses[0], sum(losses[-2:]) / 2
    assert last < 0.8 * first, losses
    assert summary["steps"] == 30 and summary["stage"] == "base"
    assert load_checkpoint(tmp_path / "model.pt")["history"] == hist


@pytest.mark.parametrize("ema_decay", [0.0, 0.9], ids=["no-ema", "ema"])
def test_resume_is_bit_identical(tmp_path, tiny_model_cfg, ema_decay):
    cfg = TrainConfig(data="mnist-bundled", steps=6, batch_size=8, lr=2e-3, ema_decay=ema_decay, seed=1,
                      log_every=1, warmup=4)
    train(tmp_path / "straight", tiny_model_cfg, cfg, device="cpu", progress=False)
    first = train(tmp_path / "split", tiny_model_cfg, cfg, device="cpu", progress=False, max_steps_this_run=3)
    assert first["steps"] == 3
    assert load_checkpoint(tmp_path / "split" / "model.pt")["step"] == 3
    torch.manual_seed(12345)  # resume must not depend on the caller's global RNG
    second = train(tmp_path / "split", resume=tmp_path / "split" / "model.pt", device="cpu", progress=False)
    assert second["steps"] == 6

    a = load_checkpoint(tmp_path / "straight" / "model.pt")
    b = load_checkpoint(tmp_path / "split" / "model.pt")
    assert b["step"] == 6
    assert len(a["history"]) == 6
    for key in ("model", "ema", "optimizer", "history", "train_config", "model_config", "stage"):
        assert_same(a[key], b[key], key)
    if ema_decay:
        assert a["ema"] is not None
        assert not torch.equal(a["ema"]["stem.conv.weight"], a["model"]["stem.conv.weight"])
    else:
        assert a["ema"] is None


def test_resume_of_a_finished_run_trains_no_further(trained_ckpt, tmp_path):
    path = tmp_path / "model.pt"
    shutil.copyfile(trained_ckpt, path)
    before = load_checkpoint(path)
    summary = train(tmp_path, resume=path, device="cpu", progress=False)
    assert summary["steps"] == before["step"] == 8
    after = load_checkpoint(path)
    assert after["step"] == 8
    for key in ("model", "optimizer", "history"):
        assert_same(before[key], after[key], key)


def test_tsm_stage(trained_ckpt, tmp_path):
    base = load_checkpoint(trained_ckpt)
    summary = train(tmp_path, resume=trained_ckpt, tsm=True, overrides={"steps": 3}, device="cpu", progress=False)
    assert summary["stage"] == "tsm" and summary["steps"] == 3
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["stage"] == "tsm" and ckpt["step"] == 3
    assert ckpt["model_config"]["tsm"] is True
    tc = ckpt["train_config"]
    assert tc["lr"] == 1e-5 and tc["ema_decay"] == 0.0 and tc["steps"] == 3
    assert ckpt["ema"] is None

    gains = {k: v for k, v in ckpt["model"].items() if k.endswith("tsm_gain")}
    T = base["model_config"]["T"]
    assert len(gains) >= 10
    assert all(g.shape == (T,) for g in gains.values())
    moved = [k for k, g in gains.items() if not torch.equal(g, torch.ones(T))]
    assert len(moved) >= len(gains) // 2, f"only {moved} of {len(gains)} gains were trained"
    # a fresh optimizer over the base parameters plus the gains, counting only this stage's steps
    assert len(ckpt["optimizer"]["state"]) == len(base["optimizer"]["state"]) + len(gains)
    assert all(float(s["step"]) == 3 for s in ckpt["optimizer"]["state"].values())

    # the TSM checkpoint loads for sampling with its gains
    from sdm.train.sampling import model_from_checkpoint

    model, _, _ = model_from_checkpoint(tmp_path / "model.pt")
    assert model.stem.conv_in.tsm_gain is not None
    assert torch.equal(model.stem.conv_in.tsm_gain.detach(), ckpt["model"]["stem.conv_in.tsm_gain"])

    # resuming a TSM checkpoint as a base run is refused, naming the file
    with pytest.raises(CheckpointError) as info:
        train(tmp_path / "again", resume=tmp_path / "model.pt", device="cpu", progress=False)
    assert str(tmp_path / "model.pt") in str(info.value) and "tsm" in str(info.value).lower()
    assert not (tmp_path / "again" / "model.pt").exists()


def test_bad_configuration_is_a_config_error(tmp_path, tiny_model_cfg):
    """Every impossible setting or config file is a one-line ConfigError (a ValueError) naming what is wrong."""
    import dataclasses

    from sdm.errors import ConfigError
    from sdm.train.config import strict_from_dict
    from sdm.train.diffusion import ScheduleConfig
    from sdm.train.trainer import load_config_file

    with pytest.raises(ConfigError, match=r"unknown training config fields: \['stpes'\]"):
        TrainConfig.from_dict({"steps": 3, "stpes": 4})
    assert TrainConfig.from_dict({"steps": 3}) == TrainConfig(steps=3)
    with pytest.raises(ConfigError, match="precision must be auto, fp32 or bf16"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match="invalid training config"):
        TrainConfig(batch_size=0)
    # the one strict reader behind every config record: all unknown fields, sorted
    with pytest.raises(ConfigError, match=r"unknown schedule config fields: \['a', 'b'\]"):
        strict_from_dict(ScheduleConfig, {"b": 1, "a": 2, "steps": 3}, "schedule")
    assert strict_from_dict(ScheduleConfig, {"steps": 3}, "schedule") == ScheduleConfig(steps=3)

    with pytest.raises(ConfigError, match="no such config file"):
        load_config_file(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config_file(tmp_path / "bad.json")
    (tmp_path / "keys.json").write_text('{"modle": {}}')
    with pytest.raises(ConfigError, match="keys model, train, diffusion"):
        load_config_file(tmp_path / "keys.json")
    (tmp_path / "ok.json").write_text('{"model": {"ch": 8}, "train": {"steps": 2}, "comment": "x"}')
    assert load_config_file(tmp_path / "ok.json") == ({"ch": 8}, {"steps": 2}, {})

    # grey data for a colour model is refused before any step or file
    with pytest.raises(ConfigError, match=r"has 1 channel\(s\) but the model expects 3"):
        train(tmp_path / "rgb", dataclasses.replace(tiny_model_cfg, img_ch=3), TrainConfig(steps=1, batch_size=2),
              device="cpu", progress=False)
    assert not (tmp_path / "rgb" / "model.pt").exists()


def test_cosine_lr_schedule():
    """Warm-up, then ``lr`` constant, or with ``lr_final`` a cosine that ends exactly there at the last step."""
    from sdm.train.trainer import _lr_at

    flat = TrainConfig(steps=100, lr=1e-3, warmup=10)
    assert [_lr_at(s, flat) for s in (0, 4, 9, 10, 99)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    cos = TrainConfig(steps=100, lr=1e-3, warmup=10, lr_final=1e-5)
    lrs = [_lr_at(s, cos) for s in range(100)]
    assert lrs[:10] == pytest.approx([1e-4 * (s + 1) for s in range(10)])
    assert all(a > b for a, b in zip(lrs[9:], lrs[10:]))  # strictly falling after the warm-up
    assert lrs[-1] == pytest.approx(1e-5) and lrs[54] == pytest.approx((1e-3 + 1e-5) / 2)
    with pytest.raises(ValueError, match=r"lr_final.*in \[0, lr\]"):
        TrainConfig(lr=1e-3, lr_final=2e-3)


def test_distillation_pulls_the_model_to_its_teacher(tmp_path, tiny_model_cfg):
    """``distill_from`` + weight 1: the SNN learns the teacher's eps instead of the noise, so after the same
    steps its eps is much closer to the teacher's than the same run's without the teacher.  The loss mixes
    the two targets exactly; resume is bit-identical with a teacher and a cosine schedule."""
    import dataclasses

    from sdm.train.diffusion import GaussianDiffusion
    from sdm.train.sampling import model_from_checkpoint

    ann_cfg = dataclasses.replace(tiny_model_cfg, neuron="swish", T=1)
    # a 10-step ANN: its eps is small and smooth, a target far from what training on the noise gives
    train(tmp_path / "ann", ann_cfg, TrainConfig(steps=10, batch_size=8, lr=2e-3, seed=0), device="cpu",
          progress=False)
    teacher_path = str(tmp_path / "ann" / "model.pt")
    teacher = model_from_checkpoint(teacher_path)[0]
    base = dict(steps=40, batch_size=16, lr=3e-3, seed=1, log_every=5)
    train(tmp_path / "plain", tiny_model_cfg, TrainConfig(**base), device="cpu", progress=False)
    cfg = TrainConfig(**base, distill_from=teacher_path, distill_weight=1.0)
    train(tmp_path / "distilled", tiny_model_cfg, cfg, device="cpu", progress=False)

    diffusion = GaussianDiffusion()
    x0 = torch.rand(32, 1, 16, 16) * 2 - 1
    x_t, t, noise = diffusion.diffuse(x0, torch.Generator().manual_seed(7))
    def trained(name):  # in training mode (batch statistics), as the loss saw it: after 40 steps a tiny
        # net's BatchNorm running statistics still lag its weights
        return model_from_checkpoint(tmp_path / name / "model.pt", use_ema=False)[0].train()

    with torch.no_grad():
        target = teacher(x_t, t)
        gap = {name: torch.nn.functional.mse_loss(trained(name)(x_t, t), target).item()
               for name in ("plain", "distilled")}
        assert gap["plain"] > 0.2 and gap["distilled"] < 0.25 * gap["plain"], gap  # (measured: 0.47, 0.036)
        student = trained("plain")
        eps = student(x_t, t)
        gen = torch.Generator().manual_seed(7)
        mixed = diffusion.loss(student, x0, gen, teacher=teacher, teacher_weight=0.25)
        want = 0.75 * torch.nn.functional.mse_loss(eps, noise) + 0.25 * torch.nn.functional.mse_loss(eps, target)
        torch.testing.assert_close(mixed, want)

    resume_cfg = dataclasses.replace(cfg, steps=6, distill_weight=0.5, lr_final=1e-4, warmup=2, ema_decay=0.9,
                                     log_every=1)
    train(tmp_path / "straight", tiny_model_cfg, resume_cfg, device="cpu", progress=False)
    train(tmp_path / "split", tiny_model_cfg, resume_cfg, device="cpu", progress=False, max_steps_this_run=3)
    train(tmp_path / "split", resume=tmp_path / "split" / "model.pt", device="cpu", progress=False)
    a, b = (load_checkpoint(tmp_path / d / "model.pt") for d in ("straight", "split"))
    for key in ("model", "ema", "optimizer", "history", "train_config"):
        assert_same(a[key], b[key], key)
    assert a["train_config"]["distill_from"] == teacher_path


def test_tsm_stage_starts_at_a_constant_lr(tmp_path, tiny_model_cfg):
    """A base run with a cosine to 1e-4 fine-tunes with TSM at the constant 1e-5 (the cosine's end would
    otherwise lie above the stage's lr and the stage could not start)."""
    base = TrainConfig(steps=2, batch_size=4, lr=2e-3, lr_final=1e-4, seed=0)
    train(tmp_path / "base", tiny_model_cfg, base, device="cpu", progress=False)
    train(tmp_path / "tsm", resume=tmp_path / "base" / "model.pt", tsm=True, overrides={"steps": 1}, device="cpu",
          progress=False)
    tc = load_checkpoint(tmp_path / "tsm" / "model.pt")["train_config"]
    assert (tc["lr"], tc["lr_final"], tc["ema_decay"]) == (1e-5, 0.0, 0.0)


def test_distillation_refuses_a_teacher_that_means_something_else(tmp_path, tiny_model_cfg, trained_ckpt):
    """A teacher of another image size or noise schedule, or a weight without a teacher, is refused before
    any step, naming the file or field."""
    import dataclasses

    from sdm.errors import ConfigError
    from sdm.train.diffusion import ScheduleConfig

    with pytest.raises(ConfigError, match="distill_from and distill_weight go together"):
        TrainConfig(distill_weight=0.5)
    with pytest.raises(ConfigError, match="distill_from and distill_weight go together"):
        TrainConfig(distill_from=str(trained_ckpt))
    small = dataclasses.replace(tiny_model_cfg, img_size=8)
    cfg = TrainConfig(steps=1, batch_size=2, distill_from=str(trained_ckpt), distill_weight=0.5)
    with pytest.raises(CheckpointError, match=r"--distill-from: the teacher takes 1x16x16 images, the model 1x8x8"):
        train(tmp_path / "small", small, cfg, device="cpu", progress=False)
    with pytest.raises(CheckpointError, match="--distill-from: the teacher's noise schedule"):
        train(tmp_path / "sched", tiny_model_cfg, cfg, ScheduleConfig(steps=500), device="cpu", progress=False)
    assert not (tmp_path / "small" / "model.pt").exists() and not (tmp_path / "sched" / "model.pt").exists()


# ----- DDP ------------------------------------------------------------------------------
# The real CLI on every rank (helpers.run_ddp_cli), each rank writing the parameters it ends with.


def test_ddp_two_cpu_processes(tmp_path, tiny_model_flags):
    out = tmp_path / "run"
    r = run_ddp_cli(tmp_path, "sdm.train.trainer", "SpikingUNet", [
           "train", "--data", "mnist-bundled", "--out", str(out), "--steps", "4", "--batch-size", "8",
           "--seed", "5", "--device", "cpu", *tiny_model_flags])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt["step"] == 4 and ckpt["train_config"]["batch_size"] == 8
    p0 = torch.load(out / "params_rank0.pt", weights_only=True)
    p1 = torch.load(out / "params_rank1.pt", weights_only=True)
    # gradients were all-reduced: both ranks hold the same parameters, and they are the saved ones
    assert set(p0) == set(p1)
    for k in p0:
        assert torch.equal(p0[k], p1[k]), f"ranks diverged at {k}"
        assert torch.equal(p0[k], ckpt["model"][k]), k
    # ... and training moved them (the two ranks saw different data and noise, so without the
    # all-reduce they could not agree)
    from sdm.train.unet import SpikingUNet, UNetConfig

    torch.manual_seed(5)
    init = dict(SpikingUNet(UNetConfig.from_dict(ckpt["model_config"])).named_parameters())
    assert not torch.equal(init["stem.conv.weight"], p0["stem.conv.weight"])
