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
top-level graph metadata under ``host``.  Each node's :class:`~sdm.export.ir.Origin` (the model
module it came from, and its channel range) travels as node metadata ``sdm.module`` /
``sdm.channels``.

Writing and reading are one small function per node kind, in the tables ``_WRITERS`` (IR
type -> NIR node) and ``_READERS`` / ``_EXTENSION_READERS`` (NIR type or extension -> IR node).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from sdm.errors import SDMError
from sdm.files import atomic_write
from sdm.train.diffusion import ScheduleConfig
from sdm.train.moments import Moments
from sdm.train.neuron import NeuronParams

from .ir import (
    AnalogInput,
    BlockProjection,
    Conv,
    HostParams,
    IFNeurons,
    Junction,
    Node,
    Origin,
    Output,
    SNNGraph,
    Tail,
    TemporalAffine,
    TimeMLP,
    Upsample,
)

FORMAT = "sdm-snn"  # metadata tag of files written here
FORMAT_VERSION = 1
EXTENSIONS = ("temporal_affine", "upsample_nearest", "if_neuron")


class NIRFormatError(SDMError):
    """A NIR file this tool cannot read or run; the message names the file and the problem."""


# ----- writing ----------------------------------------------------------------------------
def _guard_graph(in_shape, out_shape, metadata: dict):
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
    sched = host.schedule
    return {
        "T": host.T, "img_shape": np.array(host.img_shape), "readout_decay": host.readout_decay,
        "theta": host.theta, "threshold_scale": host.threshold_scale, "readout": host.readout,
        "schedule": {"steps": int(sched.steps), "beta_start": float(sched.beta_start),
                     "beta_end": float(sched.beta_end)},
        "time_mlp": host.time_mlp.arrays(),
        "temb_proj": {blk: proj.arrays() for blk, proj in host.temb_proj.items()},
        "tail": host.tail.arrays(),
        **({"moments": {"timesteps": host.moments.timesteps, "gamma": host.moments.gamma, "n": int(host.moments.n),
                        "data": host.moments.data}} if host.moments is not None else {}),
    }


def file_counts(graph: SNNGraph) -> tuple[int, int]:
    """Nodes and edges of the graph as written to a NIR file (after junction elision)."""
    elide = _elidable_junctions(graph)
    return len(graph.nodes) - len(elide), len(_expanded_edges(graph, elide))


def extensions_used(graph: SNNGraph) -> list[str]:
    """The sdm extensions a file of ``graph`` needs (sorted)."""
    used = set()
    for node in graph.nodes.values():
        if isinstance(node, TemporalAffine):
            used.add("temporal_affine")
        elif isinstance(node, Upsample):
            used.add("upsample_nearest")
        elif isinstance(node, IFNeurons) and not node.standard:
            used.add("if_neuron")
    return sorted(used)


def _origin_metadata(node: Node) -> dict:
    if node.origin is None:
        return {}
    meta = {"sdm.module": node.origin.module}
    if node.origin.channels is not None:
        meta["sdm.channels"] = np.array(node.origin.channels, dtype=np.int64)
    return meta


# one writer per IR node type: (node, origin metadata) -> NIR node
def _write_input(node: AnalogInput, meta: dict):
    import nir

    meta = {**meta, "sdm.input": node.kind}
    if node.kind == "temb":
        meta["sdm.block"] = node.block
    return nir.Input(input_type=np.array(node.shape), metadata=meta)


def _write_conv(node: Conv, meta: dict):
    import nir

    return nir.Conv2d(input_shape=node.in_shape[1:], weight=node.weight, stride=node.stride, padding=node.padding,
                      dilation=1, groups=1, bias=node.bias, metadata=meta)


