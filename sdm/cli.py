"""The ``sdm`` command line.  Each subcommand is a thin layer over a Python API;
known failures (bad files, bad options) become one ``sdm: error: ...`` line and
exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input, reported as one line."""


def _floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number")
    return vals


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# ----- train ----------------------------------------------------------------------------
MODEL_FLAGS = {"ch": "ch", "ch_mult": "ch_mult", "num_res_blocks": "num_res_blocks", "T": "T",
               "img_size": "img_size"}
TRAIN_FLAGS = ("data", "steps", "batch_size", "lr", "ema_decay", "ema_bn_batches", "seed", "ckpt_every",
               "grad_clip", "warmup", "precision")


def add_train(sub):
    p = sub.add_parser("train", help="train the spiking UNet (or resume / TSM-fine-tune it)",
                       description="Train the spiking UNet denoiser; writes DIR/model.pt atomically.")
    p.add_argument("--data", help="mnist-bundled | mnist:DIR | fashion-mnist:DIR | cifar10:DIR | folder:DIR")
    p.add_argument("--out", help="output directory (default: the resumed checkpoint's directory)")
    p.add_argument("--config", help="JSON file with 'model', 'train' and 'diffusion' sections")
    p.add_argument("--resume", metavar="MODEL.pt", help="continue from a checkpoint")
    p.add_argument("--tsm", action="store_true", help="temporal-wise spiking mechanism fine-tuning stage")
    p.add_argument("--steps", type=int, help="total steps of this stage")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--ema-decay", type=float, help="EMA decay, 0 = off")
    p.add_argument("--ema-bn-batches", type=int,
                   help="training batches that recompute the EMA weights' BatchNorm statistics at each "
                        "checkpoint (default 8; 0 = copy the raw model's)")
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--ch", type=int, help="base channels")
    p.add_argument("--ch-mult", type=_ints, help="e.g. 1,2,2,4")
    p.add_argument("--num-res-blocks", type=int)
    p.add_argument("--T", type=int, help="spiking steps per denoiser call")
    p.add_argument("--img-size", type=int)
    p.add_argument("--model", choices=["snn", "ann", "qann"],
                   help="snn: the spiking UNet (default); ann: the same UNet with an analog activation "
                        "(runs with T=1); qann: quantised-ReLU ANN for `sdm convert`")
    p.add_argument("--activation", choices=["swish", "relu"], help="activation of --model ann (default swish)")
    p.add_argument("--bits", type=int, help="activation bits of --model qann (default 2; converts to T = 2^bits - 1)")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.set_defaults(func=cmd_train)


def _model_kind(a) -> dict:
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


def cmd_train(a):
    import dataclasses

    import torch

    from sdm.train.data import load_dataset
    from sdm.train.diffusion import ScheduleConfig
    from sdm.train.trainer import TrainConfig, load_config_file, train
    from sdm.train.unet import UNetConfig

    if a.threads:
        torch.set_num_threads(a.threads)
    overrides = {k: getattr(a, k) for k in TRAIN_FLAGS if getattr(a, k) is not None}
    model_over = {v: getattr(a, k) for k, v in MODEL_FLAGS.items() if getattr(a, k) is not None}
    model_over.update(_model_kind(a))
    if a.resume:
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
        summary = train(out, resume=a.resume, tsm=a.tsm, overrides=overrides, device=a.device)
    else:
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
        summary = train(a.out, model_cfg, train_cfg, ScheduleConfig(**d), device=a.device)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 writes and reports
    if not summary["trained_steps"]:
        print(f"nothing to do: the {summary['stage']} stage already reached step {summary['steps']}")
        return
    hist = summary["history"]
    loss = f", loss {hist[0][1]:.4f} -> {hist[-1][1]:.4f}" if hist else ""
    print(f"wrote {summary['checkpoint']} ({summary['stage']} stage, step {summary['steps']}, "
          f"{summary['images_per_s']:.1f} img/s{loss})")


# ----- sample ---------------------------------------------------------------------------
def add_sample(sub):
    p = sub.add_parser("sample", help="generate a PNG grid of samples",
                       description="Sample images from a trained checkpoint and write a PNG grid.")
    p.add_argument("model", metavar="MODEL.pt")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (DDPM always uses all)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("-n", type=int, default=64, help="number of images")
    p.add_argument("--out", default="samples.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold-scale", type=float, default=1.0, help="threshold guidance: theta' = S * theta")
    p.add_argument("--threshold-sweep", type=_floats, help="e.g. 0.997,1.0,1.003: one grid per value")
    p.add_argument("--no-ema", action="store_true", help="use raw weights even if EMA weights exist")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--scale", type=int, default=2, help="enlarge the PNG by this factor")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_sample)


