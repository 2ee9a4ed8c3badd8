"""``sdm import-checkpoint``: a reference-code (SDDPM / SDM) checkpoint as a project checkpoint."""

from __future__ import annotations

from . import options


def add_parser(sub):
    p = sub.add_parser("import-checkpoint", help="read an SDDPM / SDM reference checkpoint into the pipeline",
                       description="Read the reference trainer's checkpoint (net_model, optim, step, x_T; SDM also "
                                   "ema_model) safely, infer the architecture from the tensor shapes and write an "
                                   "ordinary project checkpoint that samples, exports, simulates and prices like "
                                   "any other.",
                       parents=[options.threads(), options.force()])
    p.add_argument("file", metavar="FILE")
    p.add_argument("--from", dest="source", required=True, choices=["sddpm", "sdm"],
                   help="sddpm: Spk_UNet (SDDPM); sdm: Spk_UNet_TSM (SDM, with TSM gains)")
    p.add_argument("--T", type=int, help="spiking steps (SDDPM files do not record it; default 4; SDM files: "
                                         "from the TSM gains)")
    p.add_argument("--img-size", type=int, help="image size (default: from the file's x_T, else 32)")
    p.add_argument("--ema", action="store_true", help="also import the file's ema_model as the EMA weights "
                                                      "(used by default; --no-ema elsewhere for net_model)")
    p.add_argument("--out", required=True, metavar="MODEL.pt")
    p.set_defaults(func=run)
    return p


def run(a) -> None:
    from sdm.train.checkpoint import save_checkpoint
    from sdm.train.reference_import import import_reference

    options.apply_threads(a)
    options.check_int(a.T, "--T", 1)
    options.check_img_size(a.img_size)
    from sdm.paths import check_output

    check_output(a.out, "--out", "imported", inputs=[("FILE", a.file)], force=a.force)
    payload = import_reference(a.file, a.source, T=a.T, img_size=a.img_size, ema=a.ema)
    save_checkpoint(a.out, payload)
    c, src = payload["model_config"], payload["imported_from"]
    print(f"wrote {a.out}: {a.source} spiking UNet, ch {c['ch']}, ch_mult {c['ch_mult']}, {c['num_res_blocks']} res "
          f"blocks, T={c['T']}{' with TSM gains' if c['tsm'] else ''}, {c['img_ch']}x{c['img_size']}x{c['img_size']}, "
          f"{src['parameters']:,} parameters, step {src['step']}{', EMA weights' if a.ema else ''}")
