"""A Spiking-Diffusion model as one NIR file (specified in docs/nir-format.md, "Spiking-Diffusion files").

The top-level graph holds one chain ``<role>_in -> <role> -> <role>_out`` per part (``sdid``,
``decoder``, ``encoder``): ``<role>`` is a nested ``NIRGraph``, the part's spiking graph written exactly
as a UNet's (:func:`sdm.export.nir_format.to_nir`: standard nodes, the guarded extensions), so
unmodified ``nir.read`` loads the file with type checking on.  The top-level metadata says what the
host does around each part (``sd_host/<role>``: the records of :mod:`sdm.export.sd_graph`), so that the
file alone samples, decodes and encodes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sdm.errors import GraphError, SDMError
from sdm.files import atomic_write

from .nir_format import (
    SD_FORMAT,
    NIRFormatError,
    _float,
    _get,
    _int,
    _text,
    _write_hdf5,
    graph_from_nir,
    load_nir,
    to_nir,
)
from .sd_graph import HOSTS, ROLES, DecoderHost, EncoderHost, Part, SDGraphs, SDIDHost

SD_FORMAT_VERSION = 1


def _io_type(shape) -> np.ndarray:
    return np.array(shape, dtype=np.int64)


def to_sd_nir(graphs: SDGraphs):
    """The ``nir.NIRGraph`` of a deployed Spiking-Diffusion model."""
    import nir

    nodes, edges = {}, []
    for role, part in graphs.parts.items():
        sub = to_nir(part.graph)
        sub.metadata["sdm.part"] = role
        nodes[f"{role}_in"] = nir.Input(input_type=_io_type(part.input.shape), metadata={"sdm.input": "host"})
        nodes[role] = sub
        nodes[f"{role}_out"] = nir.Output(output_type=_io_type(part.graph.output.shape))
        edges += [(f"{role}_in", role), (role, f"{role}_out")]
    metadata = {
        "sdm.format": SD_FORMAT, "sdm.format_version": SD_FORMAT_VERSION, "sdm.parts": ",".join(graphs.parts),
        "dt": 1.0, "time_unit": "spiking step",
        "sd_host": {role: part.host.metadata() for role, part in graphs.parts.items()},
        "provenance": {k: str(v) for k, v in graphs.meta.items()},
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def write_sd_nir(graphs: SDGraphs, path: str | os.PathLike) -> Path:
    """Write ``graphs`` to ``path`` atomically as one NIR (HDF5) file."""
    ng = to_sd_nir(graphs)
    return atomic_write(path, lambda tmp: _write_hdf5(tmp, ng))


# ----- reading ----------------------------------------------------------------------------
def _sdid_host(h: dict) -> SDIDHost:
    where = "sd_host sdid"
    return SDIDHost(T=_int(_get(h, "T", where), f"{where} T"),
                    codebook_size=_int(_get(h, "codebook_size", where), f"{where} codebook_size"),
                    steps=_int(_get(h, "steps", where), f"{where} steps"), inputs=_text(_get(h, "inputs", where)))


def _decoder_host(h: dict) -> DecoderHost:
    where = "sd_host decoder"
    return DecoderHost(T=_int(_get(h, "T", where), f"{where} T"), codebook=np.asarray(_get(h, "codebook", where)),
                       readout_decay=_float(_get(h, "readout_decay", where), f"{where} readout_decay"),
                       data_scale=_float(_get(h, "data_scale", where), f"{where} data_scale"))


def _encoder_host(h: dict) -> EncoderHost:
    where = "sd_host encoder"
    return EncoderHost(weights=np.asarray(_get(h, "weights", where)), bias=np.asarray(_get(h, "bias", where)),
                       data_scale=_float(_get(h, "data_scale", where), f"{where} data_scale"))


_HOST_READERS = {"sdid": _sdid_host, "decoder": _decoder_host, "encoder": _encoder_host}
assert set(_HOST_READERS) == set(HOSTS) == set(ROLES)


def is_sd_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Spiking-Diffusion file (its metadata tag, read without building the graph)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            tag = f.get("node/metadata/sdm.format")
            return tag is not None and _text(tag[()]) == SD_FORMAT
    except (OSError, TypeError, ValueError):
        return False


def _check_header(meta: dict, path: Path) -> list[str]:
    if _text(meta.get("sdm.format", "")) != SD_FORMAT:
        raise NIRFormatError(f"{path}: not a Spiking-Diffusion file of sdm export-nir (sdm.format is not {SD_FORMAT})")
    try:
        version = _int(_get(meta, "sdm.format_version", "the graph metadata"), "sdm.format_version")
    except GraphError as e:
        raise NIRFormatError(f"{path}: {e}") from None
    if not 1 <= version <= SD_FORMAT_VERSION:
        raise NIRFormatError(f"{path}: Spiking-Diffusion format version {version} is not 1..{SD_FORMAT_VERSION}")
    roles = [r for r in _text(meta.get("sdm.parts", "")).split(",") if r]
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise NIRFormatError(f"{path}: sdm.parts must list parts of {', '.join(ROLES)}, got {roles}")
    return roles


def read_sd_nir(path: str | os.PathLike) -> SDGraphs:
    """Read a file of :func:`write_sd_nir`, validated before anything runs; every problem is a one-line
    :class:`NIRFormatError` naming the file, the part and the node or field."""
    path = Path(path)
    ng = load_nir(path)
    roles = _check_header(ng.metadata, path)
    parts = {}
    for role in roles:
        label = f"{path}: part {role!r}"
        sub = ng.nodes.get(role)
        if sub is None or type(sub).__name__ != "NIRGraph":
            raise NIRFormatError(f"{label}: missing (sdm.parts lists it, the file has no such graph node)")
        graph = graph_from_nir(sub, name=label)
        try:
            host = _HOST_READERS[role](_get(_get(ng.metadata, "sd_host", "the graph metadata"), role, "sd_host"))
        except SDMError as e:
            raise NIRFormatError(f"{path}: {e}") from None
        parts[role] = Part(graph, host)
    provenance = ng.metadata.get("provenance", {})
    try:
        return SDGraphs(parts, {k: _text(v) for k, v in provenance.items()} if isinstance(provenance, dict) else {})
    except SDMError as e:
        raise NIRFormatError(f"{path}: {e}") from None
