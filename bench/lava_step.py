"""Wall time of one denoiser call in Lava's CPU simulator (floating_pt), every build side by side with PyTorch.

One run measures, for the same network and each batch size (default 1 and 4):

* PyTorch: the graph executor ``GraphDenoiser`` in float32 and, for the built-in demo model, the
  original ``SpikingUNet`` eval forward, at that batch, median of several calls, timed again right
  before each Lava configuration (the load of a shared machine changes within a run);
* Lava, per configuration (``--configs``): compile time (the first call: compile, start every
  process, one run), wall time per call (median of the calls after the first), Lava processes and
  steps per call, whether every spike of every call equals the PyTorch executor's (float64) spikes,
  and the processes left after closing;
* the ratios Lava / PyTorch per call, and the targets of issue 16 (fused <= 5x PyTorch at batch 1,
  loihi-async >= 2.5x faster than loihi, fused compile < 3 s).

Configurations: ``loihi`` (one process per layer, Loihi protocol), ``loihi-async`` (the same graph,
every process asynchronous), ``fused1`` (one stage process), ``fused`` (the default number of
stages; both fused ones asynchronous, their default), ``fused-loihi`` (the default stages under the
Loihi protocol), and, not run by default, ``loihi-ungated`` (the im2col conv without its read
window) and ``loihi-stock`` (Lava's own conv model).

    python bench/lava_step.py                          # demo-sized random model, batch 1 and 4
    python bench/lava_step.py --batch 1 --configs fused1,fused,fused-loihi
    python bench/lava_step.py --model out/model.nir --calls 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

CONFIGS = {  # name: LavaDenoiser options (+ "conv": a variant of the loihi build's conv model)
    "loihi": dict(build="loihi"),
    "loihi-async": dict(build="loihi", protocol="async"),
    "fused1": dict(build="fused", stages=1),
    "fused": dict(build="fused"),
    "fused-loihi": dict(build="fused", protocol="loihi"),
    "loihi-ungated": dict(build="loihi", conv="ungated"),
    "loihi-stock": dict(build="loihi", conv="stock"),
}
DEFAULT_CONFIGS = "loihi,loihi-async,fused1,fused,fused-loihi"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="NIR file of a denoiser (default: a randomised demo-sized SpikingUNet)")
    p.add_argument("--batch", default="1,4", help="comma list of batch sizes (images per Lava call)")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--calls", type=int, default=5, help="Lava denoiser calls per configuration, the first compiles")
    p.add_argument("--torch-calls", type=int, default=10, help="timed PyTorch calls (after 2 warm-up calls)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the PyTorch timings")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        a.batch = [int(b) for b in a.batch.split(",")]
    except ValueError:
        p.error("--batch: a comma list of integers")
    a.configs = a.configs.split(",")
    if any(c not in CONFIGS for c in a.configs):
        p.error(f"--configs: a comma list of {', '.join(CONFIGS)}")
    if a.calls < 2 or min(a.batch) < 1 or a.torch_calls < 1 or a.threads < 1:
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


def torch_timings(graph, model, batch: int, args) -> dict:
    from sdm.export.execute import GraphDenoiser

    c, h, w = graph.host.img_shape
    x = torch.randn(batch, c, h, w)
    t = torch.full((batch,), 500)
    out = {}
    den = GraphDenoiser(graph, torch.float32).eval()
    out["GraphDenoiser f32"] = median_time(lambda: den(x, t), args.torch_calls)
    if model is not None:
        m = model.float().eval()

        def forward():
            with torch.no_grad():
                m(x, t)

        out["SpikingUNet"] = median_time(forward, args.torch_calls)
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


def _conv_variant(sim, conv: str) -> None:
    """The loihi build with another conv model: ``ungated`` (no read window) or ``stock`` (Lava's own)."""
    from lava.proc.conv.process import Conv

    from sdm.neuromorphic.lava_models.conv_model import set_read_window

    convs = [p for p in sim.net.procs.values() if isinstance(p, Conv)]
    if conv == "ungated":
        for p in convs:
            set_read_window(p, None)
        return
    from lava.proc.conv.models import PyConvModelFloat

    make_cfg = sim._run_cfg

    def stock_cfg():
        cfg = make_cfg()
        cfg.exception_proc_model_map.update({p: PyConvModelFloat for p in convs})
        return cfg

    sim._run_cfg = stock_cfg


def lava_run(graph, name: str, batch: int, args) -> dict:
    from sdm.export.execute import GraphDenoiser
    from sdm.neuromorphic.simulator import LavaDenoiser

    options = dict(CONFIGS[name])
    conv = options.pop("conv", None)
    c, h, w = graph.host.img_shape
    gen = torch.Generator().manual_seed(args.seed + 1)
    steps = torch.linspace(999, 0, args.calls).round().long()  # a sampling-like sequence of diffusion steps
    ref = GraphDenoiser(graph, torch.float64)
    ref.record = True
    res = dict(config=name, batch=batch, call_s=[], mismatches=0, spikes=0, eps_err=0.0)
    sim = LavaDenoiser(graph, batch=batch, record_spikes=True, **options)
    if conv:
        _conv_variant(sim, conv)
    try:
        res["processes"], res["run_length"] = sim.num_processes, sim.net.run_length
        for i, step in enumerate(steps.tolist()):
            x = torch.randn(batch, c, h, w, generator=gen, dtype=torch.float64)
            t = torch.full((batch,), step)
            t0 = time.perf_counter()
            eps = sim(x, t)
            dt = time.perf_counter() - t0
            if i == 0:
                res["first_call_s"], res["os_processes"] = dt, _children()
            else:
                res["call_s"].append(dt)
            eps_ref = ref(x, t)
            res["eps_err"] = max(res["eps_err"], (eps - eps_ref).abs().max().item())
            for n, s in ref.spikes.items():
                res["mismatches"] += int((torch.from_numpy(sim.last_spikes[n]) != s).sum())
                res["spikes"] += int(s.abs().sum())
            print(f"  [{name} b{batch}] call {i + 1}/{args.calls} t={step}: {dt:.3f} s", file=sys.stderr, flush=True)
    finally:
        t0 = time.perf_counter()
        sim.close()
        res["close_s"] = time.perf_counter() - t0
    res["left_after_close"] = _children()
    res["call_median_s"] = statistics.median(res["call_s"])
    return res


def result_rows(runs: list[dict]) -> list[tuple[str, ...]]:
    """One row per (batch, configuration): the Lava numbers and the ratio to each PyTorch timing taken
    just before it."""
    names = list(runs[0]["torch"])
    rows = [("batch", "config", "processes", "steps/call", "compile s", "call ms", "per image ms",
             *[f"x {n}" for n in names], "spikes equal", "left")]
    for r in runs:
        med = r["call_median_s"]
        ratios = [f"{med / r['torch'][n][0]:.1f}x" for n in names]
        equal = "yes" if r["mismatches"] == 0 else f"NO ({r['mismatches']})"
        rows.append((str(r["batch"]), r["config"], f"{r['processes']} ({r['os_processes']})", str(r["run_length"]),
                     f"{r['first_call_s']:.2f}", f"{med * 1e3:.0f}", f"{med / r['batch'] * 1e3:.0f}", *ratios,
                     equal, str(r["left_after_close"])))
    return rows


def target_lines(runs: list[dict]) -> list[str]:
    """The targets of issue 16, measured in this run (batch 1; PyTorch: the fastest of the timings taken
    just before the configuration)."""
    by = {(r["config"], r["batch"]): r for r in runs}
    lines = []

    def check(label, value, ok):
        lines.append(f"{label}: {value}  [{'met' if ok else 'MISSED'}]")

    if ("fused", 1) in by:
        ratio = by["fused", 1]["call_median_s"] / min(m for m, _ in by["fused", 1]["torch"].values())
        check("fused (default K) per call / fastest PyTorch, batch 1 (target <= 5x)", f"{ratio:.1f}x", ratio <= 5)
    if ("loihi", 1) in by and ("loihi-async", 1) in by:
        speedup = by["loihi", 1]["call_median_s"] / by["loihi-async", 1]["call_median_s"]
        check("loihi-async speedup over loihi, batch 1 (target >= 2.5x)", f"{speedup:.2f}x", speedup >= 2.5)
    for (name, b), r in by.items():
        if name.startswith("fused"):
            check(f"{name} compile + first call, batch {b} (target < 3 s)", f"{r['first_call_s']:.2f} s",
                  r["first_call_s"] < 3)
    return lines


def main(args) -> int:
    warnings.filterwarnings("ignore", message="Cannot import module")
    torch.set_num_threads(args.threads)
    t_start, load0 = time.perf_counter(), os.getloadavg()[0]
    graph, model, desc = load(args)
    if graph.host is None:
        print("the NIR file has no host side (not a denoiser): nothing to time", file=sys.stderr)
        return 2
    print(f"model: {desc}", file=sys.stderr)
    runs = []
    for b in args.batch:
        for name in args.configs:
            print(f"PyTorch timings ({args.threads} threads, batch {b}) ...", file=sys.stderr, flush=True)
            pt = torch_timings(graph, model, b, args)
            runs.append({**lava_run(graph, name, b, args), "torch": pt})
    print()
    print(f"Lava floating_pt vs PyTorch CPU -- {desc}")
    print(f"{args.calls} Lava calls per configuration (the first compiles; call = median of the rest), torch threads "
          f"{args.threads}, {os.cpu_count()} CPUs; ratios: Lava call / PyTorch call at the same batch")
    rows = result_rows(runs)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = "  ".join("-" * w for w in widths)
    print(rule)
    for i, r in enumerate(rows):
        print("  ".join(v.rjust(w) if v[:1].isdigit() else v.ljust(w) for v, w in zip(r, widths)).rstrip())
        if i == 0:
            print(rule)
    print(rule)
    for b in args.batch:
        medians = {n: [r["torch"][n][0] * 1e3 for r in runs if r["batch"] == b] for n in runs[0]["torch"]}
        print(f"PyTorch, batch {b}, medians before each configuration: "
              + ", ".join(f"{n} {min(v):.1f}-{max(v):.1f} ms" for n, v in medians.items()))
    for line in target_lines(runs):
        print(line)
    print(f"bench wall time {time.perf_counter() - t_start:.0f} s; load average at start / end "
          f"{load0:.1f} / {os.getloadavg()[0]:.1f} (other work skews timings: compare ratios within one run)")
    return 0 if all(r["mismatches"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(args))
