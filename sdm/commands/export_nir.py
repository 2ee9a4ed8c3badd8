"""``sdm export-nir`` (and the stand-alone ``export-nir`` script): a trained model as a NIR graph."""

from __future__ import annotations

from pathlib import Path

from . import options


def parents() -> list:
    """The shared options of both spellings of the command."""
    return [options.threads(), options.no_ema("export raw weights even if EMA weights exist"), options.force()]


def add_parser(sub):
    p = sub.add_parser("export-nir", help="write a trained model as a NIR graph",
                       description="Export MODEL.pt to NIR exactly (docs/nir-format.md): the whole spiking UNet, or a "
                                   "Spiking-Diffusion checkpoint as one file of its SDID, decoder and encoder graphs.",
                       parents=parents())
    add_arguments(p)
    return p


def add_arguments(p) -> None:
    """The command's own options, on ``sdm export-nir`` or on the stand-alone script's parser."""
    p.add_argument("model", metavar="MODEL.pt")
    p.add_argument("-o", "--out", metavar="MODEL.nir",
                   help="output file (default: MODEL.nir beside MODEL.pt); an existing NIR file there is replaced")
    p.add_argument("--threshold-scale", type=float, default=1.0, help="bake threshold guidance into the neurons")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="weight precision in the file (float64 for bit-level verification)")
    p.set_defaults(func=run)


def run(a) -> None:
    from sdm.export.api import export_checkpoint

    options.apply_threads(a)
    options.check_threshold_scale(a.threshold_scale)
    out = _destination(a)
    s = export_checkpoint(a.model, out, threshold_scale=a.threshold_scale, dtype=a.dtype,
                          use_ema=not a.no_ema, progress=True)
    if s.get("family") == "spiking-diffusion":
        _report_sd(s)
        return
    print(f"wrote {s['path']}: {s['nodes']} nodes, {s['edges']} edges, {s['parameters']:,} parameters, "
          f"{s['neurons']:,} neurons in {s['neuron_groups']} groups, T={s['T']}, {s['bytes'] / 1e6:.2f} MB, "
          f"{s['dtype']}, extensions: {', '.join(s['extensions']) or 'none'} ({s['seconds']:.2f} s)")


def _report_sd(s: dict) -> None:
    print(f"wrote {s['path']}: Spiking-Diffusion ({s['kind']} checkpoint), {len(s['parts'])} graphs, "
          f"{s['bytes'] / 1e6:.2f} MB, {s['dtype']} ({s['seconds']:.2f} s)")
    for role, p in s["parts"].items():
        print(f"  {role:8s} {p['nodes']:3d} nodes, {p['edges']:3d} edges, {p['parameters']:,} parameters, "
              f"{p['neurons']:,} neurons in {p['neuron_groups']} groups, T={p['T']}, "
              f"extensions: {', '.join(p['extensions']) or 'none'}")


def _destination(a) -> Path:
    """``-o`` (which must not be empty), or MODEL.nir beside MODEL.pt; either replaces an existing
    NIR file (a re-export) but nothing else without --force (sdm.paths)."""
    from sdm.paths import check_output

    out = Path(a.model).with_suffix(".nir") if a.out is None else a.out
    return check_output(out, "-o/--out", "nir", inputs=[("MODEL.pt", a.model)], force=a.force)
