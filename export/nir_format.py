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

from sdm.errors import ConfigError, GraphError, SDMError
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
SD_FORMAT = "sdm-spiking-diffusion"  # the tag of Spiking-Diffusion files (sdm.export.sd_format)
FORMAT_VERSION = 1
EXTENSIONS = ("temporal_affine", "upsample_nearest", "upsample_zeros", "if_neuron")


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
            used.add(f"upsample_{node.mode}")
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
    c = node.params.input_scale  # 1, or 1/tau for spikingjelly's LIF (decay_input)
    if node.decay == 1.0:  # Euler with dt = 1: v += r I
        return nir.IF(r=ones * c, v_threshold=node.threshold, v_reset=zeros, metadata=meta)
    tau = ones / (1.0 - node.decay)  # Euler with dt = 1: v += (-v + r I) / tau  ==  decay * v + (r / tau) I
    return nir.LIF(tau=tau, r=tau * c, v_leak=zeros, v_threshold=node.threshold, v_reset=zeros, metadata=meta)


def _write_junction(node: Junction, meta: dict):
    import nir

    return nir.Scale(scale=np.ones(node.shape, dtype=np.float32), metadata={**meta, "sdm.junction": True})


def _write_temporal_affine(node: TemporalAffine, meta: dict):
    return _guard_graph(node.shape, node.shape, {
        **meta, "sdm.extension": "temporal_affine", "gain": node.gain, "offset": node.offset,
        "equation": "y[n] = gain[n] * x[n] + offset[c]"})


_UPSAMPLE_EQUATIONS = {"nearest": "y[c, i, j] = x[c, i // scale, j // scale]",
                       "zeros": "y[c, scale*i, scale*j] = x[c, i, j]; y = 0 elsewhere (zero insertion)"}


def _write_upsample(node: Upsample, meta: dict):
    return _guard_graph(node.in_shape, node.shape, {
        **meta, "sdm.extension": f"upsample_{node.mode}", "scale": node.scale,
        "equation": _UPSAMPLE_EQUATIONS[node.mode]})


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
def _one_line(e: BaseException, limit: int = 160) -> str:
    return " ".join(str(e).split())[:limit] or type(e).__name__


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


# the fields of NIR's node types that this reader uses, by the data they must hold
_INT_FIELDS = ("stride", "padding", "dilation", "groups", "input_shape", "shape")
_NUMBER_FIELDS = ("weight", "bias", "r", "v_threshold", "v_reset", "tau", "v_leak", "scale")


def _describe(item: h5py.Dataset) -> str:
    if item.dtype.kind in "OSU" and item.shape == ():
        return f"the string {_text(item[()])!r}"
    return f"{item.dtype} data"


def _check_raw_fields(path: Path) -> None:
    """Every node has a type and its integer / numeric fields hold integers / numbers, read from the HDF5
    layout before NIR builds anything (NIR's own node classes fail on them with unrelated errors)."""
    def walk(group, prefix: str) -> None:
        if not isinstance(group.get("nodes"), h5py.Group):
            return
        for name, sub in group["nodes"].items():
            where = f"{path}: node {prefix + name!r}"
            if not isinstance(sub, h5py.Group) or not isinstance(sub.get("type"), h5py.Dataset):
                raise NIRFormatError(f"{where}: has no type")
            for key in (*_INT_FIELDS, *_NUMBER_FIELDS):
                item = sub.get(key)
                if not isinstance(item, h5py.Dataset):
                    continue
                kinds, what = ("iu", "integers") if key in _INT_FIELDS else ("fiu", "numbers")
                if item.dtype.kind not in kinds:
                    raise NIRFormatError(f"{where}: {key} must hold {what}, found {_describe(item)}")
            if _text(sub["type"][()]) == "NIRGraph":
                walk(sub, prefix + name + ".")

    with h5py.File(path, "r") as f:
        if not isinstance(f.get("node"), h5py.Group):
            raise NIRFormatError(f"{path}: not a NIR file (no 'node' group)")
        walk(f["node"], "")


def _failing_node(path: Path) -> str | None:
    """Which top-level node NIR cannot build, and why (for the message when ``nir.read`` fails)."""
    import nir
    from nir.serialization import hdf2dict

    with h5py.File(path, "r") as f:
        for name, sub in f["node/nodes"].items():
            try:
                nir.dict2NIRNode(hdf2dict(sub))
            except Exception as e:  # noqa: BLE001 (whatever NIR's node class raises on bad fields)
                return f"node {name!r}: NIR cannot build it ({type(e).__name__}: {_one_line(e, 120)})"
    return None