def _write_neurons(node: IFNeurons, meta: dict):
    import nir

    if not node.standard:
        # NIR's IF resets to v_reset, starts at 0 and emits 0/1: subtractive reset, v_init and signed
        # spikes travel as an extension
        m = node.inhibit_margin
        return _guard_graph(node.shape, node.shape, {
            **meta, "sdm.extension": "if_neuron", "v_threshold": node.threshold, "decay": float(node.decay),
            "reset": node.reset, "v_init": float(node.v_init), "signed": int(node.signed), "inhibit_margin": m,
            "equation": "h[n] = decay*v[n-1] + I[n]; s[n] = h[n] >= v_threshold; v[-1] = v_init*v_threshold; "
                        "v[n] = h[n] - v_threshold*s[n] (reset=subtract) or h[n]*(1-s[n]) (reset=zero); "
                        f"signed=1: u = v[n] <= -{m:g} and c[n-1] + s[n] > 0 (c: net count), v[n] += v_threshold*u, "
                        "output s[n] - u"})
    ones, zeros = np.ones_like(node.threshold), np.zeros_like(node.threshold)
    if node.decay == 1.0:
        return nir.IF(r=ones, v_threshold=node.threshold, v_reset=zeros, metadata=meta)
    tau = ones / (1.0 - node.decay)  # Euler with dt = 1: v += (-v + r I) / tau  ==  decay * v + I
    return nir.LIF(tau=tau, r=tau, v_leak=zeros, v_threshold=node.threshold, v_reset=zeros, metadata=meta)


def _write_junction(node: Junction, meta: dict):
    import nir

    return nir.Scale(scale=np.ones(node.shape, dtype=np.float32), metadata={**meta, "sdm.junction": True})


def _write_temporal_affine(node: TemporalAffine, meta: dict):
    return _guard_graph(node.shape, node.shape, {
        **meta, "sdm.extension": "temporal_affine", "gain": node.gain, "offset": node.offset,
        "equation": "y[n] = gain[n] * x[n] + offset[c]"})


def _write_upsample(node: Upsample, meta: dict):
    return _guard_graph(node.in_shape, node.shape, {
        **meta, "sdm.extension": "upsample_nearest", "scale": node.scale,
        "equation": "y[c, i, j] = x[c, i // scale, j // scale]"})


def _write_output(node: Output, meta: dict):
    import nir

    return nir.Output(output_type=np.array(node.shape), metadata=meta)


_WRITERS = {AnalogInput: _write_input, Conv: _write_conv, IFNeurons: _write_neurons, Junction: _write_junction,
            TemporalAffine: _write_temporal_affine, Upsample: _write_upsample, Output: _write_output}


