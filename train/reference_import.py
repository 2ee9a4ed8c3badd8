"""Reading the SDDPM / SDM reference trainers' checkpoints into project checkpoints.

The reference trainer (SDDPM ``main_SDDPM.py``, SDM's TSM fine-tuning) saves
``{'net_model': state_dict, 'optim': ..., 'step': int, 'x_T': [N, C, H, W]}``, SDM also
``'ema_model'``.  The state dict is that of ``Spk_UNet`` (SDDPM) or ``Spk_UNet_TSM`` (SDM: every
conv wrapped as ``X.tsmconv.{weight,bias}`` with its gain ``X.tsmp [T,1,1,1,1]``).  Neither
records T (except through the TSM gains) nor the image size: T comes from the gains or the
user (default 4), the image size from ``x_T`` or the user.  The architecture (ch, ch_mult,
num_res_blocks, img_ch) is read off the tensor shapes; the keys map one to one onto
:class:`~sdm.train.unet.SpikingUNet`'s, with the output Conv3d's kernel (3, 3, 1) squeezed to a 2-D one.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError
from .diffusion import ScheduleConfig
from .unet import ResBlock, SpikingUNet, UNetConfig, count_parameters

SOURCES = ("sddpm", "sdm")
_PREFIXES = (  # reference -> project, first match wins
    ("time_embedding.timembedding.0.weight", "time_embedding.table"),
    ("time_embedding.timembedding.1.", "time_embedding.fc1."),
    ("time_embedding.timembedding.3.", "time_embedding.fc2."),
    ("conv_identity.", "stem.conv."), ("bn_identity.", "stem.bn."),
    ("conv.", "stem.conv_in."), ("bn.", "stem.bn_in."),
    ("downblocks.", "down."), ("middleblocks.", "middle."), ("upblocks.", "up."),
    ("tail_bn.", "tail.bn."), ("tail_conv.", "tail.conv."), ("T_output_layer.", "tail.out_conv."),
    ("last_bn.", "tail.out_bn."),
)


def project_key(key: str) -> str:
    """A reference state-dict key as the project's (``X.tsmconv.weight`` -> ``X.weight``,
    ``X.tsmp`` -> ``X.tsm_gain``)."""
    key = key.replace(".tsmconv.", ".")
    if key.endswith(".tsmp"):
        key = key[: -len(".tsmp")] + ".tsm_gain"
    for ref, ours in _PREFIXES:
        if key == ref or (ref.endswith(".") and key.startswith(ref)):
            return ours + key[len(ref):]
    raise CheckpointError(f"unknown reference key {key!r}")


def _load(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: not a readable reference checkpoint ({first[:160]})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("net_model"), dict):
        raise CheckpointError(f"{path}: not a reference trainer checkpoint (no 'net_model' state dict)")
    return obj


def _shape(sd: dict, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"reference state dict has no {key!r}: not an SDDPM/SDM spiking UNet")
    return tuple(sd[key].shape)


def infer_config(sd: dict, T: int | None = None, img_size: int | None = None) -> UNetConfig:
    """The project configuration of a reference state dict (see the module docstring)."""
    conv = "conv.tsmconv.weight" if "conv.tsmconv.weight" in sd else "conv.weight"
    ch, img_ch = _shape(sd, conv)[:2]
    steps = _shape(sd, "time_embedding.timembedding.0.weight")[0]
    down = sorted({int(m.group(1)) for k in sd if (m := re.match(r"downblocks\.(\d+)\.", k))})
    is_res = [f"downblocks.{i}.conv1.weight" in sd or f"downblocks.{i}.conv1.tsmconv.weight" in sd for i in down]
    if not down or not is_res[0]:
        raise CheckpointError("reference state dict: the down path does not start with a residual block")
    nrb = is_res.index(False) if False in is_res else len(is_res)
    levels = (len(down) + 1) // (nrb + 1)
    out_key = "downblocks.{}.conv1.tsmconv.weight" if "downblocks.0.conv1.tsmconv.weight" in sd else \
        "downblocks.{}.conv1.weight"
    mult = [_shape(sd, out_key.format(level * (nrb + 1)))[0] // ch for level in range(levels)]
    gains = [v for k, v in sd.items() if k.endswith(".tsmp")]
    tsm_T = int(gains[0].shape[0]) if gains else None
    if tsm_T is not None and T is not None and T != tsm_T:
        raise CheckpointError(f"--T {T} contradicts the file's TSM gains, which have {tsm_T} steps")
    try:
        return UNetConfig(img_ch=img_ch, img_size=img_size or 32, ch=ch, ch_mult=tuple(mult), num_res_blocks=nrb,
                          T=tsm_T or T or 4, diffusion_steps=steps, tsm=tsm_T is not None)
    except ValueError as e:
        raise CheckpointError(f"reference state dict: inferred architecture is invalid ({e})") from None


def map_state_dict(sd: dict, model: SpikingUNet) -> dict[str, torch.Tensor]:
    """The reference weights under the project's names and shapes; refuses a key or shape that does not fit."""
    target = model.state_dict()
    out = {}
    for key, value in sd.items():
        ours = project_key(key)
        if ours not in target:
            raise CheckpointError(f"reference key {key!r} ({ours}) has no place in the inferred architecture")
        if ours.endswith("tsm_gain"):
            value = value.reshape(-1)
        elif key.startswith("T_output_layer.") and value.dim() == 5:
            value = value.squeeze(-1)  # Conv3d kernel (3, 3, 1) = a per-step 2-D conv
        if tuple(value.shape) != tuple(target[ours].shape):
            raise CheckpointError(f"reference key {key!r}: shape {tuple(value.shape)} does not fit {ours} "
                                  f"{tuple(target[ours].shape)} of the inferred architecture")
        out[ours] = value.to(target[ours].dtype)
    missing = sorted(set(target) - set(out))
    if missing:
        raise CheckpointError(f"reference state dict lacks {missing[0]} (and {len(missing) - 1} more) of the "
                              "inferred architecture")
    return out


