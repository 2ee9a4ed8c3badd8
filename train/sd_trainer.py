"""Training of the two Spiking-Diffusion stages (docs/spiking-diffusion.md):

- :func:`train_vqsvae`: the VQ-SVAE on images (``model.pt`` of kind ``vq-svae``);
- :func:`train_absorbing`: the SDID denoiser of the absorbing diffusion on the token grids of a
  frozen VQ-SVAE (``model.pt`` of kind ``absorbing``, self-contained: it embeds the VQ-SVAE and
  the encoded tokens).

The recipe is the reference's: AdamW (lr 1e-3, betas (0.9, 0.999), weight decay 1e-3 on every
parameter), batch 32, no scheduler, clipping or EMA.  Training is counted in optimizer steps, not
epochs.  A run is resumable bit-exactly on CPU: the data stream depends only on (seed, batch
number) and the masking noise of the absorbing stage only on (seed, rank, step), so re-running with
``resume=DIR/model.pt`` finishes the same schedule with the same result as an uninterrupted run.

Options beyond the reference, as for the UNet (train/trainer.py): an EMA of the weights
(``ema_decay > 0``) saved as ``ema`` with BatchNorm statistics recomputed for the averaged network
(train/ema.py), and DDP under torchrun (the global batch split over the ranks; rank 0 saves).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import distributed as dist
from torch import nn

from sdm.errors import ConfigError

from .absorbing import AbsorbingConfig, AbsorbingDiffusion
from .checkpoint import CheckpointError, load_weights, save_checkpoint
from .config import MAX_SEED, check_field_types, check_rules, strict_from_dict
from .data import ImageDataset, infinite_loader, load_dataset
from .ema import ema_decay_at, ema_update, saved_ema_weights
from .sd_model import (
    ABSORBING_KIND,
    KIND_KEY,
    VQSVAE_KIND,
    build_vqsvae,
    check_stages,
    check_tokens,
    open_checkpoint,
    section_config,
)
from .sdid import SDID, SDIDConfig
from .trainer import Dist, init_distributed
from .vqsvae import VQSVAE, VQSVAEConfig, data_variance, vqsvae_loss


@dataclass
class SDTrainConfig:
    """Training settings of either stage (stored in the checkpoint as ``train_config``)."""

    data: str = "mnist-bundled"
    steps: int = 1000  # optimizer steps of the stage in total (a resumed run finishes them)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-3
    grad_clip: float = 0.0  # 0 = off (the reference does not clip)
    ema_decay: float = 0.0  # 0 = off (the reference has no EMA)
    ema_bn_batches: int = 8  # batches that recompute the EMA network's BatchNorm statistics at each save
    holdout: int = 0  # images never trained on: a fixed random subset (holdout_split), the same in both stages
    seed: int = 42
    ckpt_every: int = 500
    log_every: int = 10

    def __post_init__(self):
        check_field_types(self, "training", ints=("steps", "batch_size", "holdout", "seed", "ckpt_every",
                                                  "log_every", "ema_bn_batches"),
                          reals=("lr", "weight_decay", "grad_clip", "ema_decay"), strs=("data",))
        rules = (("steps", self.steps >= 0, ">= 0"), ("batch_size", self.batch_size >= 1, ">= 1"),
                 ("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
                 ("grad_clip", self.grad_clip >= 0, ">= 0 (0 = off)"), ("holdout", self.holdout >= 0, ">= 0"),
                 ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1) (0 = off)"),
                 ("ema_bn_batches", self.ema_bn_batches >= 0, ">= 0"),
                 ("seed", 0 <= self.seed <= MAX_SEED, f"in 0..{MAX_SEED}"),
                 ("ckpt_every", self.ckpt_every >= 1, ">= 1"), ("log_every", self.log_every >= 1, ">= 1"))
        check_rules(self, "training", rules)

    @classmethod
    def from_dict(cls, d: dict) -> "SDTrainConfig":
        return strict_from_dict(cls, d, "training")


# ----- shared pieces ---------------------------------------------------------------------
HOLDOUT_SEED = 0


def holdout_split(n: int, holdout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(training indices, held-out indices)`` of a data set of ``n`` images, both ascending.

    The held-out images are the last ``holdout`` of a permutation seeded by a fixed seed, so they
    depend on ``n`` alone: both stages and every training seed hold out the same images, and a
    label-sorted data set (mnist-bundled is sorted by digit) still keeps every class in training."""
    if not 0 <= holdout < n:
        raise ConfigError(f"holdout={holdout} must leave training images of the {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    return perm[:n - holdout].sort().values, perm[n - holdout:].sort().values


def _training_images(cfg: SDTrainConfig, img_size: int, img_ch: int) -> ImageDataset:
    """The data set at the model's size and channels, without its held-out images (:func:`holdout_split`)."""
    ds = load_dataset(cfg.data, image_size=img_size, channels=img_ch)
    if cfg.holdout >= len(ds):
        raise ConfigError(f"holdout={cfg.holdout} leaves no training images of the {len(ds)} in {cfg.data!r}")
    keep, _ = holdout_split(len(ds), cfg.holdout)
    labels = None if ds.labels is None else ds.labels[keep]
    return ImageDataset(ds.images_uint8[keep], ds.name, labels, ds.hflip)


def _index_stream(n: int, batch_size: int, seed: int, start_batch: int = 0, dist_info: Dist | None = None
                  ) -> Iterator[torch.Tensor]:
    """Index batches into ``n`` items: consecutive slices of per-epoch permutations seeded by
    (seed, epoch), a batch may span two epochs; batch ``b`` depends only on (seed, b).  Under DDP
    each rank takes its share of the same global batch."""
    dist_info = dist_info or Dist()
    share = batch_size // dist_info.world_size
    batch = start_batch
    while True:
        pos = torch.arange(batch * batch_size, (batch + 1) * batch_size)
        epochs, offsets = pos // n, pos % n
        index = torch.empty(batch_size, dtype=torch.long)
        for epoch in epochs.unique().tolist():
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            index[epochs == epoch] = perm[offsets[epochs == epoch]]
        yield index[dist_info.rank * share:(dist_info.rank + 1) * share]
        batch += 1


def _train_config(saved: Any, overrides: dict[str, Any], source: str) -> SDTrainConfig:
    if not isinstance(saved, dict):
        raise CheckpointError(f"{source}: train_config must be a mapping, found {type(saved).__name__}")
    try:
        base = SDTrainConfig.from_dict({k: v for k, v in saved.items() if k not in overrides})
    except ConfigError as e:
        raise CheckpointError(f"{source}: train_config: {e}") from None
    return dataclasses.replace(base, **overrides)


def _optimizer(model: nn.Module, cfg: SDTrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)


@dataclass
class _Run:
    kind: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    cfg: SDTrainConfig
    dev: torch.device
    fixed: dict[str, Any]  # the checkpoint sections that do not change during the run
    dist_info: Dist = dataclasses.field(default_factory=Dist)
    net: nn.Module | None = None  # what the forward pass calls: the model, or its DDP wrapper
    ema: nn.Module | None = None  # the running average (its buffers copied from the model)
    start: int = 0
    history: list[list[float]] = dataclasses.field(default_factory=list)  # [step, mean loss]
    parts: list[list[float]] = dataclasses.field(default_factory=list)  # [step, vq, psp, mse] (VQ-SVAE only)
    step_fn: Callable[[int], tuple[float, list[float]]] | None = None  # one optimizer step -> (loss, parts)
    bn_batches: Callable[[int], Iterable[tuple]] | None = None  # step -> forward arguments for BN recalibration


def _new_run(kind: str, model: nn.Module, cfg: SDTrainConfig, dev: torch.device, dist_info: Dist,
             ckpt: dict[str, Any] | None, source: str, fixed: dict[str, Any]) -> _Run:
    """The run of a model whose weights are loaded: optimizer, EMA copy, DDP wrapper, resumed state."""
    if cfg.batch_size % dist_info.world_size:
        raise ConfigError(f"batch size {cfg.batch_size} is not divisible by {dist_info.world_size} processes")
    run = _Run(kind, model, _optimizer(model, cfg), cfg, dev, fixed, dist_info, net=model)
    if dist_info.world_size > 1:
        run.net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist_info.local_rank] if dev.type == "cuda" else None)
    if cfg.ema_decay > 0:
        run.ema = copy.deepcopy(model).eval().requires_grad_(False)
        if ckpt is not None and ckpt.get("ema") is not None:
            load_weights(run.ema, ckpt, "ema", source)
    _resume_state(run, ckpt, source)
    return run


