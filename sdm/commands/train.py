"""``sdm train``: train the spiking UNet (or resume it, or fine-tune it with TSM)."""

from __future__ import annotations

import os
from pathlib import Path

from sdm.errors import UserError

from . import options

MODEL_FLAGS = ("ch", "ch_mult", "num_res_blocks", "T", "img_size")
TRAIN_FLAGS = ("data", "steps", "batch_size", "lr", "ema_decay", "ema_bn_batches", "seed", "ckpt_every",
               "grad_clip", "warmup", "precision")


def add_parser(sub):
    p = sub.add_parser("train", help="train the spiking UNet (or resume / TSM-fine-tune it)",
                       description="Train the spiking UNet denoiser; writes DIR/model.pt atomically.",
                       parents=[options.seed(default=None), options.threads(), options.device(),
                                options.batch_size(default=None)])
    p.add_argument("--data", help="mnist-bundled | mnist:DIR | fashion-mnist:DIR | cifar10:DIR | folder:DIR")
    p.add_argument("--out", help="output directory (default: the resumed checkpoint's directory)")
    p.add_argument("--config", help="JSON file with 'model', 'train' and 'diffusion' sections")
    p.add_argument("--resume", metavar="MODEL.pt", help="continue from a checkpoint")
    p.add_argument("--tsm", action="store_true", help="temporal-wise spiking mechanism fine-tuning stage")
    p.add_argument("--steps", type=int, help="total steps of this stage")
    p.add_argument("--lr", type=float)
    p.add_argument("--ema-decay", type=float, help="EMA decay, 0 = off")
    p.add_argument("--ema-bn-batches", type=int,
                   help="training batches that recompute the EMA weights' BatchNorm statistics at each "
                        "checkpoint (default 8; 0 = copy the raw model's)")
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--ch", type=int, help="base channels")
    p.add_argument("--ch-mult", type=options.ints, help="e.g. 1,2,2,4")
    p.add_argument("--num-res-blocks", type=int)
    p.add_argument("--T", type=int, help="spiking steps per denoiser call")
    p.add_argument("--img-size", type=int)
    p.add_argument("--model", choices=["snn", "ann", "qann"],
                   help="snn: the spiking UNet (default); ann: the same UNet with an analog activation "
                        "(runs with T=1); qann: quantised-ReLU ANN for `sdm convert`")
    p.add_argument("--activation", choices=["swish", "relu"], help="activation of --model ann (default swish)")
    p.add_argument("--bits", type=int, help="activation bits of --model qann (default 2; converts to T = 2^bits - 1)")
    p.set_defaults(func=run)
    return p


def model_kind(a) -> dict:
    """``--model/--activation/--bits`` as UNetConfig fields (``neuron``, ``bits``)."""
    if a.activation and a.model != "ann":
        raise UserError("--activation applies to --model ann")
    if a.bits is not None and a.model != "qann":
        raise UserError("--bits applies to --model qann")
    if a.model == "ann":
        return {"neuron": a.activation or "swish"}
    if a.model == "qann":
        return {"neuron": "qrelu", "bits": 2 if a.bits is None else a.bits}
    return {"neuron": "if"} if a.model == "snn" else {}


def run(a) -> None:
    options.apply_threads(a)
    overrides = {k: getattr(a, k) for k in TRAIN_FLAGS if getattr(a, k) is not None}
    model_over = {k: getattr(a, k) for k in MODEL_FLAGS if getattr(a, k) is not None}
    model_over.update(model_kind(a))
    summary = _resume(a, overrides, model_over) if a.resume else _fresh(a, overrides, model_over)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 writes and reports
    if not summary["trained_steps"]:
        print(f"nothing to do: the {summary['stage']} stage already reached step {summary['steps']}")
        return
    hist = summary["history"]
    loss = f", loss {hist[0][1]:.4f} -> {hist[-1][1]:.4f}" if hist else ""
    print(f"wrote {summary['checkpoint']} ({summary['stage']} stage, step {summary['steps']}, "
          f"{summary['images_per_s']:.1f} img/s{loss})")


def _resume(a, overrides: dict, model_over: dict) -> dict:
    """``--resume MODEL.pt`` (with ``--tsm``: a fine-tuning stage beside the base model)."""
    from sdm.train.trainer import train

    if model_over or a.config:
        raise UserError("--resume takes the architecture from the checkpoint; drop --config and model options")
    out = a.out or str(Path(a.resume).parent)
    if a.tsm and not a.out:
        from sdm.train.checkpoint import load_checkpoint

        if load_checkpoint(a.resume).get("stage", "base") != "tsm":
            out = str(Path(a.resume).parent / "tsm")  # never overwrite the base model with its fine-tuning
            if a.steps is None:  # inheriting the base run's length would fine-tune for as long as it trained
                raise UserError("--tsm starts a fine-tuning stage: give its length with --steps N "
                                "(a small fraction of the base run)")
    return train(out, resume=a.resume, tsm=a.tsm, overrides=overrides, device=options.check_device(a.device))


def _fresh(a, overrides: dict, model_over: dict) -> dict:
    """A new run from ``--config`` and the command-line options."""
    from sdm.train.data import load_dataset
    from sdm.train.diffusion import ScheduleConfig
    from sdm.train.trainer import TrainConfig, load_config_file, train
    from sdm.train.unet import UNetConfig

    if a.tsm:
        raise UserError("--tsm fine-tunes a trained model: give it --resume MODEL.pt")
    if not a.out:
        raise UserError("--out DIR is required")
    m, t, d = load_config_file(a.config) if a.config else ({}, {}, {})
    train_cfg = TrainConfig.from_dict({**t, **overrides})
    model_dict = {**m, **model_over}
    if "img_ch" not in model_dict:  # follow the data set
        model_dict["img_ch"] = load_dataset(train_cfg.data, image_size=model_dict.get("img_size", 32)).channels
    model_cfg = UNetConfig.from_dict(model_dict)
    # device=None: train() picks cuda when available, per rank under torchrun
    return train(a.out, model_cfg, train_cfg, ScheduleConfig(**d), device=options.check_device(a.device))
