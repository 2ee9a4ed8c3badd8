"""``sdm train``: train the spiking UNet (or resume it, or fine-tune it with TSM)."""

from __future__ import annotations

import os
from pathlib import Path

from sdm.errors import UserError

from . import options

MODEL_FLAGS = ("ch", "ch_mult", "num_res_blocks", "T", "img_size")
TRAIN_FLAGS = ("data", "steps", "batch_size", "lr", "ema_decay", "ema_bn_batches", "seed", "ckpt_every",
               "grad_clip", "warmup", "precision", "init_from", "lr_final", "distill_from", "distill_weight")
DISTILL_WEIGHT = 0.5  # --distill-from without --distill-weight


def add_parser(sub):
    p = sub.add_parser("train", help="train the spiking UNet (or resume / TSM-fine-tune it)",
                       description="Train the spiking UNet denoiser; writes DIR/model.pt atomically.",
                       parents=[options.seed(default=None), options.threads(), options.device(),
                                options.batch_size(default=None),
                                options.force("replace a run already in --out DIR (its model.pt): a fresh run, "
                                              "or --resume of another checkpoint")])
    p.add_argument("--data", help="mnist-bundled | mnist:DIR | fashion-mnist:DIR | kmnist:DIR | emnist-letters:DIR | "
                                 "cifar10:DIR | folder:DIR")
    p.add_argument("--out", help="output directory (default: the resumed checkpoint's directory); DIR/.lock "
                                 "keeps a second sdm train out while this one runs")
    p.add_argument("--config", help="JSON file with 'model', 'train' and 'diffusion' sections")
    p.add_argument("--resume", metavar="MODEL.pt", help="continue from a checkpoint")
    p.add_argument("--tsm", action="store_true", help="temporal-wise spiking mechanism fine-tuning stage")
    p.add_argument("--init-from", metavar="MODEL.pt",
                   help="a fresh run's starting weights (EMA when present) from a checkpoint of the same UNet, e.g. "
                        "its trained ANN (--model ann): an SNN initialised from the ANN, then trained as an SNN")
    p.add_argument("--distill-from", metavar="TEACHER.pt",
                   help="distillation: the model also learns a trained denoiser's eps (e.g. its ANN's, "
                        "--model ann; EMA weights when present), same images and noise schedule")
    p.add_argument("--distill-weight", type=float,
                   help=f"w in (1 - w) MSE(eps, noise) + w MSE(eps, teacher eps), in (0, 1] (default "
                        f"{DISTILL_WEIGHT} with --distill-from)")
    p.add_argument("--steps", type=int, help="total steps of this stage")
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-final", type=float,
                   help="cosine decay of the learning rate from --lr (after the warm-up) to this value at the "
                        "stage's last step (default 0 = constant --lr)")
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
    p.add_argument("--img-size", type=int, help=f"image size, at most {options.MAX_IMG_SIZE} and a multiple of "
                                                "2^(levels - 1) of --ch-mult")
    p.add_argument("--model", choices=["snn", "ann", "qann", "vq-svae", "absorbing"],
                   help="snn: the spiking UNet (default); ann: the same UNet with an analog activation "
                        "(runs with T=1); qann: quantised-ReLU ANN for `sdm convert`; vq-svae, absorbing: the two "
                        "stages of Spiking-Diffusion (docs/spiking-diffusion.md)")
    p.add_argument("--vqvae", metavar="VQ.pt", help="--model absorbing: the trained VQ-SVAE whose tokens it learns")
    p.add_argument("--activation", choices=["swish", "relu"], help="activation of --model ann (default swish)")
    p.add_argument("--bits", type=int, help="activation bits of --model qann (default 2; converts to T = 2^bits - 1)")
    sd = p.add_argument_group("Spiking-Diffusion (--model vq-svae | absorbing)")
    sd.add_argument("--channels", type=options.ints,
                    help="vq-svae: the stride-2 encoder convs (default 32,64; the decoder mirrors them); "
                         "absorbing: SDID's convs (default 64,128,256,512,256; the first is the skip)")
    sd.add_argument("--codebook-size", type=int, help="vq-svae: codebook entries K (default 128)")
    sd.add_argument("--inputs", choices=["raw", "onehot"],
                    help="absorbing: SDID's input, raw token value and t (the reference, default) or one-hot "
                         "tokens and t / steps")
    sd.add_argument("--holdout", type=int, help="the last N images of the data set are not trained on (default 0)")
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
    _check_options(a)
    device = options.check_device(a.device)
    if a.model is None and a.resume:  # a resumed run keeps its family
        from sdm.train.checkpoint import load_checkpoint
        from sdm.train.sd_model import checkpoint_kind

        a.model = checkpoint_kind(load_checkpoint(a.resume))
    if a.model in ("vq-svae", "absorbing"):
        from . import train_sd

        train_sd.check_options(a)
        out, start = train_sd.start(a, device)
        _check_out(a, out)
        train_sd.report(_locked(a, out, start))
        return
    if a.vqvae:
        raise UserError("--vqvae applies to --model absorbing")
    from . import train_sd

    train_sd.refuse_sd_options(a)
    overrides = {k: getattr(a, k) for k in TRAIN_FLAGS if getattr(a, k) is not None}
    if a.distill_from and a.distill_weight is None:
        overrides["distill_weight"] = DISTILL_WEIGHT
    model_over = {k: getattr(a, k) for k in MODEL_FLAGS if getattr(a, k) is not None}
    model_over.update(model_kind(a))
    out, start = _resume(a, overrides, model_over, device) if a.resume else _fresh(a, overrides, model_over, device)
    summary = _locked(a, out, start)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 writes and reports
    if not summary["trained_steps"]:
        print(f"nothing to do: the {summary['stage']} stage already reached step {summary['steps']}")
        return
    hist = summary["history"]
    loss = f", loss {hist[0][1]:.4f} -> {hist[-1][1]:.4f}" if hist else ""
    print(f"wrote {summary['checkpoint']} ({summary['stage']} stage, step {summary['steps']}, "
          f"{summary['images_per_s']:.1f} img/s{loss})")


