"""Python API of the export stage: checkpoint -> NIR file -> executable denoiser."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from sdm.errors import ConfigError
from sdm.train.checkpoint import load_checkpoint
from sdm.train.moments import checkpoint_moments
from sdm.train.sampling import model_from_checkpoint
from sdm.train.sd_model import checkpoint_kind

from .execute import GraphDenoiser
from .ir import IFNeurons, SNNGraph
from .lower import lower_unet
from .lower_sd import lower_spiking_diffusion
from .nir_format import extensions_used, file_counts, read_nir, write_nir
from .sd_format import write_sd_nir

DTYPES = {"float32": (np.float32, torch.float32), "float64": (np.float64, torch.float64)}


def export_checkpoint(model_path: str | os.PathLike, out_path: str | os.PathLike | None = None,
                      threshold_scale: float = 1.0, dtype: str = "float32", use_ema: bool = True,
                      progress: bool = False) -> dict:
    """Export ``model.pt`` to NIR (default ``model.nir`` beside it); returns a summary dict.

    The checkpoint is validated on load (:func:`~sdm.train.sampling.model_from_checkpoint`) and the
    file written atomically, so a refused checkpoint or option leaves no output file."""
    from tqdm.auto import tqdm

    _check_dtype(dtype)
    if isinstance(threshold_scale, bool) or not isinstance(threshold_scale, (int, float)) \
            or not math.isfinite(threshold_scale) or not threshold_scale > 0:
        raise ConfigError(f"threshold scale must be a positive finite number, got {threshold_scale!r}")
    model_path = Path(model_path)
    out_path = Path(out_path) if out_path else model_path.with_suffix(".nir")
    t0 = time.perf_counter()
    ckpt = load_checkpoint(model_path)
    if checkpoint_kind(ckpt) is not None:
        if threshold_scale != 1.0:
            raise ConfigError("--threshold-scale: threshold guidance is for the spiking UNet; a Spiking-Diffusion "
                              "checkpoint exports as trained")
        return export_sd_checkpoint(ckpt, str(model_path), out_path, dtype, use_ema, t0)
    model, _, ckpt = model_from_checkpoint(model_path, use_ema=use_ema)  # refused before any progress output
    with tqdm(total=2, desc="export-nir", disable=not progress, leave=False) as bar:
        bar.set_postfix_str("lowering")
        graph = lower_unet(model, dtype=DTYPES[dtype][0], threshold_scale=threshold_scale,
                           schedule=ckpt.get("diffusion"), moments=checkpoint_moments(ckpt))
        bar.update()
        bar.set_postfix_str("writing")
        write_nir(graph, out_path)
        bar.update()
    nodes, edges = file_counts(graph)  # what the file holds, as import-nir will report it
    return {**graph_summary(graph), "nodes": nodes, "edges": edges, "path": str(out_path),
            "bytes": out_path.stat().st_size, "seconds": time.perf_counter() - t0, "dtype": dtype,
            "threshold_scale": threshold_scale}


def export_sd_checkpoint(ckpt: dict, source: str, out_path: Path, dtype: str, use_ema: bool, t0: float) -> dict:
    """A Spiking-Diffusion checkpoint (absorbing: SDID, decoder and encoder; vq-svae: decoder and encoder)
    as one NIR file (:mod:`sdm.export.sd_format`); the summary has one entry per part."""
    from sdm.train.checkpoint import uses_ema
    from sdm.train.sd_model import sd_modules

    kind = checkpoint_kind(ckpt)
    vq, sdid, _ = sd_modules(ckpt, use_ema)
    graphs = lower_spiking_diffusion(vq, sdid, dtype=DTYPES[dtype][0],
                                     meta={"checkpoint": source, "model_kind": kind, "ema": uses_ema(ckpt, use_ema)})
    write_sd_nir(graphs, out_path)
    return {"family": "spiking-diffusion", "kind": kind, "path": str(out_path), "bytes": out_path.stat().st_size,
            "seconds": time.perf_counter() - t0, "dtype": dtype, "parts": sd_summary(graphs)}


def sd_summary(graphs) -> dict[str, dict]:
    """Per part: what :func:`graph_summary` reports for a UNet (T from the part's host record)."""
    out = {}
    for role, part in graphs.parts.items():
        g = part.graph
        out[role] = {"nodes": len(g.nodes), "edges": len(g.edges), "parameters": g.num_parameters(),
                     "neurons": sum(int(np.prod(n.shape)) for n in g.of_type(IFNeurons)),
                     "neuron_groups": sum(1 for _ in g.of_type(IFNeurons)), "extensions": extensions_used(g),
                     "T": part.host.T}
    return out


def graph_summary(graph: SNNGraph) -> dict:
    ext = extensions_used(graph)
    return {"nodes": len(graph.nodes), "edges": len(graph.edges), "parameters": graph.num_parameters(),
            "neurons": sum(int(np.prod(n.shape)) for n in graph.of_type(IFNeurons)),
            "neuron_groups": sum(1 for _ in graph.of_type(IFNeurons)), "extensions": ext, "T": graph.host.T}


def import_nir(path: str | os.PathLike, dtype: str = "float32") -> GraphDenoiser:
    """Rebuild an executable (eval, inference-only) PyTorch denoiser from a NIR file."""
    _check_dtype(dtype)
    return GraphDenoiser(read_nir(path), dtype=DTYPES[dtype][1]).eval()


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