def cmd_sample(a):
    import torch

    from sdm.train.sampling import generate, model_from_checkpoint, save_grid, sweep_paths

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.n < 1:
        raise UserError("-n must be >= 1")
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, diffusion, _ = model_from_checkpoint(a.model, use_ema=not a.no_ema, device=device)
    scales = a.threshold_sweep or [a.threshold_scale]
    paths = sweep_paths(a.out, scales) if a.threshold_sweep else [Path(a.out)]
    for s, path in zip(scales, paths):
        t0 = time.perf_counter()
        x = generate(model, diffusion, a.n, sampler=a.sampler, steps=a.steps, eta=a.eta, seed=a.seed,
                     threshold_scale=s, batch_size=a.batch_size, device=device)
        save_grid(x, path, scale=a.scale)
        print(f"wrote {path} ({a.n} samples, {a.sampler}, threshold x{s:g}, {time.perf_counter() - t0:.1f} s)")


# ----- convert ----------------------------------------------------------------------------
def add_convert(sub):
    p = sub.add_parser("convert", help="convert a quantised ANN (train --model qann) into a spiking checkpoint",
                       description="ANN-to-SNN conversion (Fast-SNN, SDM section 6): IF neurons with T = 2^bits - 1, "
                                   "threshold = the layer's clip alpha, membrane starting at theta/2, reset by "
                                   "subtraction, signed spikes unless --unsigned (docs/conversion.md).")
    p.add_argument("model", metavar="QANN.pt")
    p.add_argument("--out", required=True, metavar="SNN.pt")
    p.add_argument("--no-ema", action="store_true", help="convert raw weights even if EMA weights exist")
    p.add_argument("--unsigned", action="store_true",
                   help="binary 0/1 spikes only (the paper's setting) instead of signed spikes, where a neuron "
                        "that has fired takes a spike back with a -1 spike (the reference code's default)")
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="block-wise fine-tuning steps per block (MSE to the quantised ANN's block outputs)")
    p.add_argument("--finetune-lr", type=float, default=1e-4,
                   help="Adam learning rate of the fine-tuning (1e-6 barely moves a 2-bit UNet: docs/conversion.md)")
    p.add_argument("--data", help="training data for fine-tuning (default: the QANN's training data)")
    p.add_argument("--batch-size", type=int, default=16, help="fine-tuning batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_convert)


def cmd_convert(a):
    import torch

    from sdm.train.checkpoint import load_checkpoint, save_checkpoint
    from sdm.train.conversion import convert_qann

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.finetune_steps < 0:
        raise UserError("--finetune-steps must be >= 0")
    ckpt = load_checkpoint(a.model)
    out = convert_qann(ckpt, use_ema=not a.no_ema, source=a.model, signed=not a.unsigned)
    msg = ""
    if a.finetune_steps:
        from sdm.train.conversion import finetune_from_checkpoints

        block_mse = finetune_from_checkpoints(ckpt, out, a.finetune_steps, lr=a.finetune_lr, data=a.data,
                                              batch_size=a.batch_size, seed=a.seed, use_ema=not a.no_ema)
        before, after = (sum(col) / len(col) for col in zip(*block_mse))
        msg = (f", fine-tuned {len(block_mse)} blocks x {a.finetune_steps} steps "
               f"(mean block mse {before:.3e} -> {after:.3e})")
    save_checkpoint(a.out, out)
    c = out["conversion"]
    print(f"wrote {a.out}: spiking UNet, T={c['T']} ({c['bits']}-bit), {len(c['thetas'])} neuron layers, "
          f"{'signed' if c['signed'] else 'unsigned'} spikes, "
          f"thresholds {min(c['thetas']):.3g}..{max(c['thetas']):.3g}{msg}")


# ----- export-nir / import-nir ----------------------------------------------------------
def add_export(sub):
    p = sub.add_parser("export-nir", help="write a trained model as a NIR graph",
                       description="Export MODEL.pt to NIR: the whole spiking UNet, exactly (docs/nir-format.md).")
    _export_args(p)
    return p


def _export_args(p):
    p.add_argument("model", metavar="MODEL.pt")
    p.add_argument("-o", "--out", metavar="MODEL.nir", help="output file (default: MODEL.nir beside MODEL.pt)")
    p.add_argument("--threshold-scale", type=float, default=1.0, help="bake threshold guidance into the neurons")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="weight precision in the file (float64 for bit-level verification)")
    p.add_argument("--no-ema", action="store_true", help="export raw weights even if EMA weights exist")
    p.set_defaults(func=cmd_export)


