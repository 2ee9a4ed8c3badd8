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
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from sdm.errors import ConfigError

from .checkpoint import CheckpointError, denoiser_configs, load_checkpoint, load_weights, save_checkpoint
from .config import MAX_SEED, check_field_types, check_rules, strict_from_dict
from .data import ImageDataset, infinite_loader, load_dataset
from .diffusion import GaussianDiffusion, ScheduleConfig
from .ema import ema_decay_at, ema_update, saved_ema_weights
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
    init_from: str = ""  # a fresh run's starting weights: a checkpoint of the same UNet (e.g. its trained ANN)
    lr_final: float = 0.0  # cosine decay from lr (after warm-up) to this at the last step; 0 = constant lr
    distill_from: str = ""  # a teacher denoiser (e.g. the trained ANN) whose eps the model also learns
    distill_weight: float = 0.0  # w in (1 - w) * MSE(eps, noise) + w * MSE(eps, teacher eps); needs distill_from

    def __post_init__(self):
        check_field_types(self, "training", ints=("steps", "batch_size", "ema_bn_batches", "warmup", "seed",
                                                  "ckpt_every", "log_every"),
                          reals=("lr", "grad_clip", "ema_decay", "lr_final", "distill_weight"),
                          strs=("data", "precision", "init_from", "distill_from"))
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        rules = (("steps", self.steps >= 0, ">= 0"), ("batch_size", self.batch_size >= 1, ">= 1"),
                 ("lr", self.lr > 0, "> 0"), ("grad_clip", self.grad_clip >= 0, ">= 0 (0 = off)"),
                 ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1) (0 = off)"),
                 ("ema_bn_batches", self.ema_bn_batches >= 0, ">= 0"), ("warmup", self.warmup >= 0, ">= 0"),
                 ("seed", 0 <= self.seed <= MAX_SEED, f"in 0..{MAX_SEED}"),
                 ("ckpt_every", self.ckpt_every >= 1, ">= 1"), ("log_every", self.log_every >= 1, ">= 1"),
                 ("lr_final", 0 <= self.lr_final <= self.lr, "in [0, lr] (0 = constant lr)"),
                 ("distill_weight", 0 <= self.distill_weight <= 1, "in [0, 1]"))
        check_rules(self, "training", rules)
        if bool(self.distill_from) != (self.distill_weight > 0):
            raise ConfigError("training distill_from and distill_weight go together: a teacher checkpoint and a "
                              f"weight in (0, 1] (got distill_from={self.distill_from!r}, "
                              f"distill_weight={self.distill_weight})")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return strict_from_dict(cls, d, "training")


