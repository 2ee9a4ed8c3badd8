"""Any graph of standard NIR nodes in Lava: ``sdm simulate FILE.nir --input X.npy`` (docs/lava-mapping.md).

The file is read with :func:`~sdm.export.nir_format.read_nir` (other tools' forms, ``dt``), run once in
Lava for ``T`` spiking steps on the input and once by the project's PyTorch executor of the same graph
(float64); the run reports, per neuron group, how many spikes differ (floating_pt: none expected;
fixed_pt: the quantisation's deviation) and the output error, and writes:

* ``spikes.h5``: the spike record of ``sdm simulate`` (one call: ``K = 1``, ``timesteps = [0]``), which
  ``sdm energy FILE.nir --input X.npy --sim DIR`` prices;
* ``output.h5``: the graph output ``[T, B, C, H, W]``, datasets ``lava`` and ``pytorch``;
* ``report.json``: timing and deviations.

The input is one sample held for ``T`` steps (``[C, H, W]`` or the file's own shape, e.g. ``[N]``),
or one value per step, ``[T, ...]`` or ``[T, B, ...]``.  Neurons with an input scale (norse's LIF:
``r dt / tau``) get it folded into the convs that feed them for Lava (:func:`~.builder.fold_input_scale`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from sdm.errors import ConfigError
from sdm.export.ir import IFNeurons, SNNGraph
from sdm.export.nir_format import read_nir
from sdm.export.plain import PlainInput, check_plain, load_input, reference_run
from sdm.export.spike_record import LayerSpikes, SpikeRecord, write_spike_record
from sdm.files import atomic_write

from .builder import LavaBuildError, fold_input_scale, whc
from .simulator import LavaNetwork

OUTPUTS = {"spikes.h5": "hdf5", "output.h5": "hdf5", "report.json": "json"}  # the command adds energy.csv


class PlainLavaNetwork(LavaNetwork):
    """:class:`LavaNetwork` fed a :class:`PlainInput`'s ``x [T, B, C, H, W]``: the first step's images when
    the input is constant (held for T steps by the source), every step's with ``varying_input``."""

    def set_inputs(self, x: torch.Tensor, temb=None) -> None:
        if self.net.inputs["image"].shape[0] == self.batch:  # constant input
            return super().set_inputs(x[0])
        T, B = x.shape[:2]
        data = np.stack([whc(img) for img in x.transpose(0, 1).reshape(B * T, *x.shape[2:]).numpy()])
        self.net.inputs["image"][:] = data if self.plan is None else self.plan.quantize_input(data)


def _spike_output_scale(graph: SNNGraph, plan) -> float:
    """In fixed point a junction holds currents in state units (``plan.lam`` per unit) and the output is
    read back in those units, but a spike reaches a junction as 1: an output of spikes (the junction in
    front of it reads only neurons) is scaled back by ``lam``."""
    if plan is None:
        return 1.0
    junction = graph.predecessors(graph.output.name)[0]
    sources = [graph.nodes[p] for p in graph.predecessors(junction)]
    if all(isinstance(n, IFNeurons) for n in sources):
        return plan.lam
    if any(isinstance(n, IFNeurons) for n in sources):
        raise LavaBuildError(f"{junction}: in fixed_pt an output that sums spikes and currents is not supported")
    return 1.0


def _stages(graph: SNNGraph, build: str, stages: int | None) -> int | None:
    """The fused build's default of stage processes, at most one per layer of a small graph."""
    from .fused import DEFAULT_STAGES, _layer_order, plan_stages

    if build != "fused":
        return stages
    stages = min(DEFAULT_STAGES, len(_layer_order(graph))) if stages is None else stages
    plan_stages(graph, stages)  # a bad --stages before any process
    return stages


def simulate_plain(nir_path: str | os.PathLike, input_path: str | os.PathLike, out_dir: str | os.PathLike,
                   T: int | None = None, dt: float | None = None, mode: str = "floating_pt", build: str = "loihi",
                   stages: int | None = None, protocol: str | None = None) -> dict:
    """Run the plain graph of ``nir_path`` on ``input_path`` in Lava and in PyTorch (module docstring)."""
    graph = read_nir(nir_path, require_host=False, dt=dt)
    if graph.host is not None:
        raise ConfigError(f"{nir_path}: a denoiser file (it has a host section); run it without --input")
    inp = load_input(input_path, check_plain(graph, nir_path), T)
    lava_graph = fold_input_scale(graph)
    stages = _stages(lava_graph, build, stages)
    ref_out, ref_spikes = reference_run(graph, inp)
    with PlainLavaNetwork(lava_graph, inp.T, batch=inp.batch, mode=mode, record_spikes=True, build=build,
                          stages=stages, protocol=protocol, varying_input=inp.varying) as net:
        t0 = time.perf_counter()
        out = net.run_graph(inp.x) * _spike_output_scale(lava_graph, net.plan)
        seconds = time.perf_counter() - t0
        lava = {"processes": net.num_processes, "steps": net.net.run_length, "protocol": net.protocol,
                "warnings": list(net.plan.warnings) if net.plan is not None else []}
        spikes = dict(net.last_spikes)
    return _write_run(graph, inp, out, spikes, ref_out, ref_spikes, out_dir, seconds, lava, nir=str(nir_path),
                      mode=mode, build=build, stages=stages)


def _write_outputs(path: str, lava: torch.Tensor, pytorch: torch.Tensor) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layout"] = "[T, B, C, H, W]: spiking step, image, the Output's (C, H, W)"
        f["lava"], f["pytorch"] = lava.numpy(), pytorch.numpy()


def _write_run(graph, inp: PlainInput, out, spikes, ref_out, ref_spikes, out_dir, seconds, lava, **run) -> dict:
    """The files of a run (module docstring); returns the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mismatch = {k: int((spikes[k] != ref_spikes[k].numpy()).sum()) for k in ref_spikes}
    layers = {k: LayerSpikes(np.abs(s).reshape(inp.T, inp.batch, -1).sum(axis=2).T[None].astype(np.int32),
                             np.abs(s).sum(axis=0)[None].astype(np.uint8), np.array([mismatch[k]]))
              for k, s in spikes.items()}
    source = inp.x[:1] if not inp.varying else inp.x
    write_spike_record(out_dir, graph, SpikeRecord(nir=run["nir"], mode=run["mode"], sampler="none", T=inp.T,
                                                   images=inp.batch, timesteps=[0], inputs=source.numpy()[None],
                                                   layers=layers))
    atomic_write(out_dir / "output.h5", lambda tmp: _write_outputs(tmp, out, ref_out))
    steps = {k: int(np.prod(graph.nodes[k].shape)) * inp.T * inp.batch for k in ref_spikes}
    report = {**run, "T": inp.T, "images": inp.batch, "input_per_step": inp.varying,
              "lava_processes": lava["processes"], "lava_steps": lava["steps"], "protocol": lava["protocol"],
              "seconds_compile_and_run": seconds, "spikes": {k: int(np.abs(s).sum()) for k, s in spikes.items()},
              "spike_mismatches": mismatch, "spike_mismatch_rate": {k: mismatch[k] / steps[k] for k in mismatch},
              "total_spike_mismatches": sum(mismatch.values()),
              "output_max_abs_err": float((out - ref_out).abs().max()), "output_max_abs": float(ref_out.abs().max()),
              "fixed_point_warnings": lava["warnings"]}
    atomic_write(out_dir / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    return report
