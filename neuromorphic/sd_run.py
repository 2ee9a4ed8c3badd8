"""``sdm simulate`` on a Spiking-Diffusion file: samples generated with every SDID call and the decoder in Lava.

The host does what the file's host section says (token currents, the mean readout, temperature
sampling and the unmasking schedule, the code-vector lookup, the decoder's readout), with the same
random numbers as the PyTorch model (:func:`sdm.export.sd_execute.sample`).  Each Lava call is mirrored
by the PyTorch executor of the same graph in float64 on the *same* input (spike mismatches per layer,
the output's error); a separate PyTorch generation from the same seed gives the reference images and
tokens.  The SDID network is built once and serves the S calls of the batch, then the decoder network.

Outputs in ``--out DIR``: ``samples.png`` (Lava), ``reference.png`` (PyTorch), ``sdid/spikes.h5`` and
``decoder/spikes.h5`` (the spike record of :mod:`sdm.export.spike_record`: per call, step and neuron;
``inputs`` holds each call's input current), ``report.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from sdm.errors import ConfigError
from sdm.export.ir import IFNeurons
from sdm.export.sd_execute import sample, torch_calls, torch_runner
from sdm.export.sd_format import read_sd_nir
from sdm.export.sd_graph import Part
from sdm.export.spike_record import write_spike_record
from sdm.files import atomic_write
from sdm.images import save_grid

from .run import Lockstep
from .simulator import BUILDS, PROTOCOLS, LavaNetwork

GENERATION_PARTS = ("sdid", "decoder")  # what runs in Lava to generate a sample


class LockstepCall:
    """One part's calls in Lava, each mirrored by PyTorch (float64) on the same input current."""

    def __init__(self, part: Part, net: LavaNetwork, bar=None):
        self.part, self.net, self.bar = part, net, bar
        self.ref = torch_runner(part, torch.float64, record=True)
        self.trace = Lockstep([n.name for n in part.graph.of_type(IFNeurons)])
        self.timesteps: list[int] = []

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        host = self.part.host
        current = host.currents(*args).to(torch.float64)
        self.trace.inputs.append(current.numpy().copy())
        self.timesteps.append(int(args[1][0]) if len(args) > 1 else 0)
        t0 = time.perf_counter()
        out = host.readout(self.net.run_graph(current))
        self.trace.call_seconds.append(time.perf_counter() - t0)
        ref = host.readout(self.ref(current))
        err = (out.double() - ref.double()).abs().max() if out.dtype.is_floating_point else (out != ref).sum()
        self.trace.eps_err.append(float(err))
        for k in self.trace.neurons:
            lava_s = self.net.last_spikes[k]
            self.trace.counts[k].append(self.net.last_counts[k].astype(np.int32))
            self.trace.per_neuron[k].append(np.abs(lava_s).sum(axis=0).astype(np.uint8))
            self.trace.mismatch[k].append(int((lava_s != self.ref.spikes[k].numpy()).sum()))
        if self.bar is not None:
            self.bar.update()
            self.bar.set_postfix(part=self.part.role, mismatch=sum(v[-1] for v in self.trace.mismatch.values()))
        return out.to(torch.float32) if out.dtype.is_floating_point else out

    def part_report(self) -> dict:
        net, trace, T = self.net, self.trace, self.part.host.T
        steps = {k: int(np.prod(self.part.graph.nodes[k].shape)) * T * net.batch * len(trace.call_seconds)
                 for k in trace.neurons}
        calls = trace.call_seconds
        return {"calls": len(calls), "lava_processes": net.num_processes, "lava_steps_per_call": net.net.run_length,
                "compile_and_first_call_seconds": net.compile_seconds,
                "seconds_per_call_after_first": float(np.median(calls[1:])) if len(calls) > 1 else None,
                "spike_mismatch_rate": {k: sum(v) / steps[k] for k, v in trace.mismatch.items()},
                "total_spike_mismatches": int(sum(sum(v) for v in trace.mismatch.values())),
                "output_max_abs_err_per_call": trace.eps_err,
                "fixed_point_warnings": list(net.plan.warnings) if net.plan is not None else []}