def load_config_file(path: str | os.PathLike) -> tuple[dict, dict, dict]:
    """Read a JSON config ``{"model": {...}, "train": {...}, "diffusion": {...}}``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict) or set(raw) - {"model", "train", "diffusion", "comment"}:
        raise ConfigError(f"{path}: config must be an object with keys model, train, diffusion")
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
    """Linear warm-up to ``lr``, then constant, or (``lr_final > 0``) a cosine from ``lr`` to ``lr_final`` at
    the stage's last step.  A function of the step alone, so a resumed run follows the same schedule; a
    resume with a larger ``--steps`` stretches the rest of the cosine."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_final <= 0:
        return cfg.lr
    progress = min(1.0, (step + 1 - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr_final + (cfg.lr - cfg.lr_final) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----- stages and steps ------------------------------------------------------------------
TSM_LR = 1e-5  # SDM section 7.1: fine-tuning learning rate, no EMA


def _step_generator(gen: torch.Generator, seed: int, rank: int, step: int) -> torch.Generator:
    """Noise and t of a step depend only on (seed, rank, step): resume is exact on every rank
    without carrying generator state around."""
    return gen.manual_seed((seed * 1_000_003 + rank) * 10_000_019 + step)


# ----- restoring: what a --resume checkpoint contributes (stage rules, config merge) -----
@dataclass
class _Start:
    """The configs a run starts from and, when resuming, the checkpoint it comes from.

    ``continuing`` means the checkpoint is of the same stage: model, EMA, optimizer, step,
    history and RNG all carry over.  Otherwise (``--tsm`` on a base checkpoint) only the
    model weights do."""

    model_cfg: UNetConfig
    train_cfg: TrainConfig
    schedule: ScheduleConfig
    state: dict[str, Any] | None = None
    continuing: bool = False
    source: str | os.PathLike = ""  # the checkpoint file, for messages


def _check_stage(resume: str | os.PathLike, saved_stage: str, tsm: bool) -> None:
    """Refuse checkpoints that ``sdm train`` must not continue (in the asked stage); ``load_checkpoint``
    has already refused a stage it does not know."""
    if saved_stage == "converted":
        raise CheckpointError(f"{resume}: is a converted SNN (sdm convert); sdm train does not continue it "
                              "(fine-tune it with sdm convert --finetune-steps)")
    if saved_stage == "tsm" and not tsm:
        raise CheckpointError(f"{resume}: is a TSM fine-tuning checkpoint; resume it with --tsm")


def _check_resumable(resume: str | os.PathLike, state: dict[str, Any], stage: str) -> None:
    """What continuing a stage reads besides the weights: optimizer state, step, loss history, RNG state."""
    if not isinstance(state.get("optimizer"), dict):
        if "optimizer" in state:
            raise CheckpointError(f"{resume}: optimizer must be an optimizer state dict, found "
                                  f"{type(state['optimizer']).__name__}")
        hint = ("fine-tune it with --tsm instead, or start a fresh run" if stage == "base" else
                "start a fresh run, or sample and export it as it is")
        raise CheckpointError(f"{resume}: has no optimizer state (imported or exported weights, not a training "
                              f"run), so sdm train cannot resume its {stage} stage; {hint}")
    if "step" not in state:
        raise CheckpointError(f"{resume}: has no step (the completed steps), so sdm train cannot resume it")
    history = state.get("history", [])
    if not isinstance(history, list) or not all(
            isinstance(h, (list, tuple)) and len(h) == 2 and all(isinstance(v, (int, float)) for v in h)
            for h in history):
        raise CheckpointError(f"{resume}: history must be a list of [step, mean loss] rows")
    rng = state.get("rng", {})
    if not isinstance(rng, dict) or set(rng) - {"torch"}:
        raise CheckpointError(f"{resume}: rng must be a mapping {{'torch': RNG state}}")
    if "torch" in rng:
        want = torch.get_rng_state()
        got = rng["torch"]
        if not isinstance(got, torch.Tensor) or got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape):
            found = f"{got.dtype} {list(got.shape)}" if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckpointError(f"{resume}: rng torch is not a torch RNG state (expected {want.dtype} "
                                  f"{list(want.shape)}, found {found})")


def _train_config(resume: str | os.PathLike, state: dict[str, Any], continuing: bool,
                  overrides: dict[str, Any]) -> TrainConfig:
    """The checkpoint's training config, switched to a constant ``TSM_LR`` and no EMA when a new stage
    starts, with ``overrides`` (checked as options) on top; an invalid result names the file when the file's
    own values are invalid."""
    saved = state.get("train_config", {})
    if not isinstance(saved, dict):
        raise CheckpointError(f"{resume}: train_config must be a mapping, found {type(saved).__name__}")
    stage_start = {} if continuing else {"lr": TSM_LR, "ema_decay": 0.0, "lr_final": 0.0}  # TSM: constant lr
    try:  # built once from all values, so that rules across fields (distill_from with distill_weight,
        # lr_final <= lr) see the run's actual combination
        return TrainConfig.from_dict({**saved, **stage_start, **overrides})
    except ConfigError as e:
        try:  # a file whose own values are fine: the options given are what does not fit
            TrainConfig.from_dict(saved)
        except ConfigError:
            raise CheckpointError(f"{resume}: train_config: {e}") from None
        raise


def _restore(resume: str | os.PathLike, stage: str, overrides: dict[str, Any] | None) -> _Start:
    """Architecture and schedule from the checkpoint; its training config as the base (switched to
    ``TSM_LR`` and no EMA when a new stage starts), with ``overrides`` on top."""
    state = load_checkpoint(resume)
    saved_stage = state.get("stage", "base")
    _check_stage(resume, saved_stage, tsm=stage == "tsm")
    continuing = saved_stage == stage
    model_cfg, schedule = denoiser_configs(state, resume)
    if continuing:
        _check_resumable(resume, state, stage)
    train_cfg = _train_config(resume, state, continuing, overrides or {})
    return _Start(model_cfg, train_cfg, schedule, state, continuing, resume)


def _starting_point(resume: str | os.PathLike | None, stage: str, model_cfg: UNetConfig | None,
                    train_cfg: TrainConfig | None, schedule: ScheduleConfig | None,
                    overrides: dict[str, Any] | None) -> _Start:
    """The run's configs: restored from ``resume`` when given, else the arguments (defaults for ``None``)."""
    if resume is not None:
        return _restore(resume, stage, overrides)
    return _Start(model_cfg or UNetConfig(), train_cfg or TrainConfig(), schedule or ScheduleConfig())


# ----- building the run: model, EMA, optimizer, data, diffusion --------------------------
@dataclass
class _Run:
    """Everything the step loop and the snapshots work on."""

    dist_info: Dist
    dev: torch.device
    stage: str
    train_cfg: TrainConfig
    schedule: ScheduleConfig
    model: SpikingUNet
    ddp_model: nn.Module  # the model itself, or its DDP wrapper
    ema: nn.Module | None
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    start: int  # first step of this run
    history: list[list[float]]  # [step, mean loss] rows, carried over on resume
    dataset: ImageDataset
    batches: Iterator[torch.Tensor]
    diffusion: GaussianDiffusion
    gen: torch.Generator
    use_bf16: bool
    teacher: nn.Module | None = None  # the distillation teacher (eval mode, frozen)


def _build_model(start: _Start, tsm: bool, dev: torch.device) -> tuple[SpikingUNet, nn.Module | None]:
    """The model (checkpoint weights, TSM gains when asked) and its EMA copy (when ``ema_decay > 0``)."""
    model = SpikingUNet(start.model_cfg)
    if start.state is not None:
        load_weights(model, start.state, "model", start.source)
    elif start.train_cfg.init_from:
        _init_weights(model, start.train_cfg.init_from)
    if tsm:
        model.enable_tsm()
    model.to(dev)
    ema = None
    if start.train_cfg.ema_decay > 0:
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        if start.continuing and start.state.get("ema") is not None:
            load_weights(ema, start.state, "ema", start.source)
    return model, ema


def _init_weights(model: SpikingUNet, path: str) -> None:
    """A fresh run's weights from the checkpoint ``path`` (its EMA weights when it has them): every conv,
    BatchNorm and time-embedding tensor of the same UNet, whatever its neurons (IF neurons and the ANN's
    activations hold no weights), so an SNN can start from its trained ANN.  TSM gains, a different
    architecture or another model family are refused in one line naming the file."""
    state = _unet_checkpoint(path, "--init-from")
    section = "ema" if state.get("ema") is not None else "model"
    if not isinstance(state.get(section), dict):
        raise CheckpointError(f"{path}: --init-from: no {section} weights in the checkpoint")
    load_weights(model, state, section, f"{path} (--init-from)")


def _unet_checkpoint(path: str, flag: str) -> dict[str, Any]:
    """The checkpoint ``path`` that ``flag`` reads weights from: a spiking-UNet (or ANN) one, not another
    model family's, refused in one line naming the file."""
    from .sd_model import checkpoint_kind

    state = load_checkpoint(path)
    if checkpoint_kind(state) is not None:
        raise CheckpointError(f"{path}: {flag} needs a spiking-UNet (or ANN) checkpoint, this is a "
                              f"{checkpoint_kind(state)} checkpoint")
    return state


def _load_optimizer(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], saved: dict,
                    source: str | os.PathLike) -> None:
    """The checkpoint's Adam state, refused in one line when it does not fit the trainable parameters."""
    groups, state = saved.get("param_groups"), saved.get("state")
    if not isinstance(groups, list) or not isinstance(state, dict) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise CheckpointError(f"{source}: optimizer is not an optimizer state dict (needs state and param_groups)")
    ids = [i for g in groups for i in g["params"]]
    if len(ids) != len(params):
        raise CheckpointError(f"{source}: optimizer state covers {len(ids)} parameters, the model trains "
                              f"{len(params)}")
    for i, p in zip(ids, params):
        for key, value in state.get(i, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != tuple(p.shape):
                raise CheckpointError(f"{source}: optimizer state {key!r} of parameter {i} has shape "
                                      f"{list(value.shape)}, the parameter has {list(p.shape)}")
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"{source}: optimizer state {key!r} of parameter {i} has NaN or Inf")
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{source}: optimizer state does not fit the model ({first[:160]})") from None


