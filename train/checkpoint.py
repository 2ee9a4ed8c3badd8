"""Checkpoint files: atomic writes and safe, validated reads.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(weights_only=True)``: a file crafted to run code on
unpickling is refused instead of executed.  Writes go to a temporary file in the
target directory and are renamed into place, so an interrupted save never leaves
a half-written ``model.pt``.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from sdm.errors import SDMError
from sdm.files import atomic_write

FORMAT = "sdm-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("format", "version", "model_config", "model")


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
    if obj["version"] > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {obj['version']} is newer than this tool ({VERSION})")
    return obj


def uses_ema(ckpt: dict[str, Any], use_ema: bool = True) -> bool:
    """Whether a model built from ``ckpt`` gets its EMA weights: asked for, and present."""
    return bool(use_ema and ckpt.get("ema") is not None)


def checkpoint_weights(ckpt: dict[str, Any], use_ema: bool = True) -> dict[str, Any]:
    """The state dict a model is built from: the EMA weights when asked for and present, else the raw ones."""
    return ckpt["ema"] if uses_ema(ckpt, use_ema) else ckpt["model"]