def _check_options(a) -> None:
    """The range checks of the command-line options (a configuration file's values: :func:`_check_config`)."""
    options.check_int(a.steps, "--steps", 1)
    options.check_float(a.lr, "--lr", low=0.0, low_open=True)
    options.check_float(a.lr_final, "--lr-final", low=0.0)
    options.check_float(a.distill_weight, "--distill-weight", low=0.0, high=1.0, low_open=True)
    if a.lr is not None and a.lr_final is not None and a.lr_final > a.lr:
        raise UserError(f"--lr-final {a.lr_final} must not exceed --lr {a.lr}: it is where the cosine decay ends")
    if a.distill_weight is not None and not a.distill_from and not a.resume:  # a resumed run may have its teacher
        raise UserError("--distill-weight weighs the teacher of --distill-from TEACHER.pt: give that too")
    options.check_float(a.ema_decay, "--ema-decay", low=0.0, high=1.0, high_open=True)
    options.check_int(a.ema_bn_batches, "--ema-bn-batches", 0)
    options.check_float(a.grad_clip, "--grad-clip", low=0.0)
    options.check_int(a.warmup, "--warmup", 0)
    options.check_int(a.ckpt_every, "--ckpt-every", 1)
    options.check_int(a.ch, "--ch", 2)
    options.check_int(a.num_res_blocks, "--num-res-blocks", 1)
    options.check_int(a.T, "--T", 1)
    options.check_int(a.codebook_size, "--codebook-size", 2)
    options.check_int(a.holdout, "--holdout", 0)
    if a.channels is not None and (not a.channels or min(a.channels) < 1):
        raise UserError(f"--channels must be positive integers, got {a.channels}")
    if a.ch_mult is not None and (not a.ch_mult or min(a.ch_mult) < 1):
        raise UserError(f"--ch-mult must be positive integers, got {a.ch_mult}")
    options.check_img_size(a.img_size, levels=len(a.ch_mult) - 1 if a.ch_mult else None)


