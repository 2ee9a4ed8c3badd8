"""``sdm energy``: the per-layer energy report from real firing rates."""

from __future__ import annotations

import sys
from pathlib import Path

from sdm.errors import UserError

from . import options, plain_nir


def add_parser(sub):
    p = sub.add_parser("energy", help="per-layer energy report from real firing rates",
                       description="Count synaptic operations (AC) and multiply-accumulates (MAC) per layer from "
                                   "spikes measured on real denoising trajectories (PyTorch) or a Lava run (--sim).",
                       parents=[options.sampler(None, eta=False), options.seed(), options.threads(),
                                options.no_ema("use raw weights even if EMA weights exist (with --sim: for a run "
                                               "of a file exported with --no-ema)"), options.force()])
    p.add_argument("model", metavar="MODEL.pt", help="a spiking UNet or a Spiking-Diffusion checkpoint")
    p.add_argument("--denoise-steps", type=int, default=None,
                   help="denoiser calls of the measured trajectory (UNet; default 4)")
    p.add_argument("-n", type=int, default=4, help="images in the measured trajectory (Spiking-Diffusion: samples "
                                                   "generated, and digits encoded)")
    p.add_argument("--temperature", type=float, default=None,
                   help="Spiking-Diffusion: token sampling temperature of the measured samples (default 1)")
    p.add_argument("--data", help="measure on training images noised to the same t instead of a trajectory")
    p.add_argument("--sim", metavar="DIR", help="use the spike records of `sdm simulate --out DIR`")
    p.add_argument("--preset", default="45nm-fp32", choices=["45nm-fp32", "45nm-fp16", "45nm-int8", "loihi"])
    p.add_argument("--memory", action="store_true", help="add an estimate of weight memory reads")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--out", metavar="FILE", help="write the report here instead of standard output")
    p.add_argument("--plot", metavar="PNG", help="per-layer energy bars with firing rates")
    plain_nir.add_options(p)  # with --input: MODEL.pt is a plain NIR graph, FILE.nir (sdm/commands/plain_nir.py)
    p.set_defaults(func=run)
    return p


def run(a) -> None:
    if a.input is not None:
        return plain_nir.energy(a)
    from sdm.energy.report import energy_report, format_csv, format_json, format_table, plot

    options.apply_threads(a)
    options.check_int(a.n, "-n", 1)
    options.check_int(a.denoise_steps, "--denoise-steps", 1)
    _check_outputs(a)
    if _is_spiking_diffusion(a.model):
        _run_sd(a)
        return
    if a.temperature is not None:
        raise UserError("--temperature applies to Spiking-Diffusion checkpoints; this is a spiking UNet")
    a.denoise_steps = 4 if a.denoise_steps is None else a.denoise_steps
    rep = energy_report(a.model, denoise_steps=a.denoise_steps, n=a.n, seed=a.seed, sampler=a.sampler,
                        preset=a.preset, sim_dir=a.sim, data=a.data, memory=a.memory, use_ema=not a.no_ema,
                        order=a.order)
    text = {"table": format_table, "csv": format_csv, "json": format_json}[a.format](rep)
    emit_report(a, text, rep, plot)


def emit_report(a, text: str, rep: dict, plot) -> None:
    """The report to --out or standard output, the plot to --plot."""
    # standard output holds the report and nothing else; when the report goes to --out, it holds
    # the list of files written
    notes = sys.stdout if a.out else sys.stderr
    if a.out:
        from sdm.files import atomic_write

        atomic_write(a.out, lambda tmp: Path(tmp).write_text(text))
        print(f"wrote {a.out}", file=notes)
    else:
        print(text, end="")
        sys.stdout.flush()
    if a.plot:
        print(f"wrote {plot(rep, a.plot)}", file=notes)


def _check_outputs(a) -> None:
    """``--out`` and ``--plot``, before the trajectory runs (sdm.paths)."""
    from sdm.paths import check_distinct, check_output

    inputs = [("MODEL.pt", a.model)]
    if a.sim:
        from sdm.export.spike_record import SPIKES_FILE

        inputs += [("--sim record", Path(a.sim) / SPIKES_FILE), ("--sim report", Path(a.sim) / "report.json")]
    if a.out is not None:
        check_output(a.out, "--out", "json" if a.format == "json" else "text", inputs=inputs, force=a.force)
    if a.plot is not None:
        check_output(a.plot, "--plot", "png", inputs=inputs, force=a.force)
    check_distinct([("--out", a.out), ("--plot", a.plot)])


def _is_spiking_diffusion(path: str) -> bool:
    from sdm.train.checkpoint import load_checkpoint
    from sdm.train.sd_model import checkpoint_kind

    return checkpoint_kind(load_checkpoint(path)) is not None


def _run_sd(a) -> None:
    """A Spiking-Diffusion checkpoint: per part and per generated sample (energy/sd_report.py)."""
    from sdm.energy.report import format_json
    from sdm.energy.sd_report import format_sd_csv, format_sd_table, plot_sd, sd_energy_from_checkpoint

    sampler = None if a.sampler == "ddim" else a.sampler  # the default tells nothing
    for flag, value in (("--denoise-steps", a.denoise_steps), ("--data", a.data), ("--sampler", sampler)):
        if value is not None:
            raise UserError(f"{flag} applies to the spiking UNet; a Spiking-Diffusion sample is always its "
                            "diffusion's steps of SDID calls and one decode")
    temperature = 1.0 if a.temperature is None else a.temperature
    options.check_float(temperature, "--temperature", low=0.0, low_open=True)
    rep = sd_energy_from_checkpoint(a.model, n=a.n, temperature=temperature, seed=a.seed, preset=a.preset,
                                    sim_dir=a.sim, memory=a.memory, use_ema=not a.no_ema)
    text = {"table": format_sd_table, "csv": format_sd_csv, "json": format_json}[a.format](rep)
    emit_report(a, text, rep, plot_sd)
