"""Python API of the export stage: checkpoint -> NIR file -> executable denoiser."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from sdm.errors import ConfigError
from sdm.train.moments import checkpoint_moments
from sdm.train.sampling import model_from_checkpoint

from .execute import GraphDenoiser
from .ir import IFNeurons, SNNGraph
from .lower import lower_unet
from .nir_format import extensions_used, file_counts, read_nir, write_nir

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