def _resume_state(run: _Run, ckpt: dict[str, Any] | None, source: str) -> None:
    """Weights are loaded by the caller; here the optimizer, step and histories of a resumed run."""
    if ckpt is None:
        return
    if not isinstance(ckpt.get("optimizer"), dict):
        raise CheckpointError(f"{source}: has no optimizer state, so it cannot be resumed")
    step = ckpt.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{source}: step must be a non-negative integer, got {step!r}")
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{source}: optimizer state does not fit the model ({first[:160]})") from None
    for key in ("history", "history_parts"):
        rows = ckpt.get(key, [])
        if not isinstance(rows, list) or not all(isinstance(r, (list, tuple)) for r in rows):
            raise CheckpointError(f"{source}: {key} must be a list of rows")
    run.start = step
    run.history = [list(r) for r in ckpt.get("history", [])]
    run.parts = [list(r) for r in ckpt.get("history_parts", [])]


def _snapshot(run: _Run, step: int) -> dict[str, Any]:
    return {KIND_KEY: run.kind, **run.fixed, "train_config": dataclasses.asdict(run.cfg),
            "model": run.model.state_dict(),
            "ema": saved_ema_weights(run.ema, run.cfg.ema_bn_batches, lambda: run.bn_batches(step)),
            "optimizer": run.optimizer.state_dict(), "step": step,
            "history": run.history, "history_parts": run.parts}


