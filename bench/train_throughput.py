"""Training and inference throughput of our spiking UNet against the spikingjelly build.

Both models have the same architecture and parameter count (asserted) and start
from the same weights (ours are copied into the spikingjelly build, and their
outputs are checked to agree).  They are timed in one run, interleaved
(A, B, A, B, ...) so that machine noise hits both alike:

* training step: forward + MSE against a fixed random target + backward + Adam
  step, train mode;
* forward pass: eval mode under ``torch.no_grad``.

The reported figure is images/s from the median per-iteration time.

    python bench/train_throughput.py --threads 2
    python bench/train_throughput.py --threads 2 --profile --json bench_out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
from bench_util import import_spikingjelly_build, layer_signature, run_phase, summarize_phase
from torch.nn import functional as F

TARGET_TRAIN_RATIO = 3.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ch", type=int, default=32)
    p.add_argument("--ch-mult", default="1,2,2,4", help="comma-separated channel multipliers")
    p.add_argument("--num-res-blocks", type=int, default=2)
    p.add_argument("--T", type=int, default=4, help="spiking steps")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--img-ch", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per model and phase")
    p.add_argument("--iters", type=int, default=8, help="timed iterations per model and phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--profile", action="store_true",
                   help="also run torch.profiler on a few training steps of each model")
    p.add_argument("--profile-steps", type=int, default=2)
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    args.ch_mult = tuple(int(m) for m in args.ch_mult.split(",") if m.strip())
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1 or args.threads < 1:
        p.error("--iters, --batch-size and --threads must be >= 1, --warmup >= 0")
    return args


def build_models(args, sj_unet):
    from spikingjelly.activation_based import neuron as sj_neuron

    from sdm.train.neuron import IFNeuron
    from sdm.train.unet import SpikingUNet, UNetConfig, count_parameters

    cfg = UNetConfig(img_ch=args.img_ch, img_size=args.img_size, ch=args.ch, ch_mult=args.ch_mult,
                     num_res_blocks=args.num_res_blocks, T=args.T)
    torch.manual_seed(args.seed)
    ours = SpikingUNet(cfg)
    torch.manual_seed(args.seed)
    sj = sj_unet.SJSpikingUNet(img_ch=args.img_ch, ch=args.ch, ch_mult=args.ch_mult,
                               num_res_blocks=args.num_res_blocks, T=args.T,
                               diffusion_steps=cfg.diffusion_steps)
    n_ours, n_sj = count_parameters(ours), count_parameters(sj)
    assert n_ours == n_sj, f"parameter counts differ: ours {n_ours}, spikingjelly {n_sj}"
    sig_ours = layer_signature(ours, (IFNeuron,))
    sig_sj = layer_signature(sj, (sj_neuron.IFNode,))
    assert sig_ours == sig_sj, "layer structures differ"
    sj_unet.load_from_ours(sj, ours)  # identical starting weights
    return cfg, ours, sj, n_ours, sig_ours["neurons"]


def make_batch(args):
    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.batch_size, args.img_ch, args.img_size, args.img_size, generator=g)
    t = torch.randint(0, 1000, (args.batch_size,), generator=g)
    target = torch.randn(x.shape, generator=g)
    return x, t, target


def check_parity(ours, sj, reset, x, t) -> float:
    """Max |ours - spikingjelly| of the train-mode output on the bench batch (relative to max |ours|)."""
    ours.train()
    sj.train()
    with torch.no_grad():
        a = ours(x, t)
        b = sj(x, t)
        reset(sj)
    rel = ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
    if not rel < 1e-2:  # a few threshold-straddling spikes may flip with the conv blocking
        raise AssertionError(f"the two builds disagree: max relative difference {rel:.3g}")
    return rel


class Runner:
    """One model with its optimizer, a training step and an eval forward."""

    def __init__(self, name, model, lr, after_call=None):
        self.name = name
        self.model = model
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)
        self.after_call = after_call or (lambda m: None)

    def train_step(self, x, t, target):
        self.opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(self.model(x, t), target)
        loss.backward()
        self.opt.step()
        self.after_call(self.model)

    def eval_step(self, x, t, target):
        with torch.no_grad():
            self.model(x, t)
        self.after_call(self.model)


def profile_training(runner, batch, steps, row_limit=15):
    from torch.profiler import ProfilerActivity, profile

    runner.model.train()
    runner.train_step(*batch)  # make sure nothing first-call is in the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            runner.train_step(*batch)
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:row_limit]
    table = events.table(sort_by="self_cpu_time_total", row_limit=row_limit)
    rows = [{"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
             "self_cpu_pct": 100.0 * e.self_cpu_time_total / max(total_self, 1e-9),
             "calls_per_step": e.count / steps} for e in top]
    n_calls = sum(e.count for e in events) / steps
    return table, rows, n_calls, total_self / 1e3 / steps


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sj_unet, sj_functional, sj_version = import_spikingjelly_build("sj_unet", "bench/train_throughput.py")

    cfg, ours, sj, n_params, n_neurons = build_models(args, sj_unet)
    batch = make_batch(args)
    parity = check_parity(ours, sj, sj_functional.reset_net, batch[0], batch[1])

    runners = [Runner("ours", ours, args.lr), Runner("spikingjelly", sj, args.lr, sj_functional.reset_net)]
    print(f"spiking UNet ch={cfg.ch} ch_mult={list(cfg.ch_mult)} res_blocks={cfg.num_res_blocks} T={cfg.T} "
          f"img={cfg.img_ch}x{cfg.img_size}x{cfg.img_size}: {n_params:,} parameters, {n_neurons} neuron layers")
    print(f"torch {torch.__version__}, spikingjelly {sj_version}, {args.threads} threads, "
          f"batch {args.batch_size}, warmup {args.warmup}, iters {args.iters}; "
          f"same weights, outputs agree to {parity:.1e} (relative)")

    wall0 = time.perf_counter()
    results = {}
    for phase in ("train", "eval"):
        wall, cpu = run_phase(runners, phase, batch, args.warmup, args.iters)
        results[phase] = summarize_phase(wall, cpu, args.batch_size)
    bench_wall = time.perf_counter() - wall0

    labels = {"train": "training step", "eval": "forward (eval, no_grad)"}
    print()
    print(f"{'':26s}{'ours img/s':>12s}{'sj img/s':>12s}{'ours s/it':>11s}{'sj s/it':>10s}{'ratio':>8s}"
          f"{'|':>3s}{'CPU s/it ours':>15s}{'sj':>8s}{'ratio':>8s}")
    for phase, r in results.items():
        print(f"{labels[phase]:26s}{r['images_per_s']['ours']:12.2f}{r['images_per_s']['spikingjelly']:12.2f}"
              f"{r['median_s']['ours']:11.3f}{r['median_s']['spikingjelly']:10.3f}"
              f"{r['ratio_ours_over_sj']:7.2f}x"
              f"{'|':>3s}{r['median_cpu_s']['ours']:15.3f}{r['median_cpu_s']['spikingjelly']:8.3f}"
              f"{r['cpu_ratio_ours_over_sj']:7.2f}x")
    print("(ratio = ours/spikingjelly images per second from median wall time; the CPU columns are the "
          "median process CPU time per iteration, a cross-check when the machine is shared)")
    train_ratio = results["train"]["ratio_ours_over_sj"]
    met = train_ratio >= TARGET_TRAIN_RATIO
    print(f"\ntarget: training ratio >= {TARGET_TRAIN_RATIO:.1f}x -> {'MET' if met else 'NOT MET'} "
          f"({train_ratio:.2f}x)")

    profiles = {}
    if args.profile:
        for r in runners:
            table, rows, n_calls, ms = profile_training(r, batch, args.profile_steps)
            profiles[r.name] = {"top_ops": rows, "op_calls_per_step": n_calls, "self_cpu_ms_per_step": ms}
            print(f"\n=== profile: {r.name}, training step ({args.profile_steps} steps; "
                  f"{n_calls:.0f} profiled op calls and {ms:.0f} ms self CPU per step) ===")
            print(table)

    if args.json:
        out = {
            "config": cfg.to_dict(), "batch_size": args.batch_size, "threads": args.threads,
            "warmup": args.warmup, "iters": args.iters, "seed": args.seed, "lr": args.lr,
            "parameters": n_params, "neuron_layers": n_neurons, "parity_rel_diff": parity,
            "torch": torch.__version__, "spikingjelly": sj_version, "python": platform.python_version(),
            "machine": platform.machine(), "bench_wall_s": bench_wall,
            "results": results, "target_train_ratio": TARGET_TRAIN_RATIO, "target_met": met,
            "profile": profiles or None,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
