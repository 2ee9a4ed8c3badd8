"""Writing the spiking graph IR as a NIR file and reading it back (specified in docs/nir-format.md).

Standard NIR 1.0.8 nodes carry everything NIR can express: ``Input`` (image and per-block
time-embedding currents), ``Conv2d`` (BatchNorm folded), ``IF`` (or ``LIF`` with a leak),
``Scale`` with unit scale for a float residual stream read by a conv, and ``Output``.
Residual streams read only by neurons are elided into fan-in edges.

What NIR lacks travels as *extension* nodes: nested ``NIRGraph`` s whose metadata key
``sdm.extension`` names the operation (``temporal_affine`` for TSM, ``upsample_nearest``)
and holds its parameters.  Their body is a typed ``Input -> Conv2d(groups=0) -> Output``:
the types check, so unmodified ``nir.read`` loads the file, but ``groups=0`` is an invalid
convolution, so a reader that does not know the extension fails when it builds the node
instead of silently computing a different network.

Host-side parameters (time-embedding MLP, block projections, tail, schedule, T) sit in the
top-level graph metadata under ``host``.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from sdm.files import atomic_write

from sdm.errors import SDMError

from .ir import (AnalogInput, Conv, HostParams, IFNeurons, Junction, Node, Output, SNNGraph, TemporalAffine,
                 Upsample)

FORMAT = "sdm-snn"  # metadata tag of files written here
FORMAT_VERSION = 1
EXTENSIONS = ("temporal_affine", "upsample_nearest", "if_neuron")


class NIRFormatError(SDMError):
    """A NIR file this tool cannot read or run; the message names the file and the problem."""


# ----- writing ----------------------------------------------------------------------------
def _guard_graph(name: str, in_shape, out_shape, metadata: dict):
    """Extension body: Input -> Conv2d(groups=0) -> Output, typed in_shape -> out_shape."""
    import nir

    c, h, w = in_shape
    _, oh, ow = out_shape
    pads, kernel = [], []
    for n, on in ((h, oh), (w, ow)):
        # conv output size n + 2p - k + 1 == on with k in {1, 2}
        k = 1 if (on - n) % 2 == 0 else 2
        pads.append((on - n + k - 1) // 2)
        kernel.append(k)
    weight = np.zeros((c, c, *kernel), dtype=np.float32)
    weight[np.arange(c), np.arange(c)] = 1.0
    guard = nir.Conv2d(input_shape=(h, w), weight=weight, stride=1, padding=tuple(pads), dilation=1, groups=0,
                       bias=np.zeros(c, dtype=np.float32))
    body = {"input": nir.Input(input_type=np.array(in_shape)), "unsupported_without_sdm_extension": guard,
            "output": nir.Output(output_type=np.array(out_shape))}
    edges = [("input", "unsupported_without_sdm_extension"), ("unsupported_without_sdm_extension", "output")]
    return nir.NIRGraph(nodes=body, edges=edges, metadata=metadata)


def _elidable_junctions(graph: SNNGraph) -> set[str]:
    """Junctions read only by neurons and other junctions: their sources can feed the readers
    directly (fan-in).  Those read by a conv or by the Output stay (as unit ``Scale`` nodes);
    readers such as nirtorch return an Output's fan-in as separate tensors instead of summing."""
    keep = {s for s, d in graph.edges if isinstance(graph.nodes[s], Junction)
            and isinstance(graph.nodes[d], (Conv, TemporalAffine, Upsample, Output))}
    return {n for n, node in graph.nodes.items() if isinstance(node, Junction) and n not in keep}


def _expanded_edges(graph: SNNGraph, elide: set[str]) -> list[tuple[str, str]]:
    def sources(n: str) -> list[str]:
        if n not in elide:
            return [n]
        return [s for p in graph.predecessors(n) for s in sources(p)]

    edges = []
    for s, d in graph.edges:
        if d in elide:
            continue
        for src in sources(s):
            edges.append((src, d))
    return edges


def _host_metadata(host: HostParams) -> dict:
    return {
        "T": host.T, "img_shape": np.array(host.img_shape), "readout_decay": host.readout_decay,
        "theta": host.theta, "threshold_scale": host.threshold_scale, "readout": host.readout,
        "schedule": {"steps": int(host.schedule["steps"]), "beta_start": float(host.schedule["beta_start"]),
                     "beta_end": float(host.schedule["beta_end"])},
        "time_mlp": dict(host.time_mlp),
        "temb_proj": {blk: {"w": w, "b": b} for blk, (w, b) in host.temb_proj.items()},
        "tail": dict(host.tail),
    }


def file_counts(graph: SNNGraph) -> tuple[int, int]:
    """Nodes and edges of the graph as written to a NIR file (after junction elision)."""
    elide = _elidable_junctions(graph)
    return len(graph.nodes) - len(elide), len(_expanded_edges(graph, elide))


