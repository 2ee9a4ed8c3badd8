"""``sdm demo``: the whole pipeline on the embedded default data set (bundled MNIST subset).

1. the model: the committed demo checkpoint ``models/demo.pt`` (trained by ``sdm train`` on
   mnist-bundled; see README), or, with ``--train-steps N`` or when it is missing, a short
   training run;
2. a sample grid from PyTorch (DDIM);
3. a grid of the second family, Spiking-Diffusion (``models/sd-absorbing/model.pt``: VQ-SVAE +
   absorbing diffusion with SDID), beside the UNet's in one picture;
4. NIR export, read back and checked layer by layer;
5. a whole short DDIM trajectory in Lava's fused build and two calls of the per-layer (loihi) build,
   floating_pt, every call compared spike for spike with PyTorch;
6. the per-layer energy report and plot;
7. the second pipeline: the Spiking-Diffusion checkpoint exported to one NIR file, samples generated with
   every SDID call and the decoder in Lava (fused, floating_pt, checked against PyTorch), and the energy
   per generated sample from the Lava spike records.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import options

MODELS = Path(__file__).resolve().parent.parent.parent / "models"
DEMO_CHECKPOINT = MODELS / "demo.pt"
SD_CHECKPOINT = MODELS / "sd-absorbing" / "model.pt"  # Spiking-Diffusion (README: how it was trained)
SD_TEMPERATURE = 1.0
DEMO_MODEL = {"ch": 16, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "T": 4, "img_size": 32, "img_ch": 1}
DEMO_TRAIN = {"data": "mnist-bundled", "batch_size": 32, "lr": 1e-3, "warmup": 20, "ckpt_every": 100,
              "log_every": 10}


def add_parser(sub):
    p = sub.add_parser("demo", help="run the pipeline end to end on the bundled MNIST subset",
                       description="Sample, export to NIR, simulate in Lava and report energy for the demo model.",
                       parents=[options.seed(help="seed of the sample grid, the Lava run and the energy trajectory "
                                                  "(a --train-steps run keeps the training default)"),
                                options.threads(),
                                options.no_ema("use the checkpoint's raw weights instead of its EMA"),
                                options.force("replace a trained run in DIR/train (--train-steps) or files of "
                                              "another kind at the demo's output paths")])
    p.add_argument("--out", default="demo_out", help="output directory")
    p.add_argument("--model", default=str(DEMO_CHECKPOINT), help="checkpoint to demonstrate")
    p.add_argument("--train-steps", type=int, default=0,
                   help="train a fresh small model for this many steps instead of using --model")
    p.add_argument("-n", type=int, default=36, help="samples in the grid")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps for the grid")
    p.add_argument("--lava-steps", type=int, default=10,
                   help="DDIM steps of the trajectory simulated in Lava's fused build (0: skip Lava)")
    p.add_argument("--loihi-calls", type=int, default=2,
                   help="denoiser calls also run in the per-layer loihi build (0: skip it)")
    p.add_argument("--sd-model", default=str(SD_CHECKPOINT),
                   help="Spiking-Diffusion (absorbing) checkpoint for the second grid ('' to skip it)")
    p.add_argument("--temperature", type=float, default=SD_TEMPERATURE,
                   help="token sampling temperature of the Spiking-Diffusion grid")
    p.add_argument("--sd-lava-samples", type=int, default=2,
                   help="Spiking-Diffusion samples generated in Lava, with their energy (0: skip)")
    p.set_defaults(func=run)
    return p


def run(a) -> None:
    options.apply_threads(a)
    out = _check(a)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model_path = _model(a, out)
    model, unet_grid = _sample(a, model_path, out)
    _spiking_diffusion(a, unet_grid, out)
    _export(a, model, model_path, out)
    _lava(a, out)
    _energy(a, model_path, out)
    _sd_pipeline(a, out)
    print(f"demo finished in {time.perf_counter() - t_start:.0f} s; outputs in {out}/")


# the files the demo writes in --out DIR, and their kinds (sdm.paths)
OUTPUTS = {"samples.png": "png", "sd_samples.png": "png", "families.png": "png", "demo.nir": "nir",
           "energy.txt": "text", "energy.png": "png"}


SD_OUTPUTS_DEMO = {"sd.nir": "nir", "sd_energy.txt": "text", "sd_energy.png": "png"}  # step 7


def _check(a) -> Path:
    """Options and output paths, before anything runs; returns the output directory."""
    from sdm.errors import UserError
    from sdm.paths import check_directory, check_output, check_run_dir

    for flag, value, low in (("-n", a.n, 1), ("--sample-steps", a.sample_steps, 1),
                             ("--lava-steps", a.lava_steps, 0), ("--loihi-calls", a.loihi_calls, 0),
                             ("--train-steps", a.train_steps, 0), ("--sd-lava-samples", a.sd_lava_samples, 0)):
        options.check_int(value, flag, low)
    trains = bool(a.train_steps) or not Path(a.model).exists()
    if not a.model:
        raise UserError("--model: empty path")
    options.check_float(a.temperature, "--temperature", low=0.0, low_open=True)
    inputs = [] if trains else [("--model", a.model)]
    if a.sd_model:
        if not Path(a.sd_model).is_file():
            raise UserError(f"--sd-model {a.sd_model}: no such file (give '' to skip the Spiking-Diffusion grid)")
        inputs.append(("--sd-model", a.sd_model))
    out = check_directory(a.out, "--out", inputs=inputs)
    for name, kind in OUTPUTS.items():
        check_output(out / name, "--out", kind, inputs=inputs, force=a.force)
    if a.lava_steps > 0:
        from .simulate import check_outputs

        check_outputs(out / "lava", out / "demo.nir", a.force)
        if a.loihi_calls > 0:
            check_outputs(out / "lava-loihi", out / "demo.nir", a.force)
    if a.sd_model and a.sd_lava_samples > 0:
        from .simulate import SD_OUTPUTS, check_outputs

        for name, kind in SD_OUTPUTS_DEMO.items():
            check_output(out / name, "--out", kind, inputs=inputs, force=a.force)
        check_outputs(out / "sd-lava", out / "sd.nir", a.force, outputs=SD_OUTPUTS)
    if trains:
        check_run_dir(out / "train", "--out", force=a.force)
    return out


def _model(a, out: Path) -> Path:
    """Step 1: the checkpoint to demonstrate (trained here with --train-steps or when it is missing)."""
    model_path = Path(a.model)
    if not a.train_steps and model_path.exists():
        print(f"[1/7] model: {model_path}")
        return model_path
    from sdm.train.trainer import TrainConfig, train
    from sdm.train.unet import UNetConfig

    steps = a.train_steps or 300
    print(f"[1/7] training a small spiking UNet on mnist-bundled for {steps} steps (no checkpoint at {model_path})")
    from sdm.paths import check_run_dir, run_lock

    with run_lock(out / "train", "--out"):  # as sdm train: one writer per run directory
        check_run_dir(out / "train", "--out", force=a.force)
        summary = train(out / "train", UNetConfig.from_dict(DEMO_MODEL),
                        TrainConfig.from_dict({**DEMO_TRAIN, "steps": steps}), device="cpu")
    hist = summary["history"]
    print(f"      loss {hist[0][1]:.4f} -> {hist[-1][1]:.4f}, {summary['images_per_s']:.1f} img/s")
    return Path(summary["checkpoint"])


def _sample(a, model_path: Path, out: Path):
    """Step 2: a DDIM grid in PyTorch; returns the model."""
    from sdm.train.sampling import generate, model_from_checkpoint, save_grid

    model, diffusion, ckpt = model_from_checkpoint(model_path, use_ema=not a.no_ema)
    cfg = model.cfg
    print(f"      {cfg.img_size}x{cfg.img_size}x{cfg.img_ch}, ch {cfg.ch}, ch_mult {list(cfg.ch_mult)}, "
          f"T={cfg.T}, trained {ckpt.get('step', '?')} steps on {ckpt.get('data', {}).get('spec', '?')}")
    print(f"[2/7] sampling {a.n} images with DDIM ({a.sample_steps} steps) in PyTorch")
    t0 = time.perf_counter()
    x = generate(model, diffusion, a.n, sampler="ddim", steps=a.sample_steps, seed=a.seed)
    print(f"      wrote {save_grid(x, out / 'samples.png', scale=2)} ({time.perf_counter() - t0:.1f} s)")
    return model, x


def _spiking_diffusion(a, unet_grid, out: Path) -> None:
    """Step 3: a grid of the second family, and both grids in one picture."""
    if not a.sd_model:
        print("[3/7] Spiking-Diffusion grid skipped (--sd-model '')")
        return
    from sdm.images import save_grid, save_side_by_side
    from sdm.train.checkpoint import load_checkpoint
    from sdm.train.sd_model import load_absorbing, sample_absorbing

    ckpt = load_checkpoint(a.sd_model)
    model = load_absorbing(ckpt, use_ema=not a.no_ema)
    vq, sdid = model.vqsvae.cfg, model.denoiser.cfg
    print(f"[3/7] Spiking-Diffusion: {a.n} samples, {model.diffusion.cfg.steps} unmasking steps over the "
          f"{vq.latent_size}x{vq.latent_size} tokens, temperature {a.temperature:g} ({a.sd_model}: SDID channels "
          f"{list(sdid.channels)}, T={sdid.T}, trained {ckpt.get('step', '?')} steps)")
    t0 = time.perf_counter()
    x = sample_absorbing(model, a.n, temperature=a.temperature, seed=a.seed)
    seconds = time.perf_counter() - t0
    print(f"      wrote {save_grid(x, out / 'sd_samples.png', scale=2)} ({seconds:.1f} s) and "
          f"{save_side_by_side([unet_grid, x], out / 'families.png', scale=2)} (UNet left, Spiking-Diffusion right)")


def _export(a, model, model_path: Path, out: Path) -> None:
    """Step 3: NIR export, read back and compared layer by layer with the checkpoint."""
    import torch

    from sdm.export.api import export_checkpoint, import_nir
    from sdm.export.verify import compare

    print("[4/7] exporting to NIR and checking the import layer by layer")
    cfg = model.cfg
    s = export_checkpoint(model_path, out / "demo.nir", dtype="float64", use_ema=not a.no_ema)
    den = import_nir(out / "demo.nir", dtype="float64")
    g = torch.Generator().manual_seed(a.seed + 1)
    xt = torch.randn(2, cfg.img_ch, cfg.img_size, cfg.img_size, generator=g, dtype=torch.float64)
    r = compare(model.double(), den, xt, torch.tensor([100, 800]))
    model.float()
    print(f"      {s['path']}: {s['nodes']} nodes, {s['bytes'] / 1e6:.2f} MB, extensions "
          f"{', '.join(s['extensions'])}; spikes differing from the checkpoint: {r['total_mismatches']}, "
          f"max |eps| difference {r['eps_max_abs_err']:.1e}")


def _lava(a, out: Path) -> None:
    """Step 5: a ``--lava-steps`` DDIM trajectory in the fused build (the image it ends in), then
    ``--loihi-calls`` calls of the per-layer graph; every call checked against PyTorch."""
    if a.lava_steps <= 0:
        print("[5/7] Lava simulation skipped (--lava-steps 0)")
        return
    from sdm.neuromorphic.run import simulate

    print(f"[5/7] a {a.lava_steps}-step DDIM trajectory in Lava (fused build, floating_pt, CPU), every call "
          "checked against PyTorch")
    rep = simulate(out / "demo.nir", out / "lava", denoise_steps=a.lava_steps, n=1, seed=a.seed, build="fused")
    _lava_lines(rep, out / "lava")
    if a.loihi_calls > 0:
        print(f"      and {a.loihi_calls} calls of the per-layer graph (loihi build: one process per layer)")
        _lava_lines(simulate(out / "demo.nir", out / "lava-loihi", denoise_steps=a.loihi_calls, n=1, seed=a.seed,
                             build="loihi"), out / "lava-loihi")


def _lava_lines(rep: dict, where: Path) -> None:
    per_call = rep["seconds_per_call_after_first"]
    print(f"      {rep['lava_processes']} Lava processes, {rep['lava_steps_per_call']} Lava steps per call, "
          f"compile + first call {rep['compile_and_first_call_seconds']:.1f} s"
          + (f", then {per_call:.2f} s per call" if per_call else ""))
    print(f"      agreement with PyTorch: {rep['total_spike_mismatches']} spike mismatches, max eps error "
          f"{max(rep['eps_max_abs_err_per_call']):.1e}, final image max error {rep['final_image_max_abs_err']:.1e}; "
          f"wrote {where}/samples.png")


def _energy(a, model_path: Path, out: Path) -> None:
    """Step 5: the energy report of a 4-step DDIM trajectory of 4 images, as a table and a plot."""
    from sdm.energy.report import energy_report, format_table, plot
    from sdm.files import write_text

    print("[6/7] energy per denoiser call (PyTorch hooks on a 4-step DDIM trajectory of 4 images)")
    rep = energy_report(model_path, denoise_steps=4, n=4, seed=a.seed, use_ema=not a.no_ema)
    table = format_table(rep)
    write_text(out / "energy.txt", table)
    print(table)
    print(f"wrote {out / 'energy.txt'} and {plot(rep, out / 'energy.png')}")


def _sd_pipeline(a, out: Path) -> None:
    """Step 7: Spiking-Diffusion to NIR, generated in Lava, priced from the Lava spikes."""
    if not a.sd_model or a.sd_lava_samples <= 0:
        print("[7/7] Spiking-Diffusion in Lava skipped")
        return
    from sdm.energy.sd_report import format_sd_table, plot_sd, sd_energy_from_checkpoint
    from sdm.export.api import export_checkpoint
    from sdm.files import write_text
    from sdm.neuromorphic.sd_run import simulate_sd

    n = a.sd_lava_samples
    s = export_checkpoint(a.sd_model, out / "sd.nir", use_ema=not a.no_ema)
    print(f"[7/7] Spiking-Diffusion: {s['path']} ({', '.join(s['parts'])} graphs, {s['bytes'] / 1e6:.2f} MB); "
          f"{n} sample(s) with every SDID call and the decoder in Lava (fused build, floating_pt)")
    r = simulate_sd(out / "sd.nir", out / "sd-lava", n=n, temperature=a.temperature, seed=a.seed)
    for role, p in r["parts"].items():
        print(f"      {role}: {p['calls']} call(s), {p['lava_processes']} Lava processes, "
              f"{p['total_spike_mismatches']} spike mismatches against PyTorch, max output error "
              f"{max(p['output_max_abs_err_per_call']):.1e}")
    print(f"      tokens differing from the PyTorch generation: {r['token_mismatches_vs_pytorch']} of {r['tokens']}; "
          f"wrote {out}/sd-lava/samples.png")
    rep = sd_energy_from_checkpoint(a.sd_model, n=n, temperature=a.temperature, seed=a.seed,
                                    sim_dir=str(out / "sd-lava"), use_ema=not a.no_ema)
    table = format_sd_table(rep)
    write_text(out / "sd_energy.txt", table)
    print(table)
    parts = rep["parts"]
    print(f"      energy from the Lava spikes: SDID {parts['sdid']['total_pj_per_call'] / 1e6:.2f} uJ per call "
          f"(SNN/ANN {parts['sdid']['snn_over_ann']:.2f}), decoder {parts['decoder']['total_pj_per_call'] / 1e6:.2f} "
          f"uJ; per generated sample {rep['total_pj_per_sample'] / 1e6:.0f} uJ (ANN "
          f"{rep['ann_pj_per_sample'] / 1e6:.0f} uJ, SNN/ANN {rep['snn_over_ann_per_sample']:.2f})")
    print(f"      wrote {out / 'sd_energy.txt'} and {plot_sd(rep, out / 'sd_energy.png')}")