def _resume_progress(start: _Start, optimizer: torch.optim.Optimizer) -> tuple[int, list[list[float]]]:
    """``(first step, loss history)``; continuing a stage also restores the optimizer and torch's RNG."""
    if not start.continuing:
        return 0, []
    state = start.state
    _load_optimizer(optimizer, [p for g in optimizer.param_groups for p in g["params"]], state["optimizer"],
                    start.source)
    history = [list(h) for h in state.get("history", [])]
    if "torch" in state.get("rng", {}):
        try:
            torch.set_rng_state(state["rng"]["torch"])
        except (RuntimeError, TypeError, ValueError) as e:
            raise CheckpointError(f"{start.source}: rng torch is not a usable RNG state ({e})") from None
    return int(state["step"]), history


def _load_data(cfg: TrainConfig, model: SpikingUNet) -> ImageDataset:
    dataset = load_dataset(cfg.data, image_size=model.cfg.img_size)
    if dataset.channels != model.cfg.img_ch:
        raise ConfigError(
            f"data set {cfg.data!r} has {dataset.channels} channel(s) but the model expects {model.cfg.img_ch}")
    return dataset


def _build_run(start: _Start, stage: str, tsm: bool, dist_info: Dist, dev: torch.device) -> _Run:
    cfg = start.train_cfg
    if cfg.batch_size % dist_info.world_size:
        raise ConfigError(f"batch size {cfg.batch_size} is not divisible by {dist_info.world_size} processes")
    torch.manual_seed(cfg.seed)
    model, ema = _build_model(start, tsm, dev)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    first, history = _resume_progress(start, optimizer)
    ddp_model: nn.Module = model
    if dist_info.world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    dataset = _load_data(cfg, model)
    batches = infinite_loader(dataset, cfg.batch_size // dist_info.world_size, seed=cfg.seed,
                              rank=dist_info.rank, world_size=dist_info.world_size, start_batch=first)
    diffusion = GaussianDiffusion(start.schedule)
    gen = torch.Generator(device=dev)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and dev.type == "cuda")
    teacher = _load_teacher(cfg.distill_from, model, start.schedule, dev) if cfg.distill_from else None
    return _Run(dist_info, dev, stage, cfg, start.schedule, model, ddp_model, ema, params, optimizer, first,
                history, dataset, batches, diffusion, gen, use_bf16, teacher)


