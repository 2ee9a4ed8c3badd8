"""``sdm import-nir``: rebuild a PyTorch denoiser from a NIR file; compare it with its checkpoint or sample it."""

from __future__ import annotations

from . import options


def add_parser(sub):
    p = sub.add_parser("import-nir", help="rebuild a PyTorch denoiser from a NIR file and check or sample it",
                       description="Load MODEL.nir as an executable PyTorch denoiser; optionally compare it "
                                   "layer by layer with the checkpoint it came from, or sample a grid with it.",
                       parents=[options.seed(), options.threads(),
                                options.no_ema("compare with the checkpoint's raw weights "
                                               "(for files exported with --no-ema)"), options.force()])
    p.add_argument("nir_file", metavar="MODEL.nir")
    p.add_argument("--compare", metavar="MODEL.pt", help="check spikes and eps against this checkpoint")
    p.add_argument("--sample", metavar="GRID.png", help="sample a grid with the imported denoiser")
    p.add_argument("-n", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps for --sample")
    p.add_argument("--temperature", type=float, default=None,
                   help="Spiking-Diffusion files: token sampling temperature for --sample (default 1)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.set_defaults(func=run)
    return p


def run(a) -> None:
    from sdm.export.api import graph_summary, import_nir

    options.apply_threads(a)
    options.check_int(a.n, "-n", 1)
    options.check_int(a.steps, "--steps", 1)
    if a.sample is not None:
        from sdm.paths import check_output

        check_output(a.sample, "--sample", "png", inputs=[("MODEL.nir", a.nir_file), ("--compare", a.compare)],
                     force=a.force)
    from sdm.export.nir_format import file_counts_in
    from sdm.export.sd_format import is_sd_file

    if is_sd_file(a.nir_file):
        _run_sd(a)
        return
    if a.temperature is not None:
        from sdm.errors import UserError

        raise UserError("--temperature applies to Spiking-Diffusion files; this is a UNet denoiser")
    den = import_nir(a.nir_file, dtype=a.dtype)
    s = graph_summary(den.graph)
    nodes, edges = file_counts_in(a.nir_file)  # as stored (the IR puts single-input junctions back)
    print(f"{a.nir_file}: {nodes} nodes, {edges} edges, {s['parameters']:,} parameters, "
          f"{s['neuron_groups']} neuron groups, T={s['T']}, extensions: {', '.join(s['extensions']) or 'none'}")
    if a.compare:
        _compare(a, den)
    if a.sample:
        _sample(a, den)


def _compare(a, den) -> None:
    """Spikes and eps of the imported denoiser against the checkpoint ``--compare``."""
    import torch

    from sdm.export.verify import compare
    from sdm.train.neuron import set_threshold_scale
    from sdm.train.sampling import model_from_checkpoint

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


def _sample(a, den) -> None:
    """A DDIM grid from the imported denoiser, written to ``--sample``."""
    import torch

    from sdm.images import save_grid
    from sdm.train.diffusion import GaussianDiffusion
    from sdm.train.samplers import sample

    diffusion = GaussianDiffusion(den.graph.host.schedule)  # the schedule the model was trained with
    c, h, w = den.graph.host.img_shape
    gen = torch.Generator().manual_seed(a.seed)
    x = sample(den, diffusion, (a.n, c, h, w), sampler="ddim", steps=a.steps, generator=gen, progress=True)
    print(f"wrote {save_grid(x, a.sample, scale=2)}")


# ----- Spiking-Diffusion files ----------------------------------------------------------------
def _run_sd(a) -> None:
    """A Spiking-Diffusion file: its parts, their comparison with the checkpoint, a sample grid."""
    from sdm.export.api import DTYPES, sd_summary
    from sdm.export.sd_format import read_sd_nir

    a.temperature = 1.0 if a.temperature is None else a.temperature
    options.check_float(a.temperature, "--temperature", low=0.0, low_open=True)
    graphs = read_sd_nir(a.nir_file)
    print(f"{a.nir_file}: Spiking-Diffusion, parts {', '.join(graphs.parts)}")
    for role, p in sd_summary(graphs).items():
        print(f"  {role:8s} {p['nodes']} nodes, {p['edges']} edges, {p['parameters']:,} parameters, "
              f"{p['neuron_groups']} neuron groups, T={p['T']}, extensions: {', '.join(p['extensions']) or 'none'}")
    dtype = DTYPES[a.dtype][1]
    if a.compare:
        _compare_sd(a, graphs, dtype)
    if a.sample:
        _sample_sd(a, graphs, dtype)


def _compare_sd(a, graphs, dtype) -> None:
    """Every part against the checkpoint's modules, on bundled MNIST digits (data/tests: docs/nir-format.md)."""
    from sdm.export.sd_verify import compare_sd
    from sdm.train.data import load_dataset, to_float
    from sdm.train.sd_model import sd_modules

    vq, sdid, _ = sd_modules(a.compare, use_ema=not a.no_ema)
    vq, sdid = vq.to(dtype), sdid.to(dtype) if sdid is not None else None
    data = load_dataset("mnist-bundled", vq.cfg.img_size, channels=vq.cfg.img_ch)
    images = to_float(data.images_uint8[::625][:8]).to(dtype)
    for role, r in compare_sd(graphs, vq, sdid, images, seed=a.seed, dtype=dtype).items():
        steps = sum(v["neuron_steps"] for v in r["layers"].values())
        out = f"max |logits| difference {r['max_abs_err']:.2e}" if role == "sdid" else \
            f"max |image| difference {r['max_abs_err']:.2e}" if role == "decoder" else \
            f"{r['token_mismatches']} of {r['tokens']} tokens differ"
        print(f"compared {role} with {a.compare} on {images.shape[0]} bundled digits: {r['total_mismatches']} of "
              f"{steps:,} neuron-steps differ in {len(r['layers'])} layers; {out}")


def _sample_sd(a, graphs, dtype) -> None:
    """A sample grid from the file alone: SDID calls, sampling and the decoder on the host (PyTorch)."""
    from sdm.export.sd_execute import sample, torch_calls
    from sdm.images import save_grid

    calls = torch_calls(graphs, dtype)
    x, _ = sample(graphs, calls["sdid"], calls["decoder"], a.n, temperature=a.temperature, seed=a.seed)
    print(f"wrote {save_grid(x, a.sample, scale=2)} ({calls['sdid'].calls} SDID calls, temperature "
          f"{a.temperature:g})")