def _optimizer_step(run: _Run, loss: torch.Tensor, step: int) -> float:
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    run.optimizer.step()
    if run.ema is not None:
        ema_update(run.ema, run.model, ema_decay_at(step, run.cfg.ema_decay))
    value = loss.detach().float()
    if run.dist_info.world_size > 1:
        dist.all_reduce(value)
        value /= run.dist_info.world_size
    value = float(value)
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value} at step {step}; lower the learning rate")
    return value


def _loop(run: _Run, end: int, ckpt_path: Path, progress: bool) -> float:
    """Steps ``run.start .. end``: mean loss every ``log_every`` steps, a save every ``ckpt_every``
    steps and at the end; returns the seconds spent."""
    from tqdm.auto import tqdm

    cfg = run.cfg
    run.model.train()
    bar = tqdm(range(run.start, end), initial=run.start, total=cfg.steps, desc=f"train[{run.kind}]",
               disable=not (progress and run.dist_info.is_main), dynamic_ncols=True)
    t0 = time.perf_counter()
    total, parts, count = 0.0, None, 0
    for step in bar:
        loss, step_parts = run.step_fn(step)
        total, count = total + loss, count + 1
        parts = step_parts if parts is None else [a + b for a, b in zip(parts, step_parts)]
        done = step + 1
        if done % cfg.log_every == 0 or done == end:
            run.history.append([done, total / count])
            if parts:
                run.parts.append([done, *[p / count for p in parts]])
            bar.set_postfix(loss=f"{total / count:.4f}")
            total, parts, count = 0.0, None, 0
        if run.dist_info.is_main and (done % cfg.ckpt_every == 0 or done == end):
            save_checkpoint(ckpt_path, _snapshot(run, done))
    bar.close()
    return time.perf_counter() - t0


def _finish(run: _Run, out_dir, progress: bool, max_steps_this_run: int | None) -> dict[str, Any]:
    end = run.cfg.steps if max_steps_this_run is None else min(run.cfg.steps, run.start + max_steps_this_run)
    ckpt_path = Path(out_dir) / "model.pt"
    seconds = _loop(run, end, ckpt_path, progress)
    if run.dist_info.world_size > 1:
        dist.barrier()
    trained = max(0, end - run.start)
    return {"checkpoint": str(ckpt_path), "kind": run.kind, "steps": end, "trained_steps": trained,
            "seconds": seconds, "seconds_per_step": seconds / trained if trained else 0.0,
            "history": run.history, "history_parts": run.parts}


def _start(resume, kind: str, train_cfg: SDTrainConfig | None, overrides: dict[str, Any] | None
           ) -> tuple[dict[str, Any] | None, str, SDTrainConfig]:
    """``(checkpoint or None, its name, the run's training config)``."""
    overrides = dict(overrides or {})
    if resume is None:
        return None, "", dataclasses.replace(train_cfg or SDTrainConfig(), **overrides)
    ckpt, source = open_checkpoint(resume, kind)
    return ckpt, source, _train_config(ckpt.get("train_config", {}), overrides, source)


