"""Wall time of one denoiser call in Lava's CPU simulator (floating_pt) against PyTorch on the CPU.

One run measures, for the same network:

* Lava: compile time (the first call), wall time per denoiser call (median over the calls
  after the first), the number of Lava processes and Lava steps per call, and whether every
  spike of every call equals the PyTorch executor's (float64) spikes;
* PyTorch: the graph executor ``GraphDenoiser`` in float32 and, for the built-in demo model,
  the original ``SpikingUNet`` eval forward, batch 1, median of several calls;
* the ratio Lava / PyTorch per image (a Lava call on a pipelined batch of B images counts B).

``--conv`` picks the Lava conv process models to time, a comma list of ``fast`` (the project's
im2col model with window gating, docs/lava-mapping.md), ``ungated`` (the same model computing every
step) and ``stock`` (Lava's ``PyConvModelFloat``); the default ``fast,ungated`` shows what the
gating gains, ``both`` means ``fast,stock``. Every run after the first reports fast's speedup over it.

    python bench/lava_step.py                      # demo-sized random model, batch 1
    python bench/lava_step.py --batch 4 --conv fast,stock
    python bench/lava_step.py --model out/model.nir --calls 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

CONV_MODELS = ("fast", "ungated", "stock")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="NIR file of a denoiser (default: a randomised demo-sized SpikingUNet)")
    p.add_argument("--batch", type=int, default=1, help="images per Lava call (pipelined)")
    p.add_argument("--calls", type=int, default=5, help="Lava denoiser calls, the first one compiles")
    p.add_argument("--torch-calls", type=int, default=10, help="timed PyTorch calls (after 2 warm-up calls)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the PyTorch timings")
    p.add_argument("--conv", default="fast,ungated",
                   help="comma list of Lava conv process models: fast (im2col + window gating), ungated "
                        "(im2col, every step), stock (Lava's own); 'both' = fast,stock")
    p.add_argument("--stock-conv", action="store_true", help="same as --conv stock")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.conv = ["stock"] if a.stock_conv else ("fast,stock" if a.conv == "both" else a.conv).split(",")
    if not a.conv or any(c not in CONV_MODELS for c in a.conv):
        p.error(f"--conv: a comma list of {', '.join(CONV_MODELS)}")
    if a.calls < 2 or a.batch < 1 or a.torch_calls < 1 or a.threads < 1:
        p.error("--calls must be >= 2, --batch, --torch-calls and --threads >= 1")
    return a


args = parse_args() if __name__ == "__main__" else None
# Lava forks one OS process per Lava process from this one; with 2 cores and ~130 processes a
# BLAS thread pool in each only oversubscribes.  Must be set before numpy is first imported.
for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEMO = dict(img_ch=1, img_size=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, T=4)


def load(args):
    """(graph, SpikingUNet or None, description)."""
    from sdm.export.lower import lower_unet
    from sdm.export.nir_format import read_nir
    from sdm.testing.weights import randomise  # trained-looking BatchNorm statistics, as the tests use
    from sdm.train.unet import SpikingUNet, UNetConfig

    if args.model:
        return read_nir(args.model), None, args.model
    torch.manual_seed(args.seed)
    model = randomise(SpikingUNet(UNetConfig(**DEMO)), args.seed)
    desc = "demo-sized random SpikingUNet " + ", ".join(f"{k}={v}" for k, v in DEMO.items())
    return lower_unet(model, dtype=np.float64), model, desc


def median_time(fn, n: int, warmup: int = 2) -> tuple[float, float]:
    """(median, min) wall time of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def torch_timings(graph, model, args) -> dict:
    from sdm.export.execute import GraphDenoiser

    c, h, w = graph.host.img_shape
    x = torch.randn(1, c, h, w)
    t = torch.tensor([500])
    out = {}
    den = GraphDenoiser(graph, torch.float32).eval()
    out["GraphDenoiser float32"] = median_time(lambda: den(x, t), args.torch_calls)
    if model is not None:
        m = model.float().eval()

        def forward():
            with torch.no_grad():
                m(x, t)

        out["SpikingUNet eval forward"] = median_time(forward, args.torch_calls)
    return out


def _children() -> int:
    """Live child processes of this one (Lava's processes, its managers; not multiprocessing's resource tracker)."""
    me, n = os.getpid(), 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        if int(rest[1]) == me and rest[0] != "Z" and b"resource_tracker" not in cmd:
            n += 1
    return n


