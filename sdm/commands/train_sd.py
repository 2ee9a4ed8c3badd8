"""``sdm train --model vq-svae|absorbing``: the two stages of Spiking-Diffusion (docs/spiking-diffusion.md).

Stage 1 trains the VQ-SVAE on 28x28 images; stage 2 (``--model absorbing --vqvae VQ.pt``) trains the
SDID denoiser on the frozen VQ-SVAE's tokens.  Both write ``DIR/model.pt`` under the same run lock and
destination rules as the UNet, and resume exactly with ``--resume``.
"""

from __future__ import annotations

from sdm.errors import UserError

# the options of `sdm train` that mean something to these two stages: training settings, and the
# architecture of each stage (a fresh run only; a resumed one takes it from its checkpoint)
SD_FLAGS = ("data", "steps", "batch_size", "lr", "seed", "ckpt_every", "grad_clip", "holdout", "ema_decay",
            "ema_bn_batches")
ARCHITECTURE = {"vq-svae": ("T", "channels", "codebook_size"), "absorbing": ("T", "channels", "inputs")}
UNET_ONLY = ("config", "tsm", "init_from", "distill_from", "distill_weight", "lr_final", "warmup", "precision",
             "ch", "ch_mult", "num_res_blocks", "img_size", "activation", "bits")
SD_ONLY = ("channels", "codebook_size", "inputs", "holdout")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def refuse_sd_options(a) -> None:
    """The spiking UNet's runs refuse the Spiking-Diffusion options instead of ignoring them."""
    given = [name for name in SD_ONLY if getattr(a, name, None) is not None]
    if given:
        raise UserError(f"{_flag(given[0])} applies to --model vq-svae / absorbing, not to the spiking UNet")


def check_options(a) -> None:
    """Refuse the UNet's options (and --vqvae where it does not apply) instead of ignoring them."""
    given = [name for name in UNET_ONLY if getattr(a, name, None) not in (None, False)]
    if given:
        raise UserError(f"{_flag(given[0])} applies to the spiking UNet, not to --model {a.model}")
    other = next(name for name in ARCHITECTURE if name != a.model)
    wrong = [name for name in ARCHITECTURE[other] if name not in ARCHITECTURE[a.model]
             and getattr(a, name, None) is not None]
    if wrong:
        raise UserError(f"{_flag(wrong[0])} applies to --model {other}, not to --model {a.model}")
    arch = architecture(a)
    if arch and a.resume:
        raise UserError(f"--resume takes the architecture from the checkpoint; drop {_flag(next(iter(arch)))}")
    if a.model == "absorbing" and not a.vqvae and not a.resume:
        raise UserError("--model absorbing trains on a VQ-SVAE's tokens: give --vqvae VQ.pt "
                        "(from sdm train --model vq-svae)")
    if a.model == "vq-svae" and a.vqvae:
        raise UserError("--vqvae applies to --model absorbing")


def architecture(a) -> dict:
    """The architecture options given, as fields of VQSVAEConfig / SDIDConfig."""
    return {name: getattr(a, name) for name in ARCHITECTURE[a.model] if getattr(a, name, None) is not None}


def start(a, device: str | None):
    """``(output directory, the training to start)`` of a fresh or resumed stage."""
    from pathlib import Path

    from sdm.train.sd_trainer import SDTrainConfig, train_absorbing, train_vqsvae
    from sdm.train.vqsvae import VQSVAEConfig

    overrides = {k: getattr(a, k) for k in SD_FLAGS if getattr(a, k) is not None}
    out = a.out or (str(Path(a.resume).parent) if a.resume else None)
    if not out:
        raise UserError("--out DIR is required")
    if a.resume:
        if a.model == "vq-svae":
            return out, lambda: train_vqsvae(out, resume=a.resume, overrides=overrides, device=device)
        return out, lambda: train_absorbing(out, resume=a.resume, overrides=overrides, device=device)
    cfg = SDTrainConfig(**overrides)
    arch = architecture(a)
    if a.model == "vq-svae":
        model_cfg = VQSVAEConfig(**arch)  # checked before any data is read
        return out, lambda: train_vqsvae(out, model_cfg, train_cfg=cfg, device=device)
    return out, lambda: train_absorbing(out, a.vqvae, train_cfg=cfg, sdid_options=arch, device=device)


def report(summary: dict) -> None:
    if not summary["trained_steps"]:
        print(f"nothing to do: the {summary['kind']} run already reached step {summary['steps']}")
        return
    hist = summary["history"]
    loss = f", loss {hist[0][1]:.4f} -> {hist[-1][1]:.4f}" if hist else ""
    print(f"wrote {summary['checkpoint']} ({summary['kind']}, step {summary['steps']}, "
          f"{summary['seconds_per_step']:.2f} s per step{loss})")
