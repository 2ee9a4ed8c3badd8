"""``sdm simulate``: denoising steps of a NIR model in Lava (CPU), checked call by call against PyTorch."""

from __future__ import annotations

from pathlib import Path

from sdm.errors import UserError

from . import options, plain_nir

# what `sdm simulate --out DIR` writes there, and the kind of each (sdm.paths)
OUTPUTS = {"samples.png": "png", "reference.png": "png", "spikes.h5": "hdf5", "report.json": "json"}
SD_OUTPUTS = {"samples.png": "png", "reference.png": "png", "sdid/spikes.h5": "hdf5", "decoder/spikes.h5": "hdf5",
              "report.json": "json"}


def add_parser(sub):
    p = sub.add_parser("simulate", help="run denoising steps of a NIR model in Lava (CPU)",
                       description="Build Lava processes from MODEL.nir, compile once, run K denoising steps with "
                                   "the diffusion arithmetic on the host, and compare every call with PyTorch.",
                       parents=[options.sampler(None, eta=False), options.seed(),
                                options.threads("CPU threads for torch (the PyTorch reference)"), options.force()])
    p.add_argument("nir_file", metavar="MODEL.nir")
    p.add_argument("--denoise-steps", type=int, default=None,
                   help="number of denoiser calls K: a K-step schedule of the sampler; ddpm: its first K steps "
                        "(UNet; default 4)")
    p.add_argument("--temperature", type=float, default=None,
                   help="Spiking-Diffusion files: token sampling temperature (default 1); a sample is always all "
                        "of the diffusion's SDID calls and one decode")
    p.add_argument("--mode", choices=["floating_pt", "fixed_pt"], default="floating_pt")
    p.add_argument("--build", choices=["fused", "loihi"], default="fused",
                   help="fused (default): the graph cut into a few stage processes, T Lava steps per call, the mode "
                        "for generating on a CPU; loihi: one Lava process per layer, latency-aligned "
                        "(docs/lava-mapping.md)")
    p.add_argument("--stages", type=int, default=None, metavar="K",
                   help="fused build: the number of stage processes (default 6)")
    p.add_argument("--protocol", choices=["loihi", "async"], default=None,
                   help="Lava's Loihi protocol (a barrier every step) or every process asynchronous: the same "
                        "spikes, fewer messages (default: async for the fused build, loihi for the loihi build)")
    p.add_argument("-n", type=int, default=1,
                   help="images, as one batch (fused: an array dimension; loihi: pipelined through the network)")
    p.add_argument("--threshold-scale", type=float, default=1.0)
    p.add_argument("--out", required=True, metavar="DIR")
    plain_nir.add_options(p)  # with --input: any plain NIR graph (sdm/commands/plain_nir.py)
    p.set_defaults(func=run)
    return p


def run(a) -> None:
    if a.input is not None:
        return plain_nir.simulate(a)
    from sdm.export.sd_format import is_sd_file
    from sdm.neuromorphic.run import simulate  # loads Lava: only this command does

    options.apply_threads(a)
    options.check_int(a.n, "-n", 1)
    if is_sd_file(a.nir_file):
        _run_sd(a)
        return
    if a.temperature is not None:
        raise UserError("--temperature applies to Spiking-Diffusion files; this is a UNet denoiser")
    a.denoise_steps = 4 if a.denoise_steps is None else a.denoise_steps
    options.check_int(a.denoise_steps, "--denoise-steps", 1)
    options.check_threshold_scale(a.threshold_scale)
    options.check_int(a.stages, "--stages", 1)
    check_outputs(a.out, a.nir_file, a.force)
    r = simulate(a.nir_file, a.out, denoise_steps=a.denoise_steps, n=a.n, sampler=a.sampler, mode=a.mode,
                 seed=a.seed, threshold_scale=a.threshold_scale, order=a.order, build=a.build, stages=a.stages,
                 protocol=a.protocol)
    per_call = r["seconds_per_call_after_first"]
    print(f"{r['build']} build, {r['mode']}, {r['protocol']} protocol: {r['denoise_steps']} denoiser calls x "
          f"{r['images']} image(s), {r['lava_processes']} Lava processes, {r['lava_steps_per_call']} Lava steps per "
          "call; compile + first call "
          f"{r['compile_and_first_call_seconds']:.1f} s" + (f", then {per_call:.2f} s per call" if per_call else ""))
    worst = max(r["spike_mismatch_rate"].items(), key=lambda kv: kv[1])
    print(f"vs PyTorch: {r['total_spike_mismatches']} spike mismatches (worst layer {worst[0]}: {worst[1]:.2%}), "
          f"max eps error {max(r['eps_max_abs_err_per_call']):.2e}, final image max error "
          f"{r['final_image_max_abs_err']:.2e}")
    print(f"wrote {a.out}/samples.png, reference.png, spikes.h5, report.json")


def _run_sd(a) -> None:
    """A Spiking-Diffusion file: samples with every SDID call and the decoder in Lava (neuromorphic/sd_run.py)."""
    from sdm.neuromorphic.sd_run import simulate_sd

    sampler = None if a.sampler == "ddim" else a.sampler  # the default tells nothing
    for flag, value in (("--denoise-steps", a.denoise_steps), ("--sampler", sampler),
                        ("--threshold-scale", None if a.threshold_scale == 1.0 else a.threshold_scale)):
        if value is not None:
            raise UserError(f"{flag} applies to UNet denoisers; a Spiking-Diffusion sample is all of its "
                            "diffusion's SDID calls and one decode")
    temperature = 1.0 if a.temperature is None else a.temperature
    options.check_float(temperature, "--temperature", low=0.0, low_open=True)
    options.check_int(a.stages, "--stages", 1)
    check_outputs(a.out, a.nir_file, a.force, outputs=SD_OUTPUTS)
    r = simulate_sd(a.nir_file, a.out, n=a.n, temperature=temperature, mode=a.mode, seed=a.seed, build=a.build,
                    stages=a.stages, protocol=a.protocol)
    for role, p in r["parts"].items():
        per_call = p["seconds_per_call_after_first"]
        print(f"{role}: {r['build']} build, {r['mode']}, {r['protocol']} protocol: {p['calls']} call(s) x "
              f"{r['images']} image(s), {p['lava_processes']} Lava processes, {p['lava_steps_per_call']} Lava steps "
              f"per call; compile + first call {p['compile_and_first_call_seconds']:.1f} s"
              + (f", then {per_call:.3f} s per call" if per_call else ""))
        print(f"  vs PyTorch: {p['total_spike_mismatches']} spike mismatches, max output error "
              f"{max(p['output_max_abs_err_per_call']):.2e}")
    print(f"tokens: {r['token_mismatches_vs_pytorch']} of {r['tokens']} differ from the PyTorch generation; final "
          f"image max error {r['final_image_max_abs_err']:.2e}")
    print(f"wrote {a.out}/samples.png, reference.png, sdid/spikes.h5, decoder/spikes.h5, report.json")


def check_outputs(out_dir, nir_file, force: bool, option: str = "--out", outputs: dict | None = None) -> Path:
    """The output directory and the files the run writes in it, before Lava starts (sdm.paths)."""
    from sdm.paths import check_directory, check_output

    out = check_directory(out_dir, option, inputs=[("MODEL.nir", nir_file)])
    for name, kind in (OUTPUTS if outputs is None else outputs).items():
        check_output(out / name, option, kind, inputs=[("MODEL.nir", nir_file)], force=force)
    return out