def load_nir(path: Path):
    """``nir.read(path)``, every failure a one-line :class:`NIRFormatError` naming the file (and the node)."""
    import nir

    if not path.exists():
        raise NIRFormatError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise NIRFormatError(f"{path}: not a NIR file (not HDF5; truncated or another format)")
    try:
        _check_raw_fields(path)
        return nir.read(path)
    except NIRFormatError:
        raise
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
                             f"{_one_line(e, 120)})") from None
    except Exception as e:  # a node NIR cannot build from the file's fields, or a graph whose types disagree
        try:
            node = _failing_node(path)
        except Exception:
            node = None
        raise NIRFormatError(f"{path}: {node}" if node else
                             f"{path}: inconsistent NIR graph ({_one_line(e)})") from None


def _arr(x) -> np.ndarray:
    return np.asarray(x)


def _show(v) -> str:
    return repr(_text(v) if isinstance(v, bytes) else v)[:60]


def _int(v, what: str) -> int:
    """A scalar integer field (an integral float such as ``1000.0`` too); anything else names ``what``."""
    a = np.asarray(v)
    if a.shape != () or a.dtype.kind not in "iuf" or (a.dtype.kind == "f" and not (np.isfinite(a) and a == a.round())):
        raise GraphError(f"{what} must be an integer, got {_show(v)}")
    return int(a)


def _float(v, what: str) -> float:
    """A scalar number field (NaN and Inf pass: the records refuse them, naming the field)."""
    a = np.asarray(v)
    if a.shape != () or a.dtype.kind not in "iuf":
        raise GraphError(f"{what} must be a number, got {_show(v)}")
    return float(a)


def _ints(v, what: str) -> tuple[int, ...]:
    a = np.asarray(v)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise GraphError(f"{what} must be a list of integers, got {_show(v)}")
    return tuple(int(x) for x in a)


def _get(d, key: str, where: str):
    """``d[key]`` of a metadata group; missing is a :class:`GraphError` naming ``where`` and ``key``."""
    if not isinstance(d, dict) or key not in d:
        raise GraphError(f"{where} is missing {key!r}")
    return d[key]


def _pad(value, where: str, name: str) -> int:
    p = np.atleast_1d(np.asarray(value))
    if p.dtype.kind not in "iu" or len(set(p.tolist())) != 1:
        raise NIRFormatError(f"{where}: only equal integer {name} is supported, got {value!r}")
    return int(p[0])


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _origin(meta: dict) -> Origin | None:
    if "sdm.module" not in meta:
        return None
    channels = meta.get("sdm.channels")
    return Origin(_text(meta["sdm.module"]), None if channels is None else _ints(channels, "sdm.channels"))


def _io_shape(types: dict, key: str) -> tuple[int, ...]:
    return _ints(types[key], f"{key} shape")


# one reader per NIR node type: (name, NIR node, "file: node 'x'") -> IR node (origin added by the caller)
def _read_input(name, n, where) -> Node:
    kind, block = _text(n.metadata.get("sdm.input", "image")), _text(n.metadata.get("sdm.block", ""))
    return AnalogInput(name, _io_shape(n.input_type, "input"), kind=kind, block=block)


def _read_output(name, n, where) -> Node:
    return Output(name, _io_shape(n.output_type, "output"))


def _read_conv(name, n, where) -> Node:
    if np.any(_arr(n.dilation) != 1) or np.any(_arr(n.groups) != 1):
        raise NIRFormatError(f"{where}: only dilation 1 and groups 1 convolutions are supported")
    if n.input_shape is None:
        raise NIRFormatError(f"{where}: Conv2d without input_shape")
    weight = _arr(n.weight)
    if weight.ndim != 4:
        raise NIRFormatError(f"{where}: weight must be a (C_out, C_in, kH, kW) array, got shape {list(weight.shape)}")
    return Conv(name, weight, _arr(n.bias), _pad(n.stride, where, "stride"), _pad(n.padding, where, "padding"),
                (weight.shape[1], *_ints(n.input_shape, "input_shape")))