def cmd_export(a):
    from sdm.export.api import export_checkpoint

    s = export_checkpoint(a.model, a.out, threshold_scale=a.threshold_scale, dtype=a.dtype,
                          use_ema=not a.no_ema, progress=True)
    print(f"wrote {s['path']}: {s['nodes']} nodes, {s['edges']} edges, {s['parameters']:,} parameters, "
          f"{s['neurons']:,} neurons in {s['neuron_groups']} groups, T={s['T']}, {s['bytes'] / 1e6:.2f} MB, "
          f"{s['dtype']}, extensions: {', '.join(s['extensions']) or 'none'} ({s['seconds']:.2f} s)")


def add_import(sub):
    p = sub.add_parser("import-nir", help="rebuild a PyTorch denoiser from a NIR file and check or sample it",
                       description="Load MODEL.nir as an executable PyTorch denoiser; optionally compare it "
                                   "layer by layer with the checkpoint it came from, or sample a grid with it.")
    p.add_argument("nir_file", metavar="MODEL.nir")
    p.add_argument("--compare", metavar="MODEL.pt", help="check spikes and eps against this checkpoint")
    p.add_argument("--sample", metavar="GRID.png", help="sample a grid with the imported denoiser")
    p.add_argument("-n", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps for --sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--no-ema", action="store_true",
                   help="compare with the checkpoint's raw weights (for files exported with --no-ema)")
    p.set_defaults(func=cmd_import)


def cmd_import(a):
    import torch

    from sdm.export.api import graph_summary, import_nir

    den = import_nir(a.nir_file, dtype=a.dtype)
    s = graph_summary(den.graph)
    print(f"{a.nir_file}: {s['nodes']} nodes, {s['edges']} edges, {s['parameters']:,} parameters, "
          f"{s['neuron_groups']} neuron groups, T={s['T']}, extensions: {', '.join(s['extensions']) or 'none'}")
    if a.compare:
        from sdm.export.verify import compare
        from sdm.train.sampling import model_from_checkpoint

        from sdm.train.neuron import set_threshold_scale

        model, _, _ = model_from_checkpoint(a.compare, use_ema=not a.no_ema)
        model = model.to(den.dtype)
        # The file has threshold guidance baked in; the checkpoint must run with the same scale.
        set_threshold_scale(model, den.graph.host.threshold_scale)
        c, h, w = den.graph.host.img_shape
        g = torch.Generator().manual_seed(a.seed)
        x = torch.randn(4, c, h, w, generator=g, dtype=den.dtype)
        t = torch.tensor([0, 250, 600, 999])
        r = compare(model, den, x, t)
        steps = sum(v["neuron_steps"] for v in r["layers"].values())
        print(f"compared with {a.compare} on 4 noisy images at t=0,250,600,999: {r['total_mismatches']} of "
              f"{steps:,} neuron-steps differ in {len(r['layers'])} layers; max |eps| difference "
              f"{r['eps_max_abs_err']:.2e}")
    if a.sample:
        from sdm.train.diffusion import GaussianDiffusion, ScheduleConfig, sample
        from sdm.images import save_grid

        sched = den.graph.host.schedule
        diffusion = GaussianDiffusion(ScheduleConfig(int(sched["steps"]), sched["beta_start"], sched["beta_end"]))
        c, h, w = den.graph.host.img_shape
        gen = torch.Generator().manual_seed(a.seed)
        x = sample(den, diffusion, (a.n, c, h, w), sampler="ddim", steps=a.steps, generator=gen, progress=True)
        print(f"wrote {save_grid(x, a.sample, scale=2)}")