def _check_config(model_dict: dict, train_cfg) -> None:
    """What UNetConfig and TrainConfig leave open: the image-size bound, finite numbers, a checkpoint
    and log interval of at least one step."""
    from sdm.train.unet import UNetConfig

    levels = len(model_dict.get("ch_mult", UNetConfig.ch_mult)) - 1
    options.check_img_size(model_dict.get("img_size"), "img_size (--img-size)", levels=levels)
    options.check_int(train_cfg.steps, "steps (--steps)", 1)
    options.check_int(train_cfg.ckpt_every, "ckpt_every (--ckpt-every)", 1)
    options.check_int(train_cfg.log_every, "log_every", 1)
    options.check_int(train_cfg.warmup, "warmup (--warmup)", 0)
    options.check_float(train_cfg.lr, "lr (--lr)", low=0.0, low_open=True)
    options.check_float(train_cfg.grad_clip, "grad_clip (--grad-clip)", low=0.0)
    UNetConfig.from_dict({"img_ch": 1, **model_dict})  # its own checks, before any data is loaded


def _check_out(a, out: str) -> None:
    """The output directory, before anything is loaded: writable, and holding no other run (checked
    again under the lock, which is what makes it certain)."""
    from sdm.paths import check_directory, check_run_dir

    label = "--out" if a.out else "output directory"
    check_directory(out, label, inputs=[("--resume", a.resume), ("--config", a.config)])
    if int(os.environ.get("RANK", "0")) == 0:
        check_run_dir(Path(out), label, resume=a.resume, force=a.force)


def _locked(a, out: str, start) -> dict:
    """``start()`` holding ``out/.lock``, after checking that ``out/model.pt`` may be written (rank 0
    only: under torchrun the other ranks neither write nor lock)."""
    from sdm.files import remove_stale_temps
    from sdm.paths import RUN_FILE, check_run_dir, run_lock

    if int(os.environ.get("RANK", "0")) != 0:
        return start()
    label = "--out" if a.out else "output directory"
    with run_lock(out, label):
        check_run_dir(Path(out), label, resume=a.resume, force=a.force)
        remove_stale_temps(Path(out) / RUN_FILE)  # left by a run killed while saving
        return start()


def _resume(a, overrides: dict, model_over: dict, device: str | None):
    """``--resume MODEL.pt`` (with ``--tsm``: a fine-tuning stage beside the base model): the output
    directory (checked) and the training to start."""
    from sdm.train.trainer import train

    if model_over or a.config:
        raise UserError("--resume takes the architecture from the checkpoint; drop --config and model options")
    if a.init_from:
        raise UserError("--init-from starts a fresh run; a resumed run takes its weights from --resume")
    out = a.out or str(Path(a.resume).parent)
    if a.tsm and not a.out:
        from sdm.train.checkpoint import load_checkpoint

        if load_checkpoint(a.resume).get("stage", "base") != "tsm":
            out = str(Path(a.resume).parent / "tsm")  # never overwrite the base model with its fine-tuning
            if a.steps is None:  # inheriting the base run's length would fine-tune for as long as it trained
                raise UserError("--tsm starts a fine-tuning stage: give its length with --steps N "
                                "(a small fraction of the base run)")
    _check_out(a, out)
    return out, lambda: train(out, resume=a.resume, tsm=a.tsm, overrides=overrides, device=device)


def _fresh(a, overrides: dict, model_over: dict, device: str | None):
    """A new run from ``--config`` and the command-line options: the output directory (checked) and
    the training to start."""
    from sdm.train.data import load_dataset
    from sdm.train.diffusion import ScheduleConfig
    from sdm.train.trainer import TrainConfig, load_config_file, train
    from sdm.train.unet import UNetConfig

    if a.tsm:
        raise UserError("--tsm fine-tunes a trained model: give it --resume MODEL.pt")
    if not a.out:
        raise UserError("--out DIR is required")
    _check_out(a, a.out)
    m, t, d = load_config_file(a.config) if a.config else ({}, {}, {})
    train_cfg = TrainConfig.from_dict({**t, **overrides})
    model_dict = {**m, **model_over}
    _check_config(model_dict, train_cfg)
    schedule = ScheduleConfig.from_dict(d)
    if "img_ch" not in model_dict:  # follow the data set
        model_dict["img_ch"] = load_dataset(train_cfg.data, image_size=model_dict.get("img_size", 32)).channels
    model_cfg = UNetConfig.from_dict(model_dict)
    # device=None: train() picks cuda when available, per rank under torchrun
    return a.out, lambda: train(a.out, model_cfg, train_cfg, schedule, device=device)