def _load_teacher(path: str, model: SpikingUNet, schedule: ScheduleConfig, dev: torch.device) -> nn.Module:
    """The distillation teacher (its EMA weights when it has them), frozen: any UNet checkpoint (an ANN,
    a wider SNN) of the same images and the same noise schedule, since its eps must mean the same thing
    at the same t; anything else is refused in one line naming the file."""
    from .sampling import model_from_checkpoint

    state = _unet_checkpoint(path, "--distill-from")
    teacher, diffusion, _ = model_from_checkpoint(path, use_ema=True, device=str(dev), ckpt=state)
    if diffusion.cfg != schedule:
        raise CheckpointError(f"{path}: --distill-from: the teacher's noise schedule {diffusion.cfg} is not the "
                              f"model's {schedule}")
    shape, want = (teacher.cfg.img_ch, teacher.cfg.img_size), (model.cfg.img_ch, model.cfg.img_size)
    if shape != want:
        raise CheckpointError(f"{path}: --distill-from: the teacher takes {shape[0]}x{shape[1]}x{shape[1]} images, "
                              f"the model {want[0]}x{want[1]}x{want[1]}")
    return teacher.requires_grad_(False)


# ----- the snapshot: what model.pt holds -------------------------------------------------
def _snapshot(run: _Run, step: int) -> dict[str, Any]:
    # the RNG state is read after the EMA recalibration, as it always was: resume stays exact
    return {
        "model_config": run.model.cfg.to_dict(),
        "train_config": dataclasses.asdict(run.train_cfg),
        "diffusion": dataclasses.asdict(run.schedule),
        "stage": run.stage,
        "model": run.model.state_dict(),
        "ema": saved_ema_weights(run.ema, run.train_cfg.ema_bn_batches,
                                 lambda: _noisy_batches(run.dataset, run.diffusion, run.train_cfg, step, run.dev)),
        "optimizer": run.optimizer.state_dict(),
        "step": step,
        "history": run.history,
        "rng": {"torch": torch.get_rng_state()},
        "data": {"spec": run.train_cfg.data, "channels": run.dataset.channels, "image_size": run.model.cfg.img_size},
    }


