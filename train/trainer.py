"""Training loop: epsilon-prediction MSE with Adam, grad clipping, optional EMA,
periodic atomic checkpoints, exact resume, bf16 autocast on GPU and DDP via torchrun.

A run has a *stage*: ``base`` (training from scratch) or ``tsm`` (fine-tuning the
temporal-wise spiking gains, started from a base checkpoint with ``--tsm``).
``steps`` is the stage's total, so re-running an interrupted command with
``--resume DIR/model.pt`` finishes the same schedule, and the resumed run is
bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import infinite_loader, load_dataset
from .diffusion import GaussianDiffusion, ScheduleConfig
from .ema import ema_decay_at, ema_update, recalibrate_batchnorm
from .unet import SpikingUNet, UNetConfig


@dataclass
class TrainConfig:
    data: str = "mnist-bundled"
    steps: int = 1000
    batch_size: int = 32  # global batch, split over DDP ranks
    lr: float = 2e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 disables EMA
    ema_bn_batches: int = 8  # batches that recompute the EMA network's BatchNorm statistics at each save
    warmup: int = 0  # linear LR warm-up steps
    seed: int = 42
    ckpt_every: int = 500
    log_every: int = 10
    precision: str = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU; or fp32 | bf16

    def __post_init__(self):
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if (self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.ema_decay < 1
                or self.ema_bn_batches < 0):
            raise ValueError(f"invalid training config: {self}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config fields: {sorted(unknown)}")
        return cls(**d)


def load_config_file(path: str | os.PathLike) -> tuple[dict, dict, dict]:
    """Read a JSON config ``{"model": {...}, "train": {...}, "diffusion": {...}}``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict) or set(raw) - {"model", "train", "diffusion", "comment"}:
        raise ValueError(f"{path}: config must be an object with keys model, train, diffusion")
    return raw.get("model", {}), raw.get("train", {}), raw.get("diffusion", {})