def reference_parameters(sd: dict) -> int:
    """Parameters of a reference state dict (BatchNorm running statistics are buffers, not parameters)."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(v.numel() for k, v in sd.items() if not k.endswith(buffers))


def import_reference(path: str | os.PathLike, source: str, T: int | None = None, img_size: int | None = None,
                     ema: bool = False) -> dict[str, Any]:
    """A project checkpoint payload (for :func:`~sdm.train.checkpoint.save_checkpoint`) from a reference file."""
    if source not in SOURCES:
        raise CheckpointError(f"--from must be one of {', '.join(SOURCES)}, got {source!r}")
    path = Path(path)
    obj = _load(path)
    sd = obj["net_model"]
    if ema and not isinstance(obj.get("ema_model"), dict):
        raise CheckpointError(f"{path}: --ema asked for, but the file has no 'ema_model'")
    x_T = obj.get("x_T")
    if img_size is None and isinstance(x_T, torch.Tensor) and x_T.dim() == 4:
        img_size = int(x_T.shape[-1])
    cfg = infer_config(sd, T, img_size)
    if source == "sdm" and not cfg.tsm:
        raise CheckpointError(f"{path}: --from sdm expects Spk_UNet_TSM weights (X.tsmconv / X.tsmp); "
                              "this is a plain Spk_UNet file: use --from sddpm")
    if source == "sddpm" and cfg.tsm:
        raise CheckpointError(f"{path}: a Spk_UNet_TSM file (TSM gains): use --from sdm")
    model = SpikingUNet(cfg)
    weights = map_state_dict(sd, model)
    ema_weights = map_state_dict(obj["ema_model"], model) if ema else None
    if count_parameters(model) != reference_parameters(sd):
        raise CheckpointError(f"{path}: {reference_parameters(sd)} reference parameters, the inferred model has "
                              f"{count_parameters(model)}")
    blocks = sum(isinstance(b, ResBlock) for b in (*model.down, *model.middle, *model.up))
    return {
        "model_config": cfg.to_dict(), "diffusion": ScheduleConfig(steps=cfg.diffusion_steps).__dict__.copy(),
        "stage": "tsm" if cfg.tsm else "base", "model": weights, "ema": ema_weights,
        "step": int(obj.get("step", 0)),
        "imported_from": {"path": str(path), "format": source, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                          "step": int(obj.get("step", 0)), "weights": "ema_model" if ema else "net_model",
                          "res_blocks": blocks, "parameters": reference_parameters(sd)},
    }