# ----- stage 1: VQ-SVAE ------------------------------------------------------------------
def train_vqsvae(out_dir: str | os.PathLike, model_cfg: VQSVAEConfig | None = None,
                 train_cfg: SDTrainConfig | None = None, resume: str | os.PathLike | None = None,
                 overrides: dict[str, Any] | None = None, device: str | None = None, progress: bool = True,
                 max_steps_this_run: int | None = None) -> dict[str, Any]:
    """Train (or resume) the VQ-SVAE, writing ``out_dir/model.pt``; returns a summary (``history``:
    ``[step, mean loss]`` rows, ``history_parts``: ``[step, vq, psp, mse]`` rows).

    With ``resume`` the architecture comes from the checkpoint, its training config is the base
    and ``overrides`` (e.g. ``{"steps": 2000}``) win; ``model_cfg``/``train_cfg`` are then ignored."""
    ckpt, source, cfg = _start(resume, VQSVAE_KIND, train_cfg, overrides)
    if ckpt is not None:
        model_cfg = section_config(VQSVAEConfig, ckpt["model_config"], "model_config", source)
    model_cfg = model_cfg or VQSVAEConfig()
    dist_info, dev = init_distributed(device)
    torch.manual_seed(cfg.seed)
    model = VQSVAE(model_cfg)
    if ckpt is not None:
        load_weights(model, ckpt, "model", source)
    model.to(dev)
    dataset = _training_images(cfg, model_cfg.img_size, model_cfg.img_ch)
    variance = data_variance(dataset.images_uint8.float() / 127.5 - 1.0, model_cfg.data_scale)
    fixed = {"model_config": model_cfg.to_dict(), "data_variance": variance,
             "data": {"spec": cfg.data, "channels": dataset.channels, "image_size": dataset.image_size,
                      "images": len(dataset)}}
    run = _new_run(VQSVAE_KIND, model, cfg, dev, dist_info, ckpt, source, fixed)
    batches = infinite_loader(dataset, cfg.batch_size // dist_info.world_size, seed=cfg.seed, rank=dist_info.rank,
                              world_size=dist_info.world_size, start_batch=run.start)

    def step_fn(step: int) -> tuple[float, list[float]]:
        x = next(batches).to(dev)
        loss, parts = vqsvae_loss(model, run.net(x), x, variance)
        return _optimizer_step(run, loss, step), [parts["vq"], parts["psp"], parts["mse"]]

    def bn_batches(step: int) -> Iterator[tuple[torch.Tensor]]:
        seed = cfg.seed * 10_000_019 + step + 1  # a stream of its own: the training stream is untouched
        for _, x in zip(range(cfg.ema_bn_batches), infinite_loader(dataset, cfg.batch_size, seed=seed)):
            yield (x.to(dev),)

    run.step_fn, run.bn_batches = step_fn, bn_batches
    return _finish(run, out_dir, progress, max_steps_this_run)


# ----- stage 2: absorbing diffusion with SDID --------------------------------------------
@torch.no_grad()
def encode_tokens(vq: VQSVAE, dataset: ImageDataset, batch_size: int = 256) -> torch.Tensor:
    """The code grids ``[N, h, w]`` (int16) of every image, the VQ-SVAE in eval mode.  The neurons
    start from rest on every batch (the reference leaked membrane state from batch to batch)."""
    vq.eval()
    device = next(vq.parameters()).device
    out = []
    for first in range(0, len(dataset), batch_size):
        x = dataset.images_uint8[first:first + batch_size].to(device).float() / 127.5 - 1.0
        out.append(vq.tokens(x).to(torch.int16).cpu())
    return torch.cat(out)


def _first_stage(vqvae_path, ckpt: dict[str, Any] | None, source: str, cfg: SDTrainConfig, dev: torch.device,
                 ) -> tuple[dict[str, Any], torch.Tensor, VQSVAEConfig]:
    """``(vqvae section, tokens, VQ-SVAE config)``: from the checkpoint when resuming, else the
    VQ-SVAE file encodes the training images once."""
    if ckpt is not None:
        section = ckpt.get("vqvae")
        if not isinstance(section, dict):
            raise CheckpointError(f"{source}: vqvae must be a mapping (the embedded VQ-SVAE)")
        vq, _ = build_vqsvae(section, f"{source} (vqvae)")
        tokens = check_tokens(ckpt.get("tokens"), vq.cfg.codebook_size, vq.cfg.latent_size, source)
        return section, tokens, vq.cfg
    if vqvae_path is None:
        raise ConfigError("training the absorbing diffusion needs a VQ-SVAE checkpoint (vqvae_path)")
    vq_ckpt, vq_source = open_checkpoint(vqvae_path, VQSVAE_KIND)
    vq, variance = build_vqsvae(vq_ckpt, vq_source)  # its EMA weights when it has them
    tokens = encode_tokens(vq.to(dev), _training_images(cfg, vq.cfg.img_size, vq.cfg.img_ch))
    section = {"model_config": vq.cfg.to_dict(), "model": {k: v.cpu() for k, v in vq.state_dict().items()},
               "data_variance": variance, "source": str(vqvae_path), "step": vq_ckpt.get("step", 0)}
    return section, tokens, vq.cfg


