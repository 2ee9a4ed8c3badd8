"""Training and forward throughput of the Spiking-Diffusion networks against their spikingjelly builds.

Networks: the VQ-SVAE (``sdm.train.vqsvae``) and the SDID denoiser (``sdm.train.sdid``), each
against the same network built from spikingjelly's ``LIFNode`` in the reference's style
(``bench/sj_sd.py``).  Both builds have the same layers and parameter count (asserted) and the same
weights (ours are copied into the spikingjelly build); their eval-mode outputs and spikes, and
their training losses, are compared before any timing.  The builds are timed in one run,
interleaved (A, B, A, B, ...) so that machine noise hits both alike:

* training step: forward + the network's real loss + backward + AdamW step (the reference's lr
  1e-3, weight decay 1e-3), train mode.  VQ-SVAE: ``vqsvae_loss`` (ours) and the reference's
  in-forward losses (spikingjelly) on 28x28 images.  SDID: ``AbsorbingDiffusion.loss`` for both,
  on random 7x7 token grids with K = 128, masks and t drawn from equally seeded generators;
* forward pass: eval mode under ``torch.no_grad`` (SDID on one fixed masked grid).

The reported figure is images/s from the median per-iteration time.

    python bench/sd_throughput.py --threads 2
    python bench/sd_throughput.py --threads 1 --iters 3 --sdid-channels 16,32,64,128,64 --json sd.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
from bench_util import import_spikingjelly_build, layer_signature, run_phase, summarize_phase
from torch import nn

NETWORKS = ("vqsvae", "sdid")
DEFAULT_SDID = "64,128,256,512,256"
LABELS = {"train": "training step", "eval": "forward (eval, no_grad)"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated subset of vqsvae,sdid")
    p.add_argument("--sdid-channels", nargs="+", default=[DEFAULT_SDID], metavar="C1,...,C5",
                   help=f"SDID widths, one timed network each (default {DEFAULT_SDID}, 3.1M parameters; "
                        "16,32,64,128,64 is the CPU demo width)")
    p.add_argument("--data", default="mnist-bundled", choices=("mnist-bundled", "random"),
                   help="VQ-SVAE images: real MNIST digits or uniform noise in [-1, 1]")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per model and phase")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per model and phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    args.networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    if not args.networks or any(n not in NETWORKS for n in args.networks):
        p.error(f"--networks must be a comma-separated subset of {','.join(NETWORKS)}")
    try:
        args.sdid_channels = [tuple(int(c) for c in w.split(",")) for w in args.sdid_channels]
    except ValueError:
        p.error("--sdid-channels takes comma-separated ints, e.g. 16,32,64,128,64")
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1 or args.threads < 1:
        p.error("--iters, --batch-size and --threads must be >= 1, --warmup >= 0")
    return args


class LossRunner:
    """One model with its AdamW optimizer: ``train_step`` = ``loss_fn(model, *batch)`` + backward +
    step, ``eval_step`` = ``forward_fn(model, *batch)`` under no_grad; ``after_call`` after each
    (spikingjelly's ``reset_net``)."""

    def __init__(self, name, model, loss_fn, forward_fn, lr, weight_decay, after_call=None):
        self.name = name
        self.model = model
        self.loss_fn = loss_fn
        self.forward_fn = forward_fn
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
        self.after_call = after_call or (lambda m: None)

    def train_step(self, *batch):
        self.opt.zero_grad(set_to_none=True)
        self.loss_fn(self.model, *batch).backward()
        self.opt.step()
        self.after_call(self.model)

    def eval_step(self, *batch):
        with torch.no_grad():
            self.forward_fn(self.model, *batch)
        self.after_call(self.model)


# ----- agreement of the two builds ------------------------------------------------------------

@torch.no_grad()
def calibrate_bn(model: nn.Module, forward) -> None:
    """Set every BN's running statistics to those of one train-mode batch, so that the eval-mode
    comparison sees firing like training does (fresh statistics, mean 0 and variance 1, leave
    the VQ-SVAE encoder nearly silent and would make the spike comparison vacuous)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 1.0
    model.train()
    forward(model)
    for m, mom in zip(bns, saved):
        m.momentum = mom


def record_spikes(model: nn.Module, neuron_type) -> tuple[list, list]:
    """Forward hooks that append every neuron layer's output spikes, in module order."""
    out, handles = [], []
    for m in model.modules():
        if isinstance(m, neuron_type):
            handles.append(m.register_forward_hook(lambda mod, inp, o: out.append(o.detach().clone())))
    return out, handles


def compare_eval(ours, sj, ours_fwd, sj_fwd, reset, neuron_types) -> tuple[list, list, dict]:
    """Eval-mode outputs of both builds on the same input, and their spike agreement."""
    from sdm.train.neuron import IFNeuron

    ours.eval()
    sj.eval()
    rec_a, h_a = record_spikes(ours, IFNeuron)
    rec_b, h_b = record_spikes(sj, neuron_types)
    with torch.no_grad():
        a, b = ours_fwd(ours), sj_fwd(sj)
    reset(sj)
    for h in h_a + h_b:
        h.remove()
    assert len(rec_a) == len(rec_b), f"{len(rec_a)} vs {len(rec_b)} neuron-layer calls"
    diff = sum(int((x != y).sum()) for x, y in zip(rec_a, rec_b))
    total = sum(x.numel() for x in rec_a)
    fired = sum(float(x.sum()) for x in rec_a)
    spikes = {"layers": len(rec_a), "differing": diff, "total": total, "differing_frac": diff / total,
              "firing_rate": fired / total,
              "per_layer_rate": [round(float(x.mean()), 4) for x in rec_a]}
    return a, b, spikes


def check_agreement(spikes: dict, out_rel: float, loss_rel: float, what: str) -> None:
    """Fail loudly when the builds differ by more than a few threshold ties can explain."""
    exact_spikes = spikes["differing"] == 0
    if (exact_spikes and out_rel > 1e-4) or spikes["differing_frac"] > 1e-3 or loss_rel > 1e-2:
        raise AssertionError(f"{what}: the two builds disagree: output max rel diff {out_rel:.3g}, "
                             f"{spikes['differing']} of {spikes['total']} spikes differ, loss rel diff {loss_rel:.3g}")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()


def _assert_same_structure(ours, sj, sj_neuron_type, count_parameters) -> tuple[int, int]:
    from sdm.train.neuron import IFNeuron

    n_ours, n_sj = count_parameters(ours), count_parameters(sj)
    assert n_ours == n_sj, f"parameter counts differ: ours {n_ours}, spikingjelly {n_sj}"
    sig_ours, sig_sj = layer_signature(ours, (IFNeuron,)), layer_signature(sj, (sj_neuron_type,))
    assert sig_ours == sig_sj, "layer structures differ"
    return n_ours, sig_ours["neurons"]


# ----- the networks ---------------------------------------------------------------------------

def _images(args) -> torch.Tensor:
    """``[N, 1, 28, 28]`` in [-1, 1]: real digits (the 5,000 of mnist-bundled) or uniform noise."""
    if args.data == "random":
        g = torch.Generator().manual_seed(args.seed + 1)
        return torch.rand(args.batch_size, 1, 28, 28, generator=g) * 2 - 1
    from sdm.train.data import load_dataset

    ds = load_dataset("mnist-bundled", image_size=28)
    return ds[torch.arange(len(ds))]


def vqsvae_case(args, sj_sd, functional) -> dict:
    """The VQ-SVAE pair: built, weights shared, agreement checked, runners ready."""
    from spikingjelly.activation_based import neuron as sj_neuron

    from sdm.train.unet import count_parameters
    from sdm.train.vqsvae import VQSVAE, VQSVAEConfig, data_variance, vqsvae_loss

    pool = _images(args)
    g = torch.Generator().manual_seed(args.seed + 2)
    x = pool[torch.randperm(len(pool), generator=g)[:args.batch_size]].contiguous()
    dv = data_variance(pool, VQSVAEConfig().data_scale)
    torch.manual_seed(args.seed)
    ours = VQSVAE(VQSVAEConfig())
    cfg = ours.cfg
    calibrate_bn(ours, lambda m: m(x))
    sj = sj_sd.vqsvae_from_ours(ours, dv)
    n_params, n_neurons = _assert_same_structure(ours, sj, sj_neuron.LIFNode, count_parameters)

    def sj_call(m, x):  # the reference's main.py: model-space images, repeated T times
        xm = x * cfg.data_scale
        return m(xm.unsqueeze(0).repeat(cfg.T, 1, 1, 1, 1), xm)

    def ours_loss(m, x):
        return vqsvae_loss(m, m(x), x, dv)[0]

    def sj_loss(m, x):
        e_q_loss, recon_loss, _ = sj_call(m, x)
        return e_q_loss + recon_loss

    a, b, spikes = compare_eval(ours, sj, lambda m: m(x), lambda m: sj_call(m, x), functional.reset_net,
                                sj_neuron.LIFNode)
    idx_agree = float((a.indices == b[2]).float().mean())
    recon_abs = (a.recon - b[1]).abs().max().item()
    loss_rel = _train_loss_rel(ours, sj, ours_loss, sj_loss, (x,), functional.reset_net)
    parity = {"recon_max_abs_diff": recon_abs, "recon_max_rel_diff": _rel(a.recon, b[1]),
              "indices_agree_frac": idx_agree, "spikes": spikes, "train_loss_rel_diff": loss_rel}
    check_agreement(spikes, parity["recon_max_rel_diff"], loss_rel, "VQ-SVAE")
    runners = [LossRunner("ours", ours, ours_loss, lambda m, x: m(x), args.lr, args.weight_decay),
               LossRunner("spikingjelly", sj, sj_loss, sj_call, args.lr, args.weight_decay, functional.reset_net)]
    title = (f"VQ-SVAE T={cfg.T} channels={list(cfg.channels)} D={cfg.latent_dim} K={cfg.codebook_size} "
             f"{cfg.img_ch}x{cfg.img_size}x{cfg.img_size} ({args.data})")
    return {"name": "VQ-SVAE", "title": title, "config": cfg.to_dict(), "parameters": n_params,
            "neuron_layers": n_neurons, "parity": parity, "runners": runners, "batch": (x,)}


def _train_loss_rel(ours, sj, ours_loss, sj_loss, batch, reset) -> float:
    """Relative difference of the train-mode losses of the two builds on ``batch`` (no update)."""
    ours.train()
    sj.train()
    with torch.no_grad():
        la, lb = float(ours_loss(ours, *batch)), float(sj_loss(sj, *batch))
    reset(sj)
    return abs(la - lb) / max(abs(la), 1e-30)


def _absorbing_loss(diff, call, seed: int):
    """``loss(model, x0, x_t, t)``: the absorbing-diffusion loss of ``call(model, x_t, t)`` on ``x0``,
    with masks and t from a generator of its own (``x_t`` and ``t`` are the eval batch, unused)."""
    gen = torch.Generator().manual_seed(seed)
    return lambda m, x0, x_t, t: diff.loss(lambda xt, tt: call(m, xt, tt), x0, gen)


def sdid_case(args, channels, sj_sd, functional) -> dict:
    """One SDID pair at ``channels``: built, weights shared, agreement checked, runners ready."""
    from spikingjelly.activation_based import neuron as sj_neuron

    from sdm.train.absorbing import AbsorbingConfig, AbsorbingDiffusion
    from sdm.train.sdid import SDID, SDIDConfig
    from sdm.train.unet import count_parameters

    cfg = SDIDConfig(channels=channels)
    diff = AbsorbingDiffusion(AbsorbingConfig(codebook_size=cfg.codebook_size, steps=cfg.steps))
    g = torch.Generator().manual_seed(args.seed + 3)
    x0 = torch.randint(0, cfg.codebook_size, (args.batch_size, 7, 7), generator=g)
    t = torch.full((args.batch_size,), cfg.steps // 2, dtype=torch.long)  # a half-masked grid for eval
    x_t, _, _ = diff.q_sample(x0, t, g)
    torch.manual_seed(args.seed)
    ours = SDID(cfg)
    calibrate_bn(ours, lambda m: m(x_t, t))
    sj = sj_sd.sdid_from_ours(ours)
    n_params, n_neurons = _assert_same_structure(ours, sj, sj_neuron.LIFNode, count_parameters)

    def ours_call(m, x_t, t):
        return m(x_t, t)

    def sj_call(m, x_t, t):  # the reference's main.py feeds the tokens as float [B, 1, h, w]
        return m(x_t.unsqueeze(1).float(), t)

    a, b, spikes = compare_eval(ours, sj, lambda m: ours_call(m, x_t, t), lambda m: sj_call(m, x_t, t),
                                functional.reset_net, sj_neuron.LIFNode)
    batch = (x0, x_t, t)
    loss_rel = _train_loss_rel(ours, sj, _absorbing_loss(diff, ours_call, args.seed + 5),
                               _absorbing_loss(diff, sj_call, args.seed + 5), batch, functional.reset_net)
    parity = {"logits_max_abs_diff": (a - b).abs().max().item(), "logits_max_rel_diff": _rel(a, b),
              "argmax_agree_frac": float((a.argmax(1) == b.argmax(1)).float().mean()), "spikes": spikes,
              "train_loss_rel_diff": loss_rel}
    check_agreement(spikes, parity["logits_max_rel_diff"], loss_rel, f"SDID {list(channels)}")
    # one loss generator per build, seeded alike, so that both draw the same t and masks in turn
    runners = [LossRunner("ours", ours, _absorbing_loss(diff, ours_call, args.seed + 4),
                          lambda m, x0, x_t, t: ours_call(m, x_t, t), args.lr, args.weight_decay),
               LossRunner("spikingjelly", sj, _absorbing_loss(diff, sj_call, args.seed + 4),
                          lambda m, x0, x_t, t: sj_call(m, x_t, t), args.lr, args.weight_decay, functional.reset_net)]
    title = (f"SDID T={cfg.T} channels={list(cfg.channels)} K={cfg.codebook_size} inputs={cfg.inputs} "
             f"tokens 7x7, absorbing loss {diff.cfg.loss}")
    return {"name": f"SDID {n_params / 1e6:.2f}M", "title": title, "config": cfg.to_dict(), "parameters": n_params,
            "neuron_layers": n_neurons, "parity": parity, "runners": runners, "batch": batch}


# ----- report ---------------------------------------------------------------------------------

def _parity_line(case: dict) -> str:
    p, s = case["parity"], case["parity"]["spikes"]
    if "recon_max_abs_diff" in p:
        out = (f"recon max |diff| {p['recon_max_abs_diff']:.2e} (rel {p['recon_max_rel_diff']:.1e}), "
               f"codes agree {100 * p['indices_agree_frac']:.2f} %")
    else:
        out = (f"logits max |diff| {p['logits_max_abs_diff']:.2e} (rel {p['logits_max_rel_diff']:.1e}), "
               f"argmax agree {100 * p['argmax_agree_frac']:.2f} %")
    return (f"  eval agreement: {out}; spikes differ {s['differing']} of {s['total']:,} "
            f"({100 * s['differing_frac']:.4f} %, {s['layers']} layers, firing rate {s['firing_rate']:.3f}); "
            f"train loss rel diff {p['train_loss_rel_diff']:.1e}")


def print_table(cases: list[dict]) -> None:
    print()
    print(f"{'network':14s}{'phase':26s}{'ours img/s':>12s}{'sj img/s':>10s}{'ours s/it':>11s}{'sj s/it':>10s}"
          f"{'ratio':>8s}{'|':>3s}{'CPU s/it ours':>15s}{'sj':>8s}{'ratio':>8s}")
    for c in cases:
        for phase, r in c["results"].items():
            print(f"{c['name']:14s}{LABELS[phase]:26s}{r['images_per_s']['ours']:12.2f}"
                  f"{r['images_per_s']['spikingjelly']:10.2f}{r['median_s']['ours']:11.3f}"
                  f"{r['median_s']['spikingjelly']:10.3f}{r['ratio_ours_over_sj']:7.2f}x"
                  f"{'|':>3s}{r['median_cpu_s']['ours']:15.3f}{r['median_cpu_s']['spikingjelly']:8.3f}"
                  f"{r['cpu_ratio_ours_over_sj']:7.2f}x")
    print("(ratio = ours/spikingjelly images per second from median wall time; the CPU columns are the "
          "median process CPU time per iteration, a cross-check when the machine is shared)")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sj_sd, sj_functional, sj_version = import_spikingjelly_build("sj_sd", "bench/sd_throughput.py")
    print(f"torch {torch.__version__}, spikingjelly {sj_version}, {args.threads} threads, "
          f"batch {args.batch_size}, warmup {args.warmup}, iters {args.iters}")
    builders = []
    if "vqsvae" in args.networks:
        builders.append(lambda: vqsvae_case(args, sj_sd, sj_functional))
    if "sdid" in args.networks:
        builders += [lambda ch=ch: sdid_case(args, ch, sj_sd, sj_functional) for ch in args.sdid_channels]
    wall0, cases = time.perf_counter(), []
    for build in builders:
        case = build()
        print(f"{case['title']}: {case['parameters']:,} parameters, {case['neuron_layers']} LIF layers, same weights")
        print(_parity_line(case))
        case["results"] = {}
        for phase in ("train", "eval"):
            wall, cpu = run_phase(case["runners"], phase, case["batch"], args.warmup, args.iters,
                                  progress=f"{case['name']} {phase}")
            case["results"][phase] = summarize_phase(wall, cpu, args.batch_size)
        cases.append(case)
    bench_wall = time.perf_counter() - wall0
    print_table(cases)
    if args.json:
        out = {"batch_size": args.batch_size, "threads": args.threads, "warmup": args.warmup, "iters": args.iters,
               "seed": args.seed, "lr": args.lr, "weight_decay": args.weight_decay, "data": args.data,
               "torch": torch.__version__, "spikingjelly": sj_version, "python": platform.python_version(),
               "machine": platform.machine(), "bench_wall_s": bench_wall,
               "networks": [{k: c[k] for k in ("name", "title", "config", "parameters", "neuron_layers", "parity",
                                               "results")} for c in cases]}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