def to_nir(graph: SNNGraph):
    """The ``nir.NIRGraph`` of an IR graph (type-checked by NIR on construction)."""
    import nir

    elide = _elidable_junctions(graph)
    nodes = {}
    used = set()
    for name, node in graph.nodes.items():
        if name in elide:
            continue
        if isinstance(node, AnalogInput):
            meta = {"sdm.input": node.kind}
            if node.kind == "temb":
                meta["sdm.block"] = node.block
            nodes[name] = nir.Input(input_type=np.array(node.shape), metadata=meta)
        elif isinstance(node, Conv):
            nodes[name] = nir.Conv2d(input_shape=node.in_shape[1:], weight=node.weight, stride=node.stride,
                                     padding=node.padding, dilation=1, groups=1, bias=node.bias)
        elif isinstance(node, IFNeurons) and (node.reset != "zero" or node.v_init != 0.0 or node.signed):
            # NIR's IF resets to v_reset, starts at 0 and emits 0/1: subtractive reset, v_init and signed
            # spikes travel as an extension
            used.add("if_neuron")
            nodes[name] = _guard_graph(name, node.shape, node.shape, {
                "sdm.extension": "if_neuron", "v_threshold": node.threshold, "decay": float(node.decay),
                "reset": node.reset, "v_init": float(node.v_init), "signed": int(node.signed),
                "equation": "h[n] = decay*v[n-1] + I[n]; s[n] = h[n] >= v_threshold; v[-1] = v_init*v_threshold; "
                            "v[n] = h[n] - v_threshold*s[n] (reset=subtract) or h[n]*(1-s[n]) (reset=zero); "
                            "signed=1: u = v[n] <= -1e-3 and c[n-1] + s[n] > 0 (c: net count), v[n] += v_threshold*u, "
                            "output s[n] - u"})
        elif isinstance(node, IFNeurons):
            ones, zeros = np.ones_like(node.threshold), np.zeros_like(node.threshold)
            if node.decay == 1.0:
                nodes[name] = nir.IF(r=ones, v_threshold=node.threshold, v_reset=zeros)
            else:  # Euler with dt = 1: v += (-v + r I) / tau  ==  decay * v + I
                tau = ones / (1.0 - node.decay)
                nodes[name] = nir.LIF(tau=tau, r=tau, v_leak=zeros, v_threshold=node.threshold, v_reset=zeros)
        elif isinstance(node, Junction):
            nodes[name] = nir.Scale(scale=np.ones(node.shape, dtype=np.float32), metadata={"sdm.junction": True})
        elif isinstance(node, TemporalAffine):
            used.add("temporal_affine")
            nodes[name] = _guard_graph(name, node.shape, node.shape, {
                "sdm.extension": "temporal_affine", "gain": node.gain, "offset": node.offset,
                "equation": "y[n] = gain[n] * x[n] + offset[c]"})
        elif isinstance(node, Upsample):
            used.add("upsample_nearest")
            nodes[name] = _guard_graph(name, node.in_shape, node.shape, {
                "sdm.extension": "upsample_nearest", "scale": node.scale,
                "equation": "y[c, i, j] = x[c, i // scale, j // scale]"})
        elif isinstance(node, Output):
            nodes[name] = nir.Output(output_type=np.array(node.shape))
    metadata = {
        "sdm.format": FORMAT, "sdm.format_version": FORMAT_VERSION,
        "sdm.extensions": ",".join(sorted(used)),
        "dt": 1.0, "time_unit": "spiking step",
        "spike_condition": "v >= v_threshold", "reset": "hard, to v_reset",
        "input_encoding": "Input nodes hold the same current at every one of the T steps",
    }
    if graph.host is not None:
        metadata["time_steps"] = graph.host.T
        metadata["host"] = _host_metadata(graph.host)
    return nir.NIRGraph(nodes=nodes, edges=_expanded_edges(graph, elide), metadata=metadata)


COMPRESS_MIN_ELEMENTS = 256


def _write_hdf5(path: str, ng) -> None:
    """``nir.write``'s exact layout (``version``, ``node/...`` from ``to_dict()``), with two storage
    choices that keep files of small networks small: gzip only for arrays of at least
    ``COMPRESS_MIN_ELEMENTS`` (a compressed dataset costs a few KB of chunk index) and the
    compact HDF5 object headers of ``libver='latest'``.  ``nir.read`` reads it unchanged."""
    import nir

    def rec(group: h5py.Group, node: dict) -> None:
        for k, v in node.items():
            if k == "metadata":
                if v != {}:
                    rec(group.create_group(k), v)
            elif isinstance(v, str):
                group.create_dataset(k, data=v, dtype=h5py.string_dtype())
            elif isinstance(v, np.ndarray):
                big = v.size >= COMPRESS_MIN_ELEMENTS
                group.create_dataset(k, data=v, dtype=v.dtype, compression="gzip" if big else None,
                                     shuffle=big)
            elif isinstance(v, dict):
                rec(group.create_group(str(k)), v)
            else:
                group.create_dataset(k, data=v)

    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset("version", data=nir.version, dtype=h5py.string_dtype())
        rec(f.create_group("node"), ng.to_dict())