def to_nir(graph: SNNGraph):
    """The ``nir.NIRGraph`` of an IR graph (type-checked by NIR on construction)."""
    import nir

    elide = _elidable_junctions(graph)
    nodes = {name: _WRITERS[type(node)](node, _origin_metadata(node))
             for name, node in graph.nodes.items() if name not in elide}
    metadata = {
        "sdm.format": FORMAT, "sdm.format_version": FORMAT_VERSION,
        "sdm.extensions": ",".join(extensions_used(graph)),
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
            typ = _text(sub["type"][()])
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


def _pad(value, where: str) -> int:
    p = np.atleast_1d(np.asarray(value))
    if p.dtype.kind not in "iu" or len(set(p.tolist())) != 1:
        raise NIRFormatError(f"{where}: only equal integer padding is supported, got {value!r}")
    return int(p[0])


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _origin(meta: dict) -> Origin | None:
    if "sdm.module" not in meta:
        return None
    channels = meta.get("sdm.channels")
    return Origin(_text(meta["sdm.module"]), None if channels is None else tuple(int(c) for c in _arr(channels)))


def _io_shape(types: dict, key: str) -> tuple[int, ...]:
    return tuple(int(v) for v in _arr(types[key]))


# one reader per NIR node type: (name, NIR node, "file: node 'x'") -> IR node (origin added by the caller)
def _read_input(name, n, where) -> Node:
    kind, block = _text(n.metadata.get("sdm.input", "image")), _text(n.metadata.get("sdm.block", ""))
    return AnalogInput(name, _io_shape(n.input_type, "input"), kind=kind, block=block)


def _read_output(name, n, where) -> Node:
    return Output(name, _io_shape(n.output_type, "output"))


def _read_conv(name, n, where) -> Node:
    if np.any(_arr(n.dilation) != 1) or n.groups != 1:
        raise NIRFormatError(f"{where}: only dilation 1 and groups 1 convolutions are supported")
    if n.input_shape is None:
        raise NIRFormatError(f"{where}: Conv2d without input_shape")
    cin = n.weight.shape[1]
    return Conv(name, _arr(n.weight), _arr(n.bias), _pad(n.stride, where), _pad(n.padding, where),
                (cin, *[int(v) for v in _arr(n.input_shape)]))


def _read_if(name, n, where) -> Node:
    if not np.allclose(n.r, 1.0) or (n.v_reset is not None and np.any(_arr(n.v_reset) != 0)):
        raise NIRFormatError(f"{where}: IF with r != 1 or v_reset != 0 is not supported")
    return IFNeurons(name, _arr(n.v_threshold))


def _read_lif(name, n, where) -> Node:
    tau = _arr(n.tau)
    if np.any(_arr(n.v_leak) != 0) or np.any(_arr(n.v_reset) != 0) or not np.allclose(n.r, tau) \
            or not np.all(tau == tau.flat[0]) or tau.flat[0] < 1:
        raise NIRFormatError(f"{where}: only LIF with r = tau >= 1 (uniform), v_leak = 0, v_reset = 0 is supported")
    return IFNeurons(name, _arr(n.v_threshold), NeuronParams(decay=float(1.0 - 1.0 / tau.flat[0])))


def _read_scale(name, n, where) -> Node:
    if not np.all(_arr(n.scale) == 1):
        raise NIRFormatError(f"{where}: only unit Scale (residual junction) nodes are supported")
    return Junction(name, tuple(int(v) for v in _arr(n.scale).shape))


# one reader per sdm extension: (name, metadata, body input shape, body output shape, where) -> IR node
def _read_temporal_affine(name, meta, in_shape, out_shape, where) -> Node:
    return TemporalAffine(name, _arr(meta["gain"]), _arr(meta["offset"]), out_shape)


def _read_if_neuron(name, meta, in_shape, out_shape, where) -> Node:
    params = NeuronParams(decay=float(meta["decay"]), reset=_text(meta["reset"]), v_init=float(meta["v_init"]),
                          signed=bool(int(_arr(meta.get("signed", 0)))),
                          inhibit_margin=float(meta.get("inhibit_margin", NeuronParams.inhibit_margin)))
    return IFNeurons(name, _arr(meta["v_threshold"]), params)


def _read_upsample(name, meta, in_shape, out_shape, where) -> Node:
    up = Upsample(name, in_shape, int(meta["scale"]))
    if up.shape != out_shape:
        raise NIRFormatError(f"{where}: upsample output {out_shape} != {up.shape}")
    return up


_EXTENSION_READERS = {"temporal_affine": _read_temporal_affine, "if_neuron": _read_if_neuron,
                      "upsample_nearest": _read_upsample}
assert set(_EXTENSION_READERS) == set(EXTENSIONS)


def _read_extension(name, n, where) -> Node:
    import nir

    ext = n.metadata.get("sdm.extension")
    if ext is None:
        raise NIRFormatError(f"{where}: nested NIR graphs are not supported (only sdm extensions)")
    ext = _text(ext)
    inner_in = [v for v in n.nodes.values() if isinstance(v, nir.Input)]
    inner_out = [v for v in n.nodes.values() if isinstance(v, nir.Output)]
    if len(inner_in) != 1 or len(inner_out) != 1:
        raise NIRFormatError(f"{where}: malformed sdm extension body")
    if ext not in _EXTENSION_READERS:
        raise NIRFormatError(f"{where}: unknown sdm extension {ext!r} (known: {', '.join(EXTENSIONS)})")
    return _EXTENSION_READERS[ext](name, n.metadata, _io_shape(inner_in[0].input_type, "input"),
                                   _io_shape(inner_out[0].output_type, "output"), where)


def _readers() -> dict:
    import nir

    return {nir.NIRGraph: _read_extension, nir.Input: _read_input, nir.Output: _read_output, nir.Conv2d: _read_conv,
            nir.IF: _read_if, nir.LIF: _read_lif, nir.Scale: _read_scale}


def _node_from_nir(name: str, n, path: Path) -> Node:
    where = f"{path}: node {name!r}"
    reader = _readers().get(type(n))
    if reader is None:
        raise NIRFormatError(f"{where}: NIR node type {type(n).__name__} is not supported by sdm")
    try:
        node = reader(name, n, where)
        node.origin = _origin(n.metadata)
    except NIRFormatError:
        raise
    except SDMError as e:  # node checks (IR, neuron parameters) name the problem; add the file and node
        raise NIRFormatError(f"{where}: {e}") from None
    except (KeyError, TypeError) as e:
        raise NIRFormatError(f"{where}: incomplete node ({type(e).__name__}: {e})") from None
    return node


def _legacy_origins(nodes: dict[str, Node]) -> None:
    """Files written before origins were stored: the split neuron groups of a concatenation are
    named ``<module>.h`` / ``<module>.skip`` (in that channel order); every other node is its module."""
    for name, node in nodes.items():
        if node.origin is not None or not isinstance(node, IFNeurons):
            continue
        base, _, part = name.rpartition(".")
        if part in ("h", "skip") and f"{base}.h" in nodes and f"{base}.skip" in nodes:
            c_h = nodes[f"{base}.h"].shape[0]
            start, stop = (0, c_h) if part == "h" else (c_h, c_h + node.shape[0])
            node.origin = Origin(base, (start, stop))


def _host_from_metadata(meta: dict, path: Path) -> HostParams:
    h = meta["host"]
    temb = {blk: BlockProjection.from_arrays(dict(v), f"{path}: host temb_proj {blk}")
            for blk, v in h["temb_proj"].items()}
    sched = h["schedule"]
    return HostParams(T=int(h["T"]), img_shape=tuple(int(v) for v in _arr(h["img_shape"])),
                      time_mlp=TimeMLP.from_arrays(dict(h["time_mlp"]), f"{path}: host time_mlp"), temb_proj=temb,
                      tail=Tail.from_arrays(dict(h["tail"]), f"{path}: host tail"),
                      readout_decay=float(h["readout_decay"]),
                      schedule=ScheduleConfig(int(sched["steps"]), float(sched["beta_start"]),
                                              float(sched["beta_end"])),
                      theta=float(h["theta"]), readout=_text(h.get("readout", "membrane")),
                      threshold_scale=float(h["threshold_scale"]), moments=_moments(h.get("moments")))


def _moments(m: dict | None) -> Moments | None:
    if m is None:
        return None
    return Moments(_arr(m["timesteps"]), _arr(m["gamma"]), int(_arr(m["n"])), _text(m["data"]))


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
    _legacy_origins(nodes)
    try:
        host = _host_from_metadata(meta, path) if "host" in meta else None
        graph = SNNGraph(nodes, [tuple(e) for e in ng.edges], host)
    except (KeyError, TypeError) as e:
        raise NIRFormatError(f"{path}: incomplete host-side metadata ({type(e).__name__}: {e})") from None
    except SDMError as e:
        raise NIRFormatError(f"{path}: {' '.join(str(e).split())}") from None
    for n in graph.of_type(AnalogInput):
        if n.kind == "temb" and (host is None or n.block not in host.temb_proj):
            raise NIRFormatError(f"{path}: input {n.name!r} names block {n.block!r} with no projection")
    return graph
