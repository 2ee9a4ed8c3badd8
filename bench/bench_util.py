"""Helpers shared by the throughput benches (``train_throughput.py``, ``sd_throughput.py``).

* :func:`import_spikingjelly_build`: import a spikingjelly build of ours (``sj_unet``, ``sj_sd``) quietly;
* :func:`layer_signature`: the layer structure that the two builds of a network must share;
* :func:`run_phase` / :func:`timed` / :func:`summarize_phase`: the interleaved timing loop
  (A, B, A, B, ... so that machine noise hits both builds alike) and its medians.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import statistics
import sys
import time
import warnings

from torch import nn


def import_spikingjelly_build(module: str, script: str):
    """``(bench/<module>.py, spikingjelly's functional, spikingjelly's version)``.

    Quiet, because spikingjelly prints dataset-toolbox notices on import; exits with the
    install command when spikingjelly (a bench-only dependency) is missing."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if importlib.util.find_spec("spikingjelly") is None:
        sys.exit(f"{script}: spikingjelly is not installed; `make bench` installs it "
                 "(pip install --no-deps -r requirements-bench.lock)")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        build = importlib.import_module(module)
        from spikingjelly.activation_based import functional, layer  # noqa: F401  (set_step_mode imports layer)
    try:
        from importlib.metadata import version
        sj_version = version("spikingjelly")
    except Exception:  # pragma: no cover
        sj_version = "unknown"
    return build, functional, sj_version


def layer_signature(model: nn.Module, neuron_types: tuple) -> dict:
    """What the layer structure consists of: learnable-layer shapes and the neuron-layer count."""
    kinds = ((nn.Conv2d, "conv"), (nn.Conv3d, "conv"), (nn.ConvTranspose2d, "convT"), (nn.Linear, "linear"),
             (nn.BatchNorm2d, "bn"))
    shapes = []
    for m in model.modules():
        for cls, kind in kinds:
            if isinstance(m, cls):
                w = tuple(m.weight.shape)
                if isinstance(m, nn.Conv3d):  # (3, 3, 1) kernel == per-step 3x3 conv
                    w = w[:-1]
                shapes.append((kind, w))
    return {"layers": sorted(shapes), "neurons": sum(isinstance(m, neuron_types) for m in model.modules())}


def timed(fn, *a) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn(*a)
    return time.perf_counter() - w0, time.process_time() - c0


def run_phase(runners, phase, batch, warmup, iters, progress: str | None = None):
    """Interleave the runners (A, B, A, B, ...); returns per-iteration (wall, CPU) seconds per runner.

    A runner has ``name``, ``model``, ``train_step(*batch)`` and ``eval_step(*batch)``.  With
    ``progress`` (a label) a tqdm bar on stderr counts the rounds, for phases that take minutes."""
    for r in runners:
        r.model.train(phase == "train")
    step = "train_step" if phase == "train" else "eval_step"
    bar = None
    if progress is not None:
        from tqdm import tqdm
        bar = tqdm(total=warmup + iters, desc=progress, unit="round", leave=False, file=sys.stderr)
    for _ in range(warmup):
        for r in runners:
            getattr(r, step)(*batch)
        if bar is not None:
            bar.update()
    wall = {r.name: [] for r in runners}
    cpu = {r.name: [] for r in runners}
    for _ in range(iters):
        for r in runners:
            w, c = timed(getattr(r, step), *batch)
            wall[r.name].append(w)
            cpu[r.name].append(c)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return wall, cpu


def summarize_phase(wall: dict, cpu: dict, batch_size: int, ours: str = "ours", sj: str = "spikingjelly") -> dict:
    """Medians, images/s and the ratios ours/spikingjelly of one phase's timings (from :func:`run_phase`)."""
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ips = {k: batch_size / m for k, m in med.items()}
    return {"seconds_per_iter": wall, "median_s": med, "images_per_s": ips,
            "ratio_ours_over_sj": ips[ours] / ips[sj],
            "cpu_seconds_per_iter": cpu, "median_cpu_s": med_cpu,
            "cpu_ratio_ours_over_sj": med_cpu[sj] / med_cpu[ours]}


def load_renamed(sj, ours, rename, adapt=None) -> None:
    """Copy every parameter and buffer of ``ours`` into the spikingjelly build ``sj``: ``rename(name)``
    gives the name there, ``adapt(new_name, value)`` (optional) reshapes a value for its layout.
    Every name must exist with the same shape, and every entry of ``sj`` must be set."""
    import torch

    target, mapped = sj.state_dict(), {}
    with torch.no_grad():
        for name, value in ours.state_dict().items():
            n = rename(name)
            if n not in target:
                raise KeyError(f"{name} -> {n} not in the spikingjelly model")
            value = adapt(n, value) if adapt else value
            if target[n].shape != value.shape:
                raise ValueError(f"{name} -> {n}: shape {tuple(value.shape)} vs {tuple(target[n].shape)}")
            mapped[n] = value
        missing = set(target) - set(mapped)
        if missing:
            raise KeyError(f"not set from our model: {sorted(missing)}")
        sj.load_state_dict(mapped)