def lava_run(graph, conv: str, args) -> dict:
    from sdm.export.execute import GraphDenoiser
    from sdm.neuromorphic.simulator import LavaDenoiser

    B = args.batch
    c, h, w = graph.host.img_shape
    gen = torch.Generator().manual_seed(args.seed + 1)
    steps = torch.linspace(999, 0, args.calls).round().long()  # a sampling-like sequence of diffusion steps
    ref = GraphDenoiser(graph, torch.float64)
    ref.record = True
    res = dict(conv=conv, call_s=[], mismatches=0, spikes=0, eps_err=0.0)
    sim = LavaDenoiser(graph, batch=B, record_spikes=True)
    if conv == "ungated":  # the fast model without its read window computes every step
        from lava.proc.conv.process import Conv

        from sdm.neuromorphic.lava_models.conv_model import set_read_window

        for p in sim.net.procs.values():
            if isinstance(p, Conv):
                set_read_window(p, None)
    if conv == "stock":
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.proc.conv.models import PyConvModelFloat
        from lava.proc.conv.process import Conv

        # the same process graph, only Lava's own float model for every Conv process
        sim._run_cfg = lambda: Loihi2SimCfg(select_tag="floating_pt", exception_proc_model_map={Conv: PyConvModelFloat})
    try:
        res["processes"] = sim.num_processes
        res["run_length"] = sim.net.run_length
        for i, step in enumerate(steps.tolist()):
            x = torch.randn(B, c, h, w, generator=gen, dtype=torch.float64)
            t = torch.full((B,), step)
            t0 = time.perf_counter()
            eps = sim(x, t)
            dt = time.perf_counter() - t0
            if i == 0:
                res["first_call_s"] = dt
                res["compile_s"] = sim.compile_seconds
                res["os_processes"] = _children()
                timing0 = dict(sim.timing)
            else:
                res["call_s"].append(dt)
            eps_ref = ref(x, t)
            res["eps_err"] = max(res["eps_err"], (eps - eps_ref).abs().max().item())
            for name, s in ref.spikes.items():
                res["mismatches"] += int((torch.from_numpy(sim.last_spikes[name]) != s).sum())
                res["spikes"] += int(s.sum())
            print(f"  [{conv}] call {i + 1}/{args.calls} t={step}: {dt:.2f} s", file=sys.stderr, flush=True)
        res["timing"] = {k: (v - timing0.get(k, 0.0)) / (args.calls - 1) for k, v in sim.timing.items()}
    finally:
        t0 = time.perf_counter()
        sim.close()
        res["close_s"] = time.perf_counter() - t0
    res["left_after_close"] = _children()
    res["call_median_s"] = statistics.median(res["call_s"])
    return res


def main(args) -> int:
    warnings.filterwarnings("ignore", message="Cannot import module")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    graph, model, desc = load(args)
    if graph.host is None:
        print("the NIR file has no host side (not a denoiser): nothing to time", file=sys.stderr)
        return 2
    print(f"model: {desc}", file=sys.stderr)
    print(f"PyTorch timings ({args.threads} threads, batch 1) ...", file=sys.stderr, flush=True)
    pt = torch_timings(graph, model, args)
    runs = [lava_run(graph, conv, args) for conv in args.conv]

    B = args.batch
    print()
    print(f"Lava floating_pt vs PyTorch CPU -- {desc}")
    print(f"batch {B} per Lava call, {args.calls} calls (the first compiles), torch threads {args.threads}, "
          f"{os.cpu_count()} CPUs")
    rows = []
    for r in runs:
        per_img = r["call_median_s"] / B
        rows += [
            (f"[{r['conv']} conv] Lava processes (OS processes)", f"{r['processes']} ({r['os_processes']})"),
            (f"[{r['conv']} conv] Lava steps per call", f"{r['run_length']} ({r['run_length'] / B:g} per image)"),
            (f"[{r['conv']} conv] compile (first call) / close", f"{r['first_call_s']:.2f} s / {r['close_s']:.2f} s, "
                                                                  f"{r['left_after_close']} processes left"),
            (f"[{r['conv']} conv] wall time per call (median of {len(r['call_s'])})",
             f"{r['call_median_s']:.3f} s  (min {min(r['call_s']):.3f}, max {max(r['call_s']):.3f})"),
            (f"[{r['conv']} conv]   of which set inputs / run / read records",
             " / ".join(f"{r['timing'].get(k, float('nan')):.3f}" for k in ("set_inputs", "run", "read_records"))
             + " s"),
            (f"[{r['conv']} conv] per image",
             f"{per_img:.3f} s  ({per_img / r['run_length'] * B * 1e3:.1f} ms per step)"),
            (f"[{r['conv']} conv] spikes equal PyTorch (float64)",
             f"{'yes' if r['mismatches'] == 0 else 'NO'}: {r['mismatches']} of {r['spikes']} spikes differ, "
             f"max |eps diff| {r['eps_err']:.1e}"),
        ]
        for name, (med, best) in pt.items():
            rows.append((f"[{r['conv']} conv] Lava / {name} per image",
                         f"{per_img / med:.1f}x  (Lava median / PyTorch min: {per_img / best:.1f}x)"))
    for name, (med, best) in pt.items():
        rows.append((f"PyTorch {name}, batch 1 (median of {args.torch_calls})",
                     f"{med * 1e3:.2f} ms  (min {best * 1e3:.2f} ms)"))
    if model is None:
        rows.append(("PyTorch SpikingUNet eval forward", "n/a (--model: no PyTorch module)"))
    for other in runs[1:]:
        first, alt = runs[0]["conv"], other["conv"]
        rows.append((f"speedup of {first} over {alt} ({alt} / {first} per call)",
                     f"{other['call_median_s'] / runs[0]['call_median_s']:.2f}x"))
    rows.append(("bench wall time", f"{time.perf_counter() - t_start:.0f} s"))
    rows.append(("load average at start / end (other work skews timings)",
                 f"{load0:.1f} / {os.getloadavg()[0]:.1f}"))
    width = max(len(k) for k, _ in rows)
    print("-" * (width + 40))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("-" * (width + 40))
    return 0 if all(r["mismatches"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(args))
