"""Benchmark of ``export-nir``: wall time and file size against the gzip-compressed weights.

Targets (issue 3): export of the demo model in < 5 s; the file about the size of the
gzip-compressed weights.  Both numbers are measured here, side by side, in one run.

    python bench/export_nir.py [--model MODEL.pt] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gzip
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from sdm.export.api import export_checkpoint
from sdm.train.checkpoint import load_checkpoint, save_checkpoint
from sdm.train.unet import SpikingUNet, UNetConfig

DEMO = dict(img_ch=1, img_size=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, T=4)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint to export (default: the committed demo model, else a random one)")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    model_path = Path(a.model) if a.model else Path(__file__).resolve().parent.parent / "models" / "demo.pt"
    if not model_path.exists():
        torch.manual_seed(0)
        m = SpikingUNet(UNetConfig(**DEMO))
        model_path = save_checkpoint(tmp / "random.pt", {"model_config": m.cfg.to_dict(), "model": m.state_dict()})
    ckpt = load_checkpoint(model_path)
    weights = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    buf = io.BytesIO()
    torch.save(weights, buf)
    gz = len(gzip.compress(buf.getvalue()))
    times, size = [], None
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        s = export_checkpoint(model_path, tmp / "model.nir")
        times.append(time.perf_counter() - t0)
        size = s["bytes"]
    med = statistics.median(times)
    print(f"model: {model_path} ({s['parameters']:,} graph parameters, {s['nodes']} nodes)")
    label = f"export-nir time (median of {a.repeat})"
    print(f"{label:34s} {med:8.2f} s   target < 5 s: {'MET' if med < 5 else 'NOT MET'}")
    print(f"{'NIR file':34s} {size / 1e6:8.3f} MB")
    print(f"{'gzip-compressed weights (torch)':34s} {gz / 1e6:8.3f} MB")
    print(f"{'ratio file / gzip weights':34s} {size / gz:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
