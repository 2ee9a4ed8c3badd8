"""Checkpoint files: atomic writes and safe, validated reads.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(weights_only=True)``: a file crafted to run code on
unpickling is refused instead of executed.  Writes go to a temporary file in the
target directory and are renamed into place, so an interrupted save never leaves
a half-written ``model.pt``.

Reads validate the contents too (:func:`check_contents` on every load; :func:`denoiser_configs`
and :func:`check_state_dict` where a denoiser is built from the file): a wrong type, an unknown
key, a NaN weight or a tensor that does not fit the configuration is one :class:`CheckpointError`
line naming the file and the field or tensor (docs/model.md, "Validation on load").
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from sdm.errors import ConfigError, SDMError
from sdm.files import atomic_write

from .diffusion import ScheduleConfig
from .moments import Moments
from .unet import SpikingUNet, UNetConfig

FORMAT = "sdm-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("format", "version", "model_config", "model")
STAGES = ("base", "tsm", "converted")  # sdm train (base, --tsm), sdm convert


class CheckpointError(SDMError):
    """A file that is not a readable checkpoint of this project; the message names the file."""


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    payload = {"format": FORMAT, "version": VERSION, **payload}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _looks_like_torch_save(path: Path) -> bool:
    """A zip archive (torch.save since 1.6) or a pickle (protocol >= 2 starts with 0x80)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint; every failure is a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a model.pt checkpoint")
    if not _looks_like_torch_save(path):
        raise CheckpointError(f"{path}: not a checkpoint (neither a torch.save zip archive nor a pickle)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        blocked = next((line for line in lines if "GLOBAL" in line), None)
        if blocked is not None:  # the pickle wants to import something: what an attack looks like
            raise CheckpointError(f"{path}: refused to load: the file contains Python objects that are not "
                                  f"plain data (unsafe pickle: {blocked[:160]})") from None
        detail = next((line for line in lines if line.startswith("Unsupported")), lines[-1])
        raise CheckpointError(f"{path}: not a checkpoint (unreadable pickle: {detail[:160]})") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({msg[:160]})") from None
    except Exception as e:  # any other failure inside torch's reader is still a bad file
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        kind = type(obj).__name__ if not isinstance(obj, dict) else "dict without format tag"
        raise CheckpointError(f"{path}: not an sdm checkpoint (found a {kind})")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing {', '.join(missing)}")
    if isinstance(obj["version"], bool) or not isinstance(obj["version"], int):
        raise CheckpointError(f"{path}: checkpoint version must be an integer, got {obj['version']!r}")
    if obj["version"] > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {obj['version']} is newer than this tool ({VERSION})")
    check_contents(obj, path)
    return obj


# ----- contents ---------------------------------------------------------------------------
def check_contents(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """The checks every checkpoint passes on load, each a one-line :class:`CheckpointError` naming the
    field: section types, finite weights (``model`` and ``ema``), a valid ``diffusion`` schedule, a known
    ``stage``, a non-negative ``step`` and a well-formed ``moments`` record within the schedule."""
    if not isinstance(ckpt["model_config"], dict):
        raise CheckpointError(f"{path}: model_config must be a mapping, found {type(ckpt['model_config']).__name__}")
    _check_weights(ckpt, "model", path)
    if ckpt.get("ema") is not None:
        _check_weights(ckpt, "ema", path)
    schedule = checkpoint_schedule(ckpt, path)
    stage = ckpt.get("stage", "base")
    if stage not in STAGES:
        raise CheckpointError(f"{path}: unknown stage {stage!r} (known: {', '.join(STAGES)})")
    step = ckpt.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: step must be a non-negative integer, got {step!r}")
    if ckpt.get("moments") is not None:
        try:
            Moments.from_dict(ckpt["moments"]).check_schedule(schedule.steps)
        except ConfigError as e:
            raise CheckpointError(f"{path}: {e}") from None


def _check_weights(ckpt: dict[str, Any], section: str, path) -> None:
    """``ckpt[section]`` is a state dict of tensors without NaN or Inf."""
    weights = ckpt[section]
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: {section!r} must be a state dict of tensors, found {type(weights).__name__}")
    for name, t in weights.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: {section} weight {name!r} is not a tensor ({type(t).__name__})")
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            raise CheckpointError(f"{path}: {section} weight {name!r} has {bad}")


def checkpoint_schedule(ckpt: dict[str, Any], path: str | os.PathLike) -> ScheduleConfig:
    """The checkpoint's ``diffusion`` schedule (the default linear schedule when it has none)."""
    section = ckpt.get("diffusion")
    if section is None:
        return ScheduleConfig()
    try:
        return ScheduleConfig.from_dict(section)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def denoiser_configs(ckpt: dict[str, Any], path: str | os.PathLike) -> tuple[UNetConfig, ScheduleConfig]:
    """The architecture and schedule of a denoiser checkpoint, checked against each other."""
    try:
        cfg = UNetConfig.from_dict(ckpt["model_config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: model_config does not match the spiking UNet: {e}") from None
    schedule = checkpoint_schedule(ckpt, path)
    if schedule.steps > cfg.diffusion_steps:
        raise CheckpointError(f"{path}: diffusion steps={schedule.steps} exceed model_config "
                              f"diffusion_steps={cfg.diffusion_steps} (the rows of the time-embedding table)")
    return cfg, schedule


def build_denoiser(cfg: UNetConfig, path: str | os.PathLike) -> SpikingUNet:
    """``SpikingUNet(cfg)``; a configuration the network refuses names the file."""
    try:
        return SpikingUNet(cfg)
    except ConfigError as e:
        raise CheckpointError(f"{path}: model_config does not match the spiking UNet: {e}") from None


def check_state_dict(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], section: str,
                     path: str | os.PathLike) -> None:
    """``weights`` (the checkpoint's ``section``) has exactly the tensors of ``expected`` (a model's
    state dict), shape for shape; the first mismatch is a :class:`CheckpointError` naming it."""
    unet = "does not match the spiking UNet that model_config describes"
    for name, t in weights.items():
        if name not in expected:
            raise CheckpointError(f"{path}: {section} weight {name!r} {unet} (it has no such tensor)")
        ref = expected[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{path}: {section} weight {name!r} has shape {list(t.shape)}, which {unet} "
                                  f"({list(ref.shape)})")
        if t.is_floating_point() != ref.is_floating_point():
            raise CheckpointError(f"{path}: {section} weight {name!r} has dtype {t.dtype}, which {unet} ({ref.dtype})")
    missing = [k for k in expected if k not in weights]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: {section} weights lack {missing[0]!r}{more}: they do not match the spiking "
                              "UNet that model_config describes")


def load_weights(model: torch.nn.Module, ckpt: dict[str, Any], section: str, path: str | os.PathLike) -> None:
    """Load ``ckpt[section]`` into ``model`` after :func:`check_state_dict`."""
    check_state_dict(ckpt[section], model.state_dict(), section, path)
    model.load_state_dict(ckpt[section])


def uses_ema(ckpt: dict[str, Any], use_ema: bool = True) -> bool:
    """Whether a model built from ``ckpt`` gets its EMA weights: asked for, and present."""
    return bool(use_ema and ckpt.get("ema") is not None)


def checkpoint_weights(ckpt: dict[str, Any], use_ema: bool = True) -> dict[str, Any]:
    """The state dict a model is built from: the EMA weights when asked for and present, else the raw ones."""
    return ckpt["ema"] if uses_ema(ckpt, use_ema) else ckpt["model"]