# ----- distributed helpers ---------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None) -> tuple[Dist, torch.device]:
    """Set up DDP when launched by torchrun (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if world <= 1:
        return Dist(), torch.device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local), dev


def _noisy_batches(dataset, diffusion: GaussianDiffusion, cfg: TrainConfig, step: int, dev: torch.device):
    """The training distribution (x_t at uniform t) for BatchNorm recalibration: a data stream
    and a generator of their own that depend only on (seed, step)."""
    seed = cfg.seed * 10_000_019 + step + 1
    gen = torch.Generator().manual_seed(seed)
    for _, x0 in zip(range(cfg.ema_bn_batches), infinite_loader(dataset, cfg.batch_size, seed=seed)):
        x_t, t, _ = diffusion.diffuse(x0, gen)
        yield x_t.to(dev), t.to(dev)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else cfg.lr


# ----- the loop -------------------------------------------------------------------------
TSM_LR = 1e-5  # SDM section 7.1: fine-tuning learning rate, no EMA


def _step_generator(gen: torch.Generator, seed: int, rank: int, step: int) -> torch.Generator:
    """Noise and t of a step depend only on (seed, rank, step): resume is exact on every rank
    without carrying generator state around."""
    return gen.manual_seed((seed * 1_000_003 + rank) * 10_000_019 + step)


def train(
    out_dir: str | os.PathLike,
    model_cfg: UNetConfig | None = None,
    train_cfg: TrainConfig | None = None,
    schedule: ScheduleConfig | None = None,
    resume: str | os.PathLike | None = None,
    tsm: bool = False,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
    progress: bool = True,
    max_steps_this_run: int | None = None,
) -> dict[str, Any]:
    """Train, resume or TSM-fine-tune, writing ``out_dir/model.pt``; returns a summary.

    Without ``resume`` the run uses ``model_cfg``/``train_cfg``/``schedule``.  With it,
    architecture and schedule come from the checkpoint, its training config is the base
    and ``overrides`` (the options a user set explicitly) win.  ``tsm=True`` on a base
    checkpoint starts a TSM stage: gains switched on (init 1), fresh optimizer, step 0,
    learning rate ``TSM_LR`` and no EMA unless overridden.  ``max_steps_this_run`` stops
    early (tests use it to simulate an interruption).
    """
    from tqdm.auto import tqdm

    dist_info, dev = init_distributed(device)
    ckpt_path = Path(out_dir) / "model.pt"
    stage = "tsm" if tsm else "base"
    state: dict[str, Any] | None = None
    continuing = False
    if resume is not None:
        state = load_checkpoint(resume)
        saved_stage = state.get("stage", "base")
        if saved_stage == "converted":
            raise CheckpointError(f"{resume}: is a converted SNN (sdm convert); sdm train does not continue it "
                                  "(fine-tune it with sdm convert --finetune-steps)")
        if saved_stage == "tsm" and not tsm:
            raise CheckpointError(f"{resume}: is a TSM fine-tuning checkpoint; resume it with --tsm")
        continuing = saved_stage == stage
        model_cfg = UNetConfig.from_dict(state["model_config"])
        schedule = ScheduleConfig(**state.get("diffusion", {}))
        base = TrainConfig.from_dict(state.get("train_config", {}))
        if not continuing:
            base = dataclasses.replace(base, lr=TSM_LR, ema_decay=0.0)
        train_cfg = dataclasses.replace(base, **(overrides or {}))
    model_cfg = model_cfg or UNetConfig()
    train_cfg = train_cfg or TrainConfig()
    schedule = schedule or ScheduleConfig()
    if train_cfg.batch_size % dist_info.world_size:
        raise ValueError(f"batch size {train_cfg.batch_size} is not divisible by {dist_info.world_size} processes")

    torch.manual_seed(train_cfg.seed)
    model = SpikingUNet(model_cfg)
    if state is not None:
        model.load_state_dict(state["model"])
    if tsm:
        model.enable_tsm()
    model.to(dev)

    ema = None
    if train_cfg.ema_decay > 0:
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        if continuing and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=train_cfg.lr)
    start, history = 0, []
    if continuing:
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        history = [list(h) for h in state.get("history", [])]
        if "torch" in state.get("rng", {}):
            torch.set_rng_state(state["rng"]["torch"])

    ddp_model: nn.Module = model
    if dist_info.world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)

    dataset = load_dataset(train_cfg.data, image_size=model.cfg.img_size)
    if dataset.channels != model.cfg.img_ch:
        raise ValueError(
            f"data set {train_cfg.data!r} has {dataset.channels} channel(s) but the model expects {model.cfg.img_ch}")
    batches = infinite_loader(dataset, train_cfg.batch_size // dist_info.world_size, seed=train_cfg.seed,
                              rank=dist_info.rank, world_size=dist_info.world_size, start_batch=start)
    diffusion = GaussianDiffusion(schedule)
    gen = torch.Generator(device=dev)
    use_bf16 = train_cfg.precision == "bf16" or (train_cfg.precision == "auto" and dev.type == "cuda")

    def ema_weights(step: int) -> dict[str, torch.Tensor] | None:
        if ema is None:
            return None
        if train_cfg.ema_bn_batches == 0:
            return ema.state_dict()
        averaged = copy.deepcopy(ema)  # the running EMA keeps its copied buffers: resume stays exact
        recalibrate_batchnorm(averaged, _noisy_batches(dataset, diffusion, train_cfg, step, dev))
        return averaged.state_dict()

    def snapshot(step: int) -> dict[str, Any]:
        return {
            "model_config": model.cfg.to_dict(),
            "train_config": dataclasses.asdict(train_cfg),
            "diffusion": dataclasses.asdict(schedule),
            "stage": stage,
            "model": model.state_dict(),
            "ema": ema_weights(step),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "history": history,
            "rng": {"torch": torch.get_rng_state()},
            "data": {"spec": train_cfg.data, "channels": dataset.channels, "image_size": model.cfg.img_size},
        }

    end = train_cfg.steps if max_steps_this_run is None else min(train_cfg.steps, start + max_steps_this_run)
    model.train()
    bar = tqdm(range(start, end), initial=start, total=train_cfg.steps, desc=f"train[{stage}]",
               disable=not (progress and dist_info.is_main), dynamic_ncols=True)
    t0 = time.perf_counter()
    running, n_running = 0.0, 0
    for step in bar:
        x0 = next(batches).to(dev, non_blocking=True)
        for g in optimizer.param_groups:
            g["lr"] = _lr_at(step, train_cfg)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = diffusion.loss(ddp_model, x0, generator=_step_generator(gen, train_cfg.seed, dist_info.rank, step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
        optimizer.step()
        if ema is not None:
            ema_update(ema, model, ema_decay_at(step, train_cfg.ema_decay))
        value = loss.detach().float()
        if dist_info.world_size > 1:
            dist.all_reduce(value)
            value /= dist_info.world_size
        value = float(value)
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step}; lower the learning rate")
        running, n_running = running + value, n_running + 1
        done = step + 1
        if done % train_cfg.log_every == 0 or done == end:
            history.append([done, running / n_running])
            bar.set_postfix(loss=f"{running / n_running:.4f}")
            running, n_running = 0.0, 0
        if dist_info.is_main and (done % train_cfg.ckpt_every == 0 or done == end):
            save_checkpoint(ckpt_path, snapshot(done))
    elapsed = time.perf_counter() - t0
    bar.close()
    if dist_info.world_size > 1:
        dist.barrier()
    return {
        "checkpoint": str(ckpt_path),
        "stage": stage,
        "steps": end,
        "trained_steps": max(0, end - start),
        "seconds": elapsed,
        "images_per_s": (end - start) * train_cfg.batch_size / elapsed if end > start else 0.0,
        "history": history,
    }
