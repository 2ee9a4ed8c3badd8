"""``sdm sample``: a PNG grid of samples from a trained checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

from sdm.errors import UserError

from . import options

MAX_SCALE = 64


def add_parser(sub):
    p = sub.add_parser("sample", help="generate a PNG grid of samples",
                       description="Sample images from a trained checkpoint and write a PNG grid.",
                       parents=[options.sampler(), options.seed(), options.threads(), options.device(),
                                options.no_ema(), options.batch_size(), options.force()])
    p.add_argument("model", metavar="MODEL.pt")
    p.add_argument("-n", type=int, default=64, help="number of images")
    p.add_argument("--out", default="samples.png")
    p.add_argument("--threshold-scale", type=float, default=1.0, help="threshold guidance: theta' = S * theta")
    p.add_argument("--threshold-sweep", type=options.floats, help="e.g. 0.997,1.0,1.003: one grid per value")
    p.add_argument("--scale", type=int, default=2, help=f"enlarge the PNG by this factor (1..{MAX_SCALE})")
    p.add_argument("--temperature", type=float,
                   help="token sampling temperature of a Spiking-Diffusion (absorbing) model (default 1)")
    p.set_defaults(func=run)
    return p


def run(a) -> None:
    from sdm.train.checkpoint import load_checkpoint
    from sdm.train.moments import checkpoint_moments
    from sdm.train.sampling import generate, model_from_checkpoint, save_grid, sweep_paths

    options.apply_threads(a)
    scales = _check_options(a)
    device = options.pick_device(a)
    paths = _outputs(a, scales, sweep_paths)
    ckpt = load_checkpoint(a.model)
    if _sample_absorbing(a, ckpt, paths[0], device):
        return
    if a.temperature is not None:
        raise UserError("--temperature applies to Spiking-Diffusion (absorbing) models; this is a spiking UNet")
    model, diffusion, ckpt = model_from_checkpoint(a.model, use_ema=not a.no_ema, device=device, ckpt=ckpt)
    moments = checkpoint_moments(ckpt)
    for s, path in zip(scales, paths):
        t0 = time.perf_counter()
        x = generate(model, diffusion, a.n, sampler=a.sampler, steps=a.steps, eta=a.eta, seed=a.seed,
                     threshold_scale=s, batch_size=a.batch_size, device=device, order=a.order, moments=moments)
        save_grid(x, path, scale=a.scale)
        print(f"wrote {path} ({a.n} samples, {a.sampler}, threshold x{s:g}, {time.perf_counter() - t0:.1f} s)")


def _sample_absorbing(a, ckpt: dict, path: Path, device: str) -> bool:
    """A Spiking-Diffusion (absorbing) checkpoint ``ckpt``: its grid, and True; any other checkpoint: False."""
    from sdm.images import save_grid
    from sdm.train.sd_model import ABSORBING_KIND, checkpoint_kind, sample_absorbing

    if checkpoint_kind(ckpt) != ABSORBING_KIND:
        return False
    unet_only = [flag for flag, given in (("--sampler", a.sampler != "ddim"), ("--eta", a.eta != 0.0),
                                          ("--threshold-scale", a.threshold_scale != 1.0),
                                          ("--threshold-sweep", bool(a.threshold_sweep)))
                 if given]
    if unet_only:
        raise UserError(f"{unet_only[0]} applies to the spiking UNet, not to a Spiking-Diffusion model")
    temperature = 1.0 if a.temperature is None else a.temperature
    options.check_float(temperature, "--temperature", low=0.0, low_open=True)
    t0 = time.perf_counter()
    x = sample_absorbing(ckpt, a.n, temperature=temperature, seed=a.seed, device=device, batch_size=a.batch_size,
                         use_ema=not a.no_ema)
    save_grid(x, path, scale=a.scale)
    print(f"wrote {path} ({a.n} samples, absorbing, temperature {temperature:g}, {time.perf_counter() - t0:.1f} s)")
    return True


def _check_options(a) -> list[float]:
    """The range checks; returns the threshold scales to sample."""
    options.check_int(a.n, "-n", 1)
    options.check_int(a.scale, "--scale", 1, MAX_SCALE)
    options.check_sampler(a)
    options.check_threshold_scale(a.threshold_scale)
    for s in a.threshold_sweep or []:
        options.check_threshold_scale(s, "--threshold-sweep")
    scales = a.threshold_sweep or [a.threshold_scale]
    if len({f"{s:g}" for s in scales}) < len(scales):
        raise UserError(f"--threshold-sweep {','.join(f'{s:g}' for s in scales)}: a value is given twice")
    return scales


def _outputs(a, scales: list[float], sweep_paths) -> list[Path]:
    """The PNG files to write, checked before sampling starts (sdm.paths)."""
    from sdm.paths import check_file_name, check_output

    check_file_name(a.out, "--out")
    paths = sweep_paths(a.out, scales) if a.threshold_sweep else [Path(a.out)]
    for path in paths:
        check_output(path, "--out", "png", inputs=[("MODEL.pt", a.model)], force=a.force)
    return paths
