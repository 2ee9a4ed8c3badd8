"""``sdm moments``: estimate the model's noise moments once, for the Analytic-DPM samplers."""

from __future__ import annotations

from sdm.errors import UserError

from . import options


def add_parser(sub):
    p = sub.add_parser("moments", help="estimate Gamma_t = E||eps(x_t, t)||^2/d for the analytic samplers",
                       description="Monte-Carlo estimate of the model's noise moment on training images noised to a "
                                   "grid of timesteps (Analytic-DPM, Bao et al. 2022); stored in the checkpoint "
                                   "(and from there in exported NIR files) for --sampler analytic-ddpm|analytic-ddim.",
                       parents=[options.seed(), options.threads(), options.device(), options.no_ema(),
                                options.batch_size(), options.force()])
    p.add_argument("model", metavar="MODEL.pt")
    p.add_argument("--data", help="training data (default: the model's)")
    p.add_argument("-n", type=int, default=256, help="images per timestep")
    p.add_argument("--points", type=int, default=100, help="timesteps of the grid (interpolated in between)")
    p.add_argument("--out", metavar="MODEL.pt", help="write a copy with the moments (default: update MODEL.pt "
                                                     "in place, atomically)")
    p.set_defaults(func=run)
    return p


def run(a) -> None:
    import torch

    from sdm.train.checkpoint import save_checkpoint
    from sdm.train.data import load_dataset
    from sdm.train.evaluate import model_data_spec
    from sdm.train.moments import estimate_moments, moment_grid
    from sdm.train.sampling import model_from_checkpoint

    options.apply_threads(a)
    if a.n < 2:
        raise UserError("-n must be >= 2")
    options.check_int(a.points, "--points", 2)
    device = options.pick_device(a)
    _check_out(a)
    model, diffusion, ckpt = model_from_checkpoint(a.model, use_ema=not a.no_ema, device=device)
    spec = a.data or model_data_spec(ckpt)
    if not spec:
        raise UserError(f"{a.model}: the checkpoint does not name its training data; give --data SPEC")
    grid = moment_grid(diffusion, a.points)
    cfg = model.cfg
    data = load_dataset(spec, image_size=cfg.img_size, channels=cfg.img_ch)
    g = torch.Generator().manual_seed(a.seed)
    idx = torch.randperm(len(data), generator=g)[:a.n]
    images = torch.stack([data[int(i)] for i in idx]).to(device)
    m = estimate_moments(model, diffusion, images, grid, batch_size=a.batch_size, generator=g, progress=True,
                         data=spec)
    out = a.out or a.model
    save_checkpoint(out, {**{k: v for k, v in ckpt.items() if k not in ("format", "version")},
                          "moments": m.to_dict()})
    print(f"wrote {out}: Gamma_t at {len(grid)} timesteps from {len(images)} images of {spec} "
          f"(Gamma 999 = {m.at(999):.4f}, 500 = {m.at(500):.4f}, 0 = {m.at(0):.4f})")


def _check_out(a) -> None:
    """``--out`` absent or MODEL.pt itself: the documented in-place update; else a new file, or one
    holding no trained run (sdm.paths)."""
    from sdm.paths import check_file_name, check_output, same_path

    if a.out is None:
        return
    if same_path(check_file_name(a.out, "--out"), a.model):
        return  # the same as the default: MODEL.pt rewritten atomically with its moments added
    check_output(a.out, "--out", "checkpoint", force=a.force)