def _stage2_configs(ckpt, source, vq_cfg: VQSVAEConfig, model_cfg: SDIDConfig | None,
                    diffusion_cfg: AbsorbingConfig | None, sdid_options: dict[str, Any] | None = None,
                    ) -> tuple[SDIDConfig, AbsorbingConfig]:
    """SDID and diffusion configs: the checkpoint's when resuming, else the arguments, defaulting to
    the VQ-SVAE's codebook size and one step per token (49 for 7 x 7); ``sdid_options`` (e.g.
    ``{"channels": (16, 32, 64, 128, 64)}``) are SDIDConfig fields over those defaults."""
    if ckpt is not None:
        model_cfg = section_config(SDIDConfig, ckpt["model_config"], "model_config", source)
        diffusion_cfg = section_config(AbsorbingConfig, ckpt.get("absorbing"), "absorbing", source)
    steps = vq_cfg.latent_size ** 2
    diffusion_cfg = diffusion_cfg or AbsorbingConfig(codebook_size=vq_cfg.codebook_size, steps=steps)
    model_cfg = model_cfg or SDIDConfig(codebook_size=vq_cfg.codebook_size, steps=diffusion_cfg.steps,
                                        **(sdid_options or {}))
    try:
        check_stages(vq_cfg, model_cfg, diffusion_cfg)
    except ConfigError as e:
        if ckpt is not None:
            raise CheckpointError(f"{source}: {e}") from None
        raise
    return model_cfg, diffusion_cfg


def train_absorbing(out_dir: str | os.PathLike, vqvae_path: str | os.PathLike | None = None,
                    model_cfg: SDIDConfig | None = None, train_cfg: SDTrainConfig | None = None,
                    diffusion_cfg: AbsorbingConfig | None = None, resume: str | os.PathLike | None = None,
                    overrides: dict[str, Any] | None = None, device: str | None = None, progress: bool = True,
                    max_steps_this_run: int | None = None, sdid_options: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Train (or resume) the SDID denoiser on the tokens of the VQ-SVAE ``vqvae_path``, writing
    ``out_dir/model.pt`` (kind ``absorbing``); returns a summary as :func:`train_vqsvae`.

    A fresh run encodes the training images (``train_cfg.data`` less ``holdout``) once with the
    frozen VQ-SVAE.  With ``resume`` the VQ-SVAE, the tokens and the configs come from the
    checkpoint (``vqvae_path`` is not read) and ``overrides`` win over its training config."""
    ckpt, source, cfg = _start(resume, ABSORBING_KIND, train_cfg, overrides)
    dist_info, dev = init_distributed(device)
    vq_section, tokens, vq_cfg = _first_stage(vqvae_path, ckpt, source, cfg, dev)
    model_cfg, diffusion_cfg = _stage2_configs(ckpt, source, vq_cfg, model_cfg, diffusion_cfg, sdid_options)
    torch.manual_seed(cfg.seed)
    model = SDID(model_cfg)
    if ckpt is not None:
        load_weights(model, ckpt, "model", source)
    model.to(dev)
    diffusion = AbsorbingDiffusion(diffusion_cfg)
    fixed = {"model_config": model_cfg.to_dict(), "absorbing": diffusion_cfg.to_dict(), "vqvae": vq_section,
             "tokens": tokens, "data": {"spec": cfg.data, "images": int(tokens.shape[0])}}
    run = _new_run(ABSORBING_KIND, model, cfg, dev, dist_info, ckpt, source, fixed)
    batches = _index_stream(tokens.shape[0], cfg.batch_size, cfg.seed, run.start, dist_info)
    gen = torch.Generator()

    def step_fn(step: int) -> tuple[float, list[float]]:
        x0 = tokens[next(batches)].long().to(dev)
        # the masking noise depends only on (seed, rank, step): resume is exact on every rank
        loss = diffusion.loss(run.net, x0, gen.manual_seed((cfg.seed * 1_000_003 + dist_info.rank) * 10_000_019
                                                           + step))
        return _optimizer_step(run, loss, step), []

    def bn_batches(step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Noised token grids at uniform t, the distribution SDID trains on, from streams of their own."""
        bn_gen = torch.Generator().manual_seed(cfg.seed * 10_000_019 + step + 1)
        for _, index in zip(range(cfg.ema_bn_batches), _index_stream(tokens.shape[0], cfg.batch_size,
                                                                      cfg.seed + step + 1)):
            x0 = tokens[index].long()
            t = diffusion.sample_t(x0.shape[0], bn_gen, torch.device("cpu"))
            x_t, _, _ = diffusion.q_sample(x0, t, bn_gen)
            yield x_t.to(dev), t.to(dev)

    run.step_fn, run.bn_batches = step_fn, bn_batches
    return _finish(run, out_dir, progress, max_steps_this_run)