def _check(n: int, temperature: float, build: str, protocol: str | None, stages: int | None) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"-n must be a positive integer, got {n!r}")
    if not temperature > 0 or not np.isfinite(temperature):
        raise ConfigError(f"--temperature must be a positive number, got {temperature}")
    if build not in BUILDS or protocol not in (None, *PROTOCOLS):
        raise ConfigError(f"build must be one of {', '.join(BUILDS)} and protocol one of {', '.join(PROTOCOLS)}")
    if stages is not None and build != "fused":
        raise ConfigError("--stages is an option of the fused build (--build fused)")


def simulate_sd(nir_path: str | os.PathLike, out_dir: str | os.PathLike, n: int = 1, temperature: float = 1.0,
                mode: str = "floating_pt", seed: int = 0, build: str = "fused", stages: int | None = None,
                protocol: str | None = None, progress: bool = True) -> dict:
    """Generate ``n`` samples (one batch) with the SDID calls and the decoder in Lava; see the module docstring."""
    from tqdm.auto import tqdm

    _check(n, temperature, build, protocol, stages)
    graphs = read_sd_nir(nir_path)
    if not graphs.generator:
        raise ConfigError(f"{nir_path}: a VQ-SVAE file (decoder and encoder) has no SDID: it cannot generate; "
                          "export the absorbing checkpoint")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = dict(batch=n, mode=mode, record_spikes=True, build=build, stages=stages, protocol=protocol)
    steps = graphs["sdid"].host.steps
    calls: dict[str, LockstepCall] = {}
    with tqdm(total=steps + 1, desc=f"lava {build} {mode}", disable=not progress, dynamic_ncols=True) as bar:
        with LavaNetwork(graphs["sdid"].graph, graphs["sdid"].host.T, **options) as sdid_net:
            calls["sdid"] = LockstepCall(graphs["sdid"], sdid_net, bar)
            gen_tokens = _tokens(graphs, calls["sdid"], n, temperature, seed)
            sdid_report = calls["sdid"].part_report()
        with LavaNetwork(graphs["decoder"].graph, graphs["decoder"].host.T, **options) as dec_net:
            calls["decoder"] = LockstepCall(graphs["decoder"], dec_net, bar)
            x = calls["decoder"](gen_tokens)
            dec_report = calls["decoder"].part_report()
    ref = torch_calls(graphs, torch.float64)
    x_ref, tokens_ref = sample(graphs, ref["sdid"], ref["decoder"], n, temperature=temperature, seed=seed,
                               batch_size=n)
    save_grid(x, out_dir / "samples.png", scale=4)
    save_grid(x_ref, out_dir / "reference.png", scale=4)
    for role, call in calls.items():
        (out_dir / role).mkdir(exist_ok=True)
        record = call.trace.spike_record(nir_path, mode, "absorbing", graphs[role].host.T, n, call.timesteps)
        write_spike_record(out_dir / role, graphs[role].graph, record)
    report = {"nir": str(nir_path), "family": "spiking-diffusion", "mode": mode, "build": build,
              "protocol": calls["sdid"].net.protocol, "images": n, "temperature": temperature, "seed": seed,
              "parts": {"sdid": sdid_report, "decoder": dec_report},
              "token_mismatches_vs_pytorch": int((gen_tokens != tokens_ref).sum()), "tokens": gen_tokens.numel(),
              "sample_tokens": gen_tokens.tolist(),
              "final_image_max_abs_err": float((x.double() - x_ref.double()).abs().max())}
    atomic_write(out_dir / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    return report


def _tokens(graphs, sdid_call: LockstepCall, n: int, temperature: float, seed: int) -> torch.Tensor:
    """The token grids of ``n`` samples drawn with the Lava SDID (the decoder runs afterwards, in its own
    network): :func:`sample` with a decode step that only keeps the tokens."""
    _, tokens = sample(graphs, sdid_call, lambda tok: torch.zeros(tok.shape[0]), n, temperature=temperature,
                       seed=seed, batch_size=n)
    return tokens