# ----- simulate ---------------------------------------------------------------------------
def add_simulate(sub):
    p = sub.add_parser("simulate", help="run denoising steps of a NIR model in Lava (CPU)",
                       description="Build Lava processes from MODEL.nir, compile once, run K denoising steps with "
                                   "the diffusion arithmetic on the host, and compare every call with PyTorch.")
    p.add_argument("nir_file", metavar="MODEL.nir")
    p.add_argument("--denoise-steps", type=int, default=4, help="number of denoiser calls K")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim",
                   help="ddim: a K-step DDIM schedule; ddpm: the first K ancestral steps")
    p.add_argument("--mode", choices=["floating_pt", "fixed_pt"], default="floating_pt")
    p.add_argument("-n", type=int, default=1, help="images, pipelined through the network as one batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold-scale", type=float, default=1.0)
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(a):
    from sdm.neuromorphic.run import simulate

    r = simulate(a.nir_file, a.out, denoise_steps=a.denoise_steps, n=a.n, sampler=a.sampler, mode=a.mode,
                 seed=a.seed, threshold_scale=a.threshold_scale)
    per_call = r["seconds_per_call_after_first"]
    print(f"{r['mode']}: {r['denoise_steps']} denoiser calls x {r['images']} image(s), {r['lava_processes']} Lava "
          f"processes, {r['lava_steps_per_call']} Lava steps per call; compile + first call "
          f"{r['compile_and_first_call_seconds']:.1f} s" + (f", then {per_call:.2f} s per call" if per_call else ""))
    worst = max(r["spike_mismatch_rate"].items(), key=lambda kv: kv[1])
    print(f"vs PyTorch: {r['total_spike_mismatches']} spike mismatches (worst layer {worst[0]}: {worst[1]:.2%}), "
          f"max eps error {max(r['eps_max_abs_err_per_call']):.2e}, final image max error "
          f"{r['final_image_max_abs_err']:.2e}")
    print(f"wrote {a.out}/samples.png, reference.png, spikes.h5, report.json")


# ----- train-classifier / eval -------------------------------------------------------------
def add_train_classifier(sub):
    p = sub.add_parser("train-classifier", help="train the small classifier behind the offline metric of `sdm eval`",
                       description="Train a small CNN classifier on a labelled data set (held-out split for its "
                                   "accuracy) and store it with the data set's reference feature statistics "
                                   "(docs/evaluation.md).")
    p.add_argument("--data", default="mnist-bundled",
                   help="labelled data set: mnist-bundled | mnist:DIR | fashion-mnist:DIR | cifar10:DIR")
    p.add_argument("--out", required=True, metavar="PATH", help="e.g. runs/mnist/classifier.pt (beside model.pt)")
    p.add_argument("--img-size", type=int, default=32, help="must equal the diffusion model's image size")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of the data held out for the accuracy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_train_classifier)


def cmd_train_classifier(a):
    import torch

    from sdm.train.classifier import reference_statistics, save_classifier, train_classifier
    from sdm.train.data import load_dataset

    if a.threads:
        torch.set_num_threads(a.threads)
    if not 0 < a.holdout < 1:
        raise UserError("--holdout must be between 0 and 1")
    if a.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ds = load_dataset(a.data, image_size=a.img_size)
    model, info = train_classifier(ds, a.data, steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                                   holdout=a.holdout, device=device)
    ref = reference_statistics(model, ds, device=device)
    save_classifier(a.out, model, a.data, info, ref)
    print(f"wrote {a.out}: {a.data} {ds.channels}x{ds.image_size}x{ds.image_size}, {model.cfg.num_classes} classes, "
          f"held-out accuracy {info['test_accuracy']:.2%} on {info['n_test']} images ({info['steps']} steps, "
          f"{info['seconds']:.1f} s); reference statistics of {ref['n']} images")


def add_eval(sub):
    p = sub.add_parser("eval", help="sample a model and score the samples (classifier FID, confidence, FID/IS)",
                       description="Generate N samples and report the offline metric (FID in the feature space of "
                                   "the project's classifier, its confidence) and, with --inception-weights, standard "
                                   "FID and Inception Score (docs/evaluation.md).")
    p.add_argument("model", metavar="MODEL.pt")
    p.add_argument("-n", "--n", type=int, default=1000, help="number of samples")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (DDPM always uses all)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("--threshold-scale", type=float, default=1.0, help="threshold guidance: theta' = S * theta")
    p.add_argument("--no-ema", action="store_true", help="use raw weights even if EMA weights exist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--classifier", metavar="PATH", help="classifier checkpoint (default: classifier.pt beside MODEL.pt)")
    p.add_argument("--inception-weights", metavar="PATH",
                   help="local torch-fidelity InceptionV3 weights: adds standard FID and IS")
    p.add_argument("--ref-n", type=int, help="data set images for the Inception reference statistics (default: all)")
    p.add_argument("--data", help="reference data set (default: the model's training data)")
    p.add_argument("--json", metavar="OUT.json", help="write all numbers and settings here")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_eval)