def _uniform(a: np.ndarray, what: str, where: str) -> float:
    a = _arr(a)
    if a.size == 0 or not np.all(a == a.flat[0]):
        raise NIRFormatError(f"{where}: {what} must be the same for every neuron")
    return float(a.flat[0])


def _read_if(name, n, where) -> Node:
    r = _uniform(n.r, "r", where)
    if not 0 < r <= 1 or (n.v_reset is not None and np.any(_arr(n.v_reset) != 0)):
        raise NIRFormatError(f"{where}: only IF with 0 < r <= 1 and v_reset = 0 is supported")
    return IFNeurons(name, _arr(n.v_threshold), NeuronParams(input_scale=r))


def _read_lif(name, n, where) -> Node:
    tau, r = _uniform(n.tau, "tau", where), _uniform(n.r, "r", where)
    if np.any(_arr(n.v_leak) != 0) or np.any(_arr(n.v_reset) != 0) or not tau >= 1 or not 0 < r <= tau:
        raise NIRFormatError(f"{where}: only LIF with tau >= 1, 0 < r <= tau (uniform), v_leak = 0, v_reset = 0 "
                             "is supported")
    # Euler with dt = 1: v += (-v + r I) / tau  ==  (1 - 1/tau) v + (r / tau) I
    return IFNeurons(name, _arr(n.v_threshold), NeuronParams(decay=1.0 - 1.0 / tau, input_scale=r / tau))


def _read_scale(name, n, where) -> Node:
    if not np.all(_arr(n.scale) == 1):
        raise NIRFormatError(f"{where}: only unit Scale (residual junction) nodes are supported")
    return Junction(name, tuple(int(v) for v in _arr(n.scale).shape))


# one reader per sdm extension: (name, metadata, body input shape, body output shape, where) -> IR node;
# a missing parameter is a GraphError "<extension> extension is missing 'key'"
def _read_temporal_affine(name, meta, in_shape, out_shape, where) -> Node:
    ext = "temporal_affine extension"
    return TemporalAffine(name, _arr(_get(meta, "gain", ext)), _arr(_get(meta, "offset", ext)), out_shape)


def _read_if_neuron(name, meta, in_shape, out_shape, where) -> Node:
    ext = "if_neuron extension"
    params = NeuronParams(decay=_float(_get(meta, "decay", ext), "decay"), reset=_text(_get(meta, "reset", ext)),
                          v_init=_float(_get(meta, "v_init", ext), "v_init"),
                          signed=bool(_int(meta.get("signed", 0), "signed")),
                          inhibit_margin=_float(meta.get("inhibit_margin", NeuronParams.inhibit_margin),
                                                "inhibit_margin"))
    return IFNeurons(name, _arr(_get(meta, "v_threshold", ext)), params)


def _read_upsample(name, meta, in_shape, out_shape, where, mode: str = "nearest") -> Node:
    scale = _int(_get(meta, "scale", f"upsample_{mode} extension"), "scale")
    up = Upsample(name, in_shape, scale, mode=mode)
    if up.shape != out_shape:
        raise NIRFormatError(f"{where}: upsample output {out_shape} != {up.shape}")
    return up