def write_nir(graph: SNNGraph, path: str | os.PathLike) -> Path:
    """Write ``graph`` to ``path`` atomically as a NIR (HDF5) file."""
    ng = to_nir(graph)
    return atomic_write(path, lambda tmp: _write_hdf5(tmp, ng))


# ----- reading ----------------------------------------------------------------------------
def _types_in_file(path: Path) -> list[tuple[str, str]]:
    """(node path, type) of every node, read straight from HDF5 (works when nir.read refuses)."""
    out = []

    def walk(group, prefix):
        if "nodes" not in group:
            return
        for name, sub in group["nodes"].items():
            typ = sub["type"][()]
            typ = typ.decode() if isinstance(typ, bytes) else str(typ)
            out.append((prefix + name, typ))
            if typ == "NIRGraph":
                walk(sub, prefix + name + ".")

    with h5py.File(path, "r") as f:
        walk(f["node"], "")
    return out


def _load_nir(path: Path):
    import nir

    if not path.exists():
        raise NIRFormatError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise NIRFormatError(f"{path}: not a NIR file (not HDF5; truncated or another format)")
    try:
        return nir.read(path)
    except AssertionError:
        try:
            known = set(nir.ir.__all_ir) if hasattr(nir.ir, "__all_ir") else set()
            bad = [(n, t) for n, t in _types_in_file(path) if known and t not in known]
        except Exception:
            bad = []
        what = f"node {bad[0][0]!r} has unknown type {bad[0][1]!r}" if bad else "it has an unknown node type"
        raise NIRFormatError(f"{path}: cannot read: {what}") from None
    except (OSError, KeyError) as e:
        raise NIRFormatError(f"{path}: corrupt or truncated NIR file ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:120]})") from None
    except ValueError as e:
        raise NIRFormatError(f"{path}: inconsistent NIR graph ({' '.join(str(e).split())[:160]})") from None


def _arr(x) -> np.ndarray:
    return np.asarray(x)


def _pad(value, name, path) -> int:
    p = np.atleast_1d(np.asarray(value))
    if p.dtype.kind not in "iu" or len(set(p.tolist())) != 1:
        raise NIRFormatError(f"{path}: node {name!r}: only equal integer padding is supported, got {value!r}")
    return int(p[0])