def cmd_eval(a):
    import json

    import torch

    from sdm.train.evaluate import evaluate, format_table

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.ref_n is not None and a.ref_n < 2:
        raise UserError("--ref-n must be >= 2")
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    r = evaluate(a.model, n=a.n, sampler=a.sampler, steps=a.steps, eta=a.eta, threshold_scale=a.threshold_scale,
                 use_ema=not a.no_ema, seed=a.seed, batch_size=a.batch_size, classifier=a.classifier,
                 inception_weights=a.inception_weights, data=a.data, ref_n=a.ref_n, device=device)
    print(format_table(r), end="")
    if a.json:
        from sdm.files import atomic_write

        atomic_write(a.json, lambda tmp: Path(tmp).write_text(json.dumps(r, indent=2) + "\n"))
        print(f"wrote {a.json}")


# ----- energy -----------------------------------------------------------------------------
def add_energy(sub):
    p = sub.add_parser("energy", help="per-layer energy report from real firing rates",
                       description="Count synaptic operations (AC) and multiply-accumulates (MAC) per layer from "
                                   "spikes measured on real denoising trajectories (PyTorch) or a Lava run (--sim).")
    p.add_argument("model", metavar="MODEL.pt")
    p.add_argument("--denoise-steps", type=int, default=4, help="denoiser calls of the measured trajectory")
    p.add_argument("-n", type=int, default=4, help="images in the measured trajectory")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="measure on training images noised to the same t instead of a trajectory")
    p.add_argument("--sim", metavar="DIR", help="use the spike records of `sdm simulate --out DIR`")
    p.add_argument("--preset", default="45nm-fp32", choices=["45nm-fp32", "45nm-fp16", "45nm-int8", "loihi"])
    p.add_argument("--memory", action="store_true", help="add an estimate of weight memory reads")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--out", metavar="FILE", help="write the report here instead of standard output")
    p.add_argument("--plot", metavar="PNG", help="per-layer energy bars with firing rates")
    p.set_defaults(func=cmd_energy)


def cmd_energy(a):
    from sdm.energy.report import energy_report, format_csv, format_json, format_table, plot

    rep = energy_report(a.model, denoise_steps=a.denoise_steps, n=a.n, seed=a.seed, sampler=a.sampler,
                        preset=a.preset, sim_dir=a.sim, data=a.data, memory=a.memory)
    text = {"table": format_table, "csv": format_csv, "json": format_json}[a.format](rep)
    if a.out:
        from sdm.files import atomic_write

        atomic_write(a.out, lambda tmp: Path(tmp).write_text(text))
        print(f"wrote {a.out}")
    else:
        print(text, end="")
    if a.plot:
        print(f"wrote {plot(rep, a.plot)}")


def export_nir_main(argv: list[str] | None = None) -> int:
    """The stand-alone ``export-nir`` console script (same as ``sdm export-nir``)."""
    parser = argparse.ArgumentParser(prog="export-nir", description="Export MODEL.pt to a NIR graph (docs/nir-format.md).")
    _export_args(parser)
    a = parser.parse_args(argv)
    a.command = "export-nir"
    return _run(a)


# ----- entry point ----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdm", description="Spiking Diffusion Models: train, sample, deploy.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_sample(sub)
    add_export(sub)
    add_import(sub)
    add_simulate(sub)
    add_convert(sub)
    add_train_classifier(sub)
    add_eval(sub)
    add_energy(sub)
    from sdm.demo import add_demo

    add_demo(sub)
    return parser


def _known_errors():
    from sdm.train.checkpoint import CheckpointError
    from sdm.train.data import DataError

    # NIRFormatError, CheckpointError and DataError are ValueErrors with one-line messages
    return (UserError, CheckpointError, DataError, ValueError, FileNotFoundError, FloatingPointError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return _run(parser.parse_args(argv))


def _run(a) -> int:
    try:
        a.func(a)
    except KeyboardInterrupt:
        print("sdm: interrupted", file=sys.stderr)
        return 130
    except _known_errors() as e:
        if os.environ.get("SDM_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"sdm {a.command}: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