_EXTENSION_READERS = {"temporal_affine": _read_temporal_affine, "if_neuron": _read_if_neuron,
                      "upsample_nearest": _read_upsample,
                      "upsample_zeros": lambda *a: _read_upsample(*a, mode="zeros")}
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
        msg = _one_line(e, 300)
        raise NIRFormatError(f"{where}: {msg[len(name) + 2:] if msg.startswith(name + ': ') else msg}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise NIRFormatError(f"{where}: malformed node ({type(e).__name__}: {_one_line(e)})") from None
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


def _host_from_metadata(meta: dict) -> HostParams:
    """The host section as typed records; every missing or malformed field is an SDMError naming it
    (the records check values and shapes, :meth:`SNNGraph.validate` them against the graph)."""
    h = _get(meta, "host", "the graph metadata")
    temb = _get(h, "temb_proj", "host")
    if not isinstance(temb, dict):
        raise GraphError("host temb_proj must be a group of blocks")
    temb = {blk: BlockProjection.from_arrays(v, f"host temb_proj {blk}") for blk, v in temb.items()}
    sched = _get(h, "schedule", "host")
    try:
        schedule = ScheduleConfig(_int(_get(sched, "steps", "host schedule"), "host schedule steps"),
                                  _float(_get(sched, "beta_start", "host schedule"), "host schedule beta_start"),
                                  _float(_get(sched, "beta_end", "host schedule"), "host schedule beta_end"))
    except ConfigError as e:
        raise GraphError(f"host schedule: {e}") from None
    return HostParams(T=_int(_get(h, "T", "host"), "host T"), img_shape=_ints(_get(h, "img_shape", "host"),
                                                                               "host img_shape"),
                      time_mlp=TimeMLP.from_arrays(_get(h, "time_mlp", "host"), "host time_mlp"), temb_proj=temb,
                      tail=Tail.from_arrays(_get(h, "tail", "host"), "host tail"),
                      readout_decay=_float(_get(h, "readout_decay", "host"), "host readout_decay"),
                      schedule=schedule, theta=_float(_get(h, "theta", "host"), "host theta"),
                      readout=_text(h.get("readout", "membrane")),
                      threshold_scale=_float(_get(h, "threshold_scale", "host"), "host threshold_scale"),
                      moments=_moments(h.get("moments")))


def _moments(m: dict | None) -> Moments | None:
    if m is None:
        return None
    where = "host moments"
    return Moments(_arr(_get(m, "timesteps", where)), _arr(_get(m, "gamma", where)), _int(_get(m, "n", where),
                                                                                          "host moments n"),
                   _text(_get(m, "data", where)))


def _check_version(meta: dict, path: Path, require_host: bool) -> None:
    """A file of this tool carries ``sdm.format_version``; refuse a newer one, and a denoiser file without."""
    if "sdm.format_version" in meta:
        try:
            version = _int(meta["sdm.format_version"], "sdm.format_version")
        except GraphError as e:
            raise NIRFormatError(f"{path}: {e}") from None
        if version > FORMAT_VERSION:
            raise NIRFormatError(f"{path}: format version {version} is newer than this tool")
        if version < 1:
            raise NIRFormatError(f"{path}: sdm.format_version must be >= 1, got {version}")
    if require_host and "host" not in meta:
        raise NIRFormatError(f"{path}: not a denoiser written by sdm export-nir (no host-side parameters: "
                             "time embedding, tail, schedule), so it cannot run denoising steps")
    if "host" in meta and "sdm.format_version" not in meta:
        raise NIRFormatError(f"{path}: missing sdm.format_version in the graph metadata (every denoiser file of "
                             "sdm export-nir has one); the file is damaged or from another writer")


def read_nir(path: str | os.PathLike, require_host: bool = True) -> SNNGraph:
    """Read a NIR file of the supported node types into the IR, validated before anything runs.

    Running denoising needs the host-side metadata that :func:`write_nir` stores; with
    ``require_host=False`` plain spiking networks (from this or another tool) load too.  Every
    problem is a one-line :class:`NIRFormatError` naming the file and the node or field: field
    types in the HDF5 layout, the nodes' own checks (shapes, finite values, parameters), the host
    records and :meth:`SNNGraph.validate` (edges, shapes, host against graph)."""
    path = Path(path)
    ng = load_nir(path)
    meta = ng.metadata
    if _text(meta.get("sdm.format", "")) == SD_FORMAT:
        raise NIRFormatError(f"{path}: a Spiking-Diffusion file (sdid, decoder and encoder graphs), not a UNet "
                             "denoiser; sdm import-nir, simulate and energy read it as such")
    _check_version(meta, path, require_host)
    return graph_from_nir(ng, str(path))


def graph_from_nir(ng, label: str) -> SNNGraph:
    """The IR graph of a loaded ``nir.NIRGraph`` (a file's top level, or one part of a Spiking-Diffusion
    file); ``label`` starts every error message (the file, and the part)."""
    nodes = {name: _node_from_nir(name, n, label) for name, n in ng.nodes.items()}
    _legacy_origins(nodes)
    try:
        host = _host_from_metadata(ng.metadata) if "host" in ng.metadata else None
        return SNNGraph(nodes, [tuple(e) for e in ng.edges], host)
    except NIRFormatError:
        raise
    except SDMError as e:
        raise NIRFormatError(f"{label}: {_one_line(e, 300)}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise NIRFormatError(f"{label}: malformed host-side metadata ({type(e).__name__}: {_one_line(e)})") from None