# ----- the step loop ---------------------------------------------------------------------
def _train_step(run: _Run, step: int, x0: torch.Tensor) -> float:
    """One optimizer step (and EMA update); returns the loss, averaged over the ranks."""
    cfg = run.train_cfg
    for g in run.optimizer.param_groups:
        g["lr"] = _lr_at(step, cfg)
    with torch.autocast(run.dev.type, dtype=torch.bfloat16, enabled=run.use_bf16):
        loss = run.diffusion.loss(run.ddp_model, x0,
                                  generator=_step_generator(run.gen, cfg.seed, run.dist_info.rank, step),
                                  teacher=run.teacher, teacher_weight=cfg.distill_weight)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
    run.optimizer.step()
    if run.ema is not None:
        ema_update(run.ema, run.model, ema_decay_at(step, cfg.ema_decay))
    value = loss.detach().float()
    if run.dist_info.world_size > 1:
        dist.all_reduce(value)
        value /= run.dist_info.world_size
    value = float(value)
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value} at step {step}; lower the learning rate")
    return value


def _step_loop(run: _Run, end: int, ckpt_path: Path, progress: bool) -> float:
    """Steps ``run.start`` to ``end``: log the mean loss every ``log_every`` steps, save every
    ``ckpt_every`` steps and at the end; returns the seconds spent."""
    from tqdm.auto import tqdm

    cfg = run.train_cfg
    run.model.train()
    bar = tqdm(range(run.start, end), initial=run.start, total=cfg.steps, desc=f"train[{run.stage}]",
               disable=not (progress and run.dist_info.is_main), dynamic_ncols=True)
    t0 = time.perf_counter()
    running, n_running = 0.0, 0
    for step in bar:
        x0 = next(run.batches).to(run.dev, non_blocking=True)
        running, n_running = running + _train_step(run, step, x0), n_running + 1
        done = step + 1
        if done % cfg.log_every == 0 or done == end:
            run.history.append([done, running / n_running])
            bar.set_postfix(loss=f"{running / n_running:.4f}")
            running, n_running = 0.0, 0
        if run.dist_info.is_main and (done % cfg.ckpt_every == 0 or done == end):
            save_checkpoint(ckpt_path, _snapshot(run, done))
    elapsed = time.perf_counter() - t0
    bar.close()
    return elapsed


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
    dist_info, dev = init_distributed(device)
    ckpt_path = Path(out_dir) / "model.pt"
    stage = "tsm" if tsm else "base"
    start = _starting_point(resume, stage, model_cfg, train_cfg, schedule, overrides)
    run = _build_run(start, stage, tsm, dist_info, dev)
    cfg = run.train_cfg
    end = cfg.steps if max_steps_this_run is None else min(cfg.steps, run.start + max_steps_this_run)
    elapsed = _step_loop(run, end, ckpt_path, progress)
    if dist_info.world_size > 1:
        dist.barrier()
    return {
        "checkpoint": str(ckpt_path),
        "stage": stage,
        "steps": end,
        "trained_steps": max(0, end - run.start),
        "seconds": elapsed,
        "images_per_s": (end - run.start) * cfg.batch_size / elapsed if end > run.start else 0.0,
        "history": run.history,
    }