def _node_from_nir(name: str, n, path: Path) -> Node:
    import nir

    where = f"{path}: node {name!r}"
    if isinstance(n, nir.NIRGraph):
        ext = n.metadata.get("sdm.extension")
        if ext is None:
            raise NIRFormatError(f"{where}: nested NIR graphs are not supported (only sdm extensions)")
        ext = ext.decode() if isinstance(ext, bytes) else str(ext)
        inner_in = [v for v in n.nodes.values() if isinstance(v, nir.Input)]
        inner_out = [v for v in n.nodes.values() if isinstance(v, nir.Output)]
        if len(inner_in) != 1 or len(inner_out) != 1:
            raise NIRFormatError(f"{where}: malformed sdm extension body")
        in_shape = tuple(int(v) for v in _arr(inner_in[0].input_type["input"]))
        out_shape = tuple(int(v) for v in _arr(inner_out[0].output_type["output"]))
        if ext == "temporal_affine":
            return TemporalAffine(name, _arr(n.metadata["gain"]), _arr(n.metadata["offset"]), out_shape)
        if ext == "if_neuron":
            reset = n.metadata["reset"]
            reset = reset.decode() if isinstance(reset, bytes) else str(reset)
            try:
                return IFNeurons(name, _arr(n.metadata["v_threshold"]), decay=float(n.metadata["decay"]),
                                 reset=reset, v_init=float(n.metadata["v_init"]),
                                 signed=bool(int(_arr(n.metadata.get("signed", 0)))))
            except ValueError as e:
                raise NIRFormatError(f"{where}: {e}") from None
        if ext == "upsample_nearest":
            up = Upsample(name, in_shape, int(n.metadata["scale"]))
            if up.shape != out_shape:
                raise NIRFormatError(f"{where}: upsample output {out_shape} != {up.shape}")
            return up
        raise NIRFormatError(f"{where}: unknown sdm extension {ext!r} (known: {', '.join(EXTENSIONS)})")
    if isinstance(n, nir.Input):
        kind = n.metadata.get("sdm.input", "image")
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        block = n.metadata.get("sdm.block", "")
        block = block.decode() if isinstance(block, bytes) else str(block)
        return AnalogInput(name, tuple(int(v) for v in _arr(n.input_type["input"])), kind=kind, block=block)
    if isinstance(n, nir.Output):
        return Output(name, tuple(int(v) for v in _arr(n.output_type["output"])))
    if isinstance(n, nir.Conv2d):
        if np.any(_arr(n.dilation) != 1) or n.groups != 1:
            raise NIRFormatError(f"{where}: only dilation 1 and groups 1 convolutions are supported")
        stride = _pad(n.stride, name, path)
        if n.input_shape is None:
            raise NIRFormatError(f"{where}: Conv2d without input_shape")
        cin = n.weight.shape[1]
        return Conv(name, _arr(n.weight), _arr(n.bias), stride, _pad(n.padding, name, path),
                    (cin, *[int(v) for v in _arr(n.input_shape)]))
    if isinstance(n, nir.IF):
        if not np.allclose(n.r, 1.0) or (n.v_reset is not None and np.any(_arr(n.v_reset) != 0)):
            raise NIRFormatError(f"{where}: IF with r != 1 or v_reset != 0 is not supported")
        return IFNeurons(name, _arr(n.v_threshold), decay=1.0)
    if isinstance(n, nir.LIF):
        tau = _arr(n.tau)
        if np.any(_arr(n.v_leak) != 0) or np.any(_arr(n.v_reset) != 0) or not np.allclose(n.r, tau) \
                or not np.all(tau == tau.flat[0]) or tau.flat[0] < 1:
            raise NIRFormatError(f"{where}: only LIF with r = tau >= 1 (uniform), v_leak = 0, v_reset = 0 "
                                 "is supported")
        return IFNeurons(name, _arr(n.v_threshold), decay=float(1.0 - 1.0 / tau.flat[0]))
    if isinstance(n, nir.Scale):
        if not np.all(_arr(n.scale) == 1):
            raise NIRFormatError(f"{where}: only unit Scale (residual junction) nodes are supported")
        return Junction(name, tuple(int(v) for v in _arr(n.scale).shape))
    raise NIRFormatError(f"{where}: NIR node type {type(n).__name__} is not supported by sdm")


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _host_from_metadata(meta: dict, path: Path) -> HostParams:
    h = meta["host"]
    temb = {blk: (_arr(v["w"]), _arr(v["b"])) for blk, v in h["temb_proj"].items()}
    return HostParams(T=int(h["T"]), img_shape=tuple(int(v) for v in _arr(h["img_shape"])),
                      time_mlp={k: _arr(v) for k, v in h["time_mlp"].items()}, temb_proj=temb,
                      tail={k: _arr(v) for k, v in h["tail"].items()}, readout_decay=float(h["readout_decay"]),
                      schedule={k: int(v) if k == "steps" else float(v) for k, v in h["schedule"].items()},
                      theta=float(h["theta"]),
                      readout=_text(h.get("readout", "membrane")),
                      threshold_scale=float(h["threshold_scale"]))


def read_nir(path: str | os.PathLike, require_host: bool = True) -> SNNGraph:
    """Read a NIR file of the supported node types into the IR.

    Running denoising needs the host-side metadata that :func:`write_nir` stores; with
    ``require_host=False`` plain spiking networks (from this or another tool) load too."""
    path = Path(path)
    ng = _load_nir(path)
    meta = ng.metadata
    if int(meta.get("sdm.format_version", 0)) > FORMAT_VERSION:
        raise NIRFormatError(f"{path}: format version {meta['sdm.format_version']} is newer than this tool")
    if require_host and "host" not in meta:
        raise NIRFormatError(f"{path}: not a denoiser written by sdm export-nir (no host-side parameters: "
                             "time embedding, tail, schedule), so it cannot run denoising steps")
    nodes = {name: _node_from_nir(name, n, path) for name, n in ng.nodes.items()}
    try:
        host = _host_from_metadata(meta, path) if "host" in meta else None
        graph = SNNGraph(nodes, [tuple(e) for e in ng.edges], host)
    except (KeyError, TypeError) as e:
        raise NIRFormatError(f"{path}: incomplete host-side metadata ({type(e).__name__}: {e})") from None
    except ValueError as e:
        raise NIRFormatError(f"{path}: {' '.join(str(e).split())}") from None
    for n in graph.of_type(AnalogInput):
        if n.kind == "temb" and (host is None or n.block not in host.temb_proj):
            raise NIRFormatError(f"{path}: input {n.name!r} names block {n.block!r} with no projection")
    return graph
