"""The spike record of ``sdm simulate``: ``spikes.h5``, its writer, its reader and the graph fingerprint.

``sdm simulate`` (:mod:`sdm.neuromorphic.run`) writes it; ``sdm energy --sim`` reads it
(:func:`sdm.energy.rates.read_sim_counts`).  It lives with the graph IR because it describes a
run of one graph: both stages import it from here, neither from the other.

Layout (``format = "sdm-spike-record"``, ``version = 1``)::

    attrs      format, version, nir, mode, T, images, sampler, fingerprint
    timesteps  [K]                  the diffusion step t of each denoiser call
    inputs     [K, B, C, H, W]      x_t of every call (gzip)
    layers/<neuron group>           attrs: shape (C, H, W)
        counts               [K, B, T]           spike events per spiking step
        neuron_counts        [K, B, C, H, W]     spike events per neuron over the T steps (uint8, gzip)
        mismatch_vs_pytorch  [K]                 spikes that differ from the PyTorch reference

Events count ``|s|`` (a signed neuron's -1 is an event too).  ``fingerprint`` is
:func:`graph_fingerprint` of the simulated graph: a record read against another model is refused.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from sdm.errors import SDMError
from sdm.files import atomic_write

from .ir import Conv, IFNeurons, SNNGraph

SPIKES_FORMAT = "sdm-spike-record"
SPIKES_VERSION = 1
SPIKES_FILE = "spikes.h5"  # in the simulation's output folder


class SpikeRecordError(SDMError):
    """A spike record that does not belong to the model; the message names the file."""


def graph_fingerprint(graph: SNNGraph) -> str:
    """A hash of the graph's convs (names, shapes, float32 weights) and neuron groups, which tie a
    spike record to its model; junctions are left out since NIR files elide some of them."""
    h = hashlib.sha256()
    for name in sorted(graph.nodes):
        node = graph.nodes[name]
        if isinstance(node, (Conv, IFNeurons)):
            h.update(f"{name}:{type(node).__name__}:{node.shape}".encode())
        if isinstance(node, Conv):
            h.update(np.asarray(node.weight, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


@dataclass
class LayerSpikes:
    """One neuron group's record over the K calls of a run."""

    counts: np.ndarray  # [K, B, T] spike events per spiking step
    neuron_counts: np.ndarray  # [K, B, C, H, W] spike events per neuron over the T steps (uint8)
    mismatch: np.ndarray  # [K] spikes that differ from the PyTorch reference


@dataclass
class SpikeRecord:
    """The content of ``spikes.h5`` (module docstring); ``layers`` by IR neuron name."""

    nir: str
    mode: str
    sampler: str
    T: int
    images: int
    timesteps: list[int]
    inputs: np.ndarray  # [K, B, C, H, W]
    layers: dict[str, LayerSpikes] = field(default_factory=dict)


def write_spike_record(out_dir: str | os.PathLike, graph: SNNGraph, record: SpikeRecord) -> Path:
    """Write ``record`` of a run of ``graph`` as ``out_dir/spikes.h5`` (atomically); returns the path."""

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"format": SPIKES_FORMAT, "version": SPIKES_VERSION, "nir": record.nir,
                            "mode": record.mode, "T": record.T, "images": record.images, "sampler": record.sampler,
                            "fingerprint": graph_fingerprint(graph)})
            f["timesteps"] = np.asarray(record.timesteps)
            f.create_dataset("inputs", data=record.inputs, compression="gzip")
            layers = f.create_group("layers")
            for name, layer in record.layers.items():
                g = layers.create_group(name)
                g.attrs["shape"] = np.asarray(graph.nodes[name].shape)
                g.create_dataset("counts", data=layer.counts)
                g.create_dataset("neuron_counts", data=layer.neuron_counts, compression="gzip")
                g.create_dataset("mismatch_vs_pytorch", data=layer.mismatch)

    return atomic_write(Path(out_dir) / SPIKES_FILE, write)


def read_spike_record(sim_dir: str | os.PathLike, graph: SNNGraph) -> SpikeRecord:
    """The record in ``sim_dir/spikes.h5``; raises :class:`SpikeRecordError` naming the file when it
    is missing, unreadable, not a spike record, or recorded from another graph than ``graph``."""
    path = Path(sim_dir) / SPIKES_FILE
    if not path.exists():
        raise SpikeRecordError(f"{path}: no such file (run `sdm simulate ... --out {sim_dir}` first)")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != SPIKES_FORMAT:
                raise SpikeRecordError(f"{path}: not a spike record of sdm simulate")
            if f.attrs.get("fingerprint", "") != graph_fingerprint(graph):
                names = set(f["layers"])
                expected = {n.name for n in graph.of_type(IFNeurons)}
                why = "different layers" if names != expected else "different weights"
                raise SpikeRecordError(f"{path}: recorded from another model ({why}); export and simulate this one")
            a = f.attrs
            layers = {k: LayerSpikes(g["counts"][()], g["neuron_counts"][()], g["mismatch_vs_pytorch"][()])
                      for k, g in f["layers"].items()}
            return SpikeRecord(nir=str(a["nir"]), mode=str(a["mode"]), sampler=str(a["sampler"]), T=int(a["T"]),
                               images=int(a["images"]), timesteps=[int(t) for t in f["timesteps"][()]],
                               inputs=f["inputs"][()], layers=layers)
    except SpikeRecordError:
        raise
    except (OSError, KeyError) as e:
        raise SpikeRecordError(f"{path}: unreadable spike record ({type(e).__name__}: {e})") from None
