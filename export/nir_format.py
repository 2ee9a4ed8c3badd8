"""Writing the spiking graph IR as a NIR file and reading it back (specified in docs/nir-format.md).

Standard NIR 1.0.8 nodes carry everything NIR can express: ``Input`` (image and per-block
time-embedding currents), ``Conv2d`` (BatchNorm folded), ``IF`` (or ``LIF`` with a leak) and
``Output``.  Residual streams (IR junctions) are fan-in edges: elided when only neurons read them,
left out and recorded in the metadata (``sdm.junctions``) when they have one input, an identity 1x1
``Conv2d`` otherwise (:class:`_FilePlan`), forms that norse, nirtorch and snnTorch all sum.

What NIR lacks travels as *extension* nodes: nested ``NIRGraph`` s whose metadata key
``sdm.extension`` names the operation (``temporal_affine`` for TSM, ``upsample_nearest``)
and holds its parameters.  Their body is a typed ``Input -> Conv2d(groups=0) -> Output``:
the types check, so unmodified ``nir.read`` loads the file, but ``groups=0`` is an invalid
convolution, so a reader that does not know the extension fails when it builds the node
instead of silently computing a different network.

Host-side parameters (time-embedding MLP, block projections, tail, schedule, T) sit in the
top-level graph metadata under ``host``; such a file also holds the guard node
``requires_sdm_host_inputs`` between its image input and that input's readers.  Each node's
:class:`~sdm.export.ir.Origin` (the model module it came from, and its channel range) travels as
node metadata ``sdm.module`` / ``sdm.channels``.

Writing and reading are one small function per node kind, in the tables ``_WRITERS`` (IR
type -> NIR node) and ``_READERS`` / ``_EXTENSION_READERS`` (NIR type or extension -> IR node).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
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
    directly (fan-in), and the reader does not need them back.  Those read by a conv, a TSM gain, an
    upsampling or the Output are junctions of the IR the reader rebuilds (:func:`_file_plan`)."""
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


HOST_GUARD = "requires_sdm_host_inputs"  # the guarded node in front of the image input's readers


@dataclass
class _FilePlan:
    """How an IR graph is laid out in a file.  ``nodes``: the IR nodes the reader rebuilds, in order (the
    elidable junctions left out); ``edges``: theirs.  In the file, a junction of them with a single input
    (``dropped``) is left out too, its input feeding its readers, and recorded in the graph metadata
    ``sdm.junctions`` (input, readers, edge position, origin) so that the reader puts it back exactly; a junction
    with several inputs is an identity 1x1 ``Conv2d`` (every NIR reader sums a conv's fan-in);
    ``file_edges`` are the file's edges, without the host guard's."""

    nodes: list[str]
    edges: list[tuple[str, str]]
    dropped: dict[str, dict]
    file_edges: list[tuple[str, str]]


def _file_plan(graph: SNNGraph) -> _FilePlan:
    elide = _elidable_junctions(graph)
    nodes = [n for n in graph.nodes if n not in elide]
    edges = _expanded_edges(graph, elide)
    inputs: dict[str, list[str]] = {}
    for s, d in edges:
        inputs.setdefault(d, []).append(s)
    dropped: dict[str, dict] = {}
    for n in graph.topological_order():
        if n in nodes and isinstance(graph.nodes[n], Junction) and len(inputs[n]) == 1:
            dropped[n] = {"input": inputs[n][0], "readers": ",".join(d for s, d in edges if s == n),
                          "edge": edges.index((inputs[n][0], n)),
                          **_origin_metadata(graph.nodes[n])}

    def resolve(s: str) -> str:
        return resolve(dropped[s]["input"]) if s in dropped else s

    file_edges = [(resolve(s), d) for s, d in edges if d not in dropped]
    if len(set(file_edges)) != len(file_edges) or any("," in n for n in nodes):
        raise GraphError("cannot write the graph: two paths join the same nodes through a single-input junction, "
                         "or a node name holds a comma")
    return _FilePlan(nodes, edges, dropped, file_edges)


def _host_guard(graph: SNNGraph, edges: list[tuple[str, str]]):
    """A graph with host-fed inputs (time-embedding currents, computed on the host from the metadata) gets
    the guard node :data:`HOST_GUARD` between its image input and that input's readers, so that a reader
    that does not know the host section fails on it (``groups = 0``) instead of running the graph
    without those currents.  Returns (its input node name, the guard) or None."""
    if graph.host is None:
        return None
    if HOST_GUARD in graph.nodes:
        raise GraphError(f"node name {HOST_GUARD!r} is reserved for the host-input guard")
    inputs = list(graph.of_type(AnalogInput))
    image = next((n for n in inputs if n.kind == "image"), inputs[0])  # every graph has an input
    return image.name, _guard_graph(image.shape, image.shape, {
        "sdm.guard": "host_inputs", "input": image.name,
        "note": "the Input nodes of kind temb carry currents the host computes from the metadata 'host'; "
                "read this file with sdm (docs/nir-format.md)"})


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
    """Nodes and edges of the NIR file of ``graph`` (after junction elision, with the host guard)."""
    plan = _file_plan(graph)
    guard = graph.host is not None
    return len(plan.nodes) - len(plan.dropped) + guard, len(plan.file_edges) + guard


def file_counts_in(path: str | os.PathLike) -> tuple[int, int]:
    """Nodes and edges of the top-level graph of a NIR file, as stored."""
    with h5py.File(path, "r") as f:
        return len(f["node/nodes"]), len(f["node/edges"])


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
    """A junction with several inputs: an identity 1x1 convolution, which norse, nirtorch and snnTorch all
    build and sum the fan-in of (a unit ``Scale`` was dropped by norse and unmapped in snnTorch)."""
    import nir

    c, h, w = node.shape
    weight = np.zeros((c, c, 1, 1), dtype=np.float32)
    weight[np.arange(c), np.arange(c)] = 1.0
    return nir.Conv2d(input_shape=(h, w), weight=weight, stride=1, padding=0, dilation=1, groups=1,
                      bias=np.zeros(c, dtype=np.float32), metadata={**meta, "sdm.junction": True})


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

    plan = _file_plan(graph)
    nodes = {name: _WRITERS[type(graph.nodes[name])](graph.nodes[name], _origin_metadata(graph.nodes[name]))
             for name in plan.nodes if name not in plan.dropped}
    edges = plan.file_edges
    metadata = {
        "sdm.format": FORMAT, "sdm.format_version": FORMAT_VERSION,
        "sdm.extensions": ",".join(extensions_used(graph)),
        "dt": 1.0, "time_unit": "spiking step",
        "spike_condition": "v >= v_threshold", "reset": "hard, to v_reset",
        "input_encoding": "Input nodes hold the same current at every one of the T steps",
    }
    if plan.dropped:
        metadata["sdm.junctions"] = plan.dropped
    guard = _host_guard(graph, edges)
    if guard is not None:
        source, nodes[HOST_GUARD] = guard
        edges = [(source, HOST_GUARD)] + [(HOST_GUARD if s == source else s, d) for s, d in edges]
    if graph.host is not None:
        metadata["time_steps"] = graph.host.T
        metadata["host"] = _host_metadata(graph.host)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


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
                if key == "padding" and foreign and item.shape == () and _text(item[()]) in ("same", "valid"):
                    continue  # NIR's padding strings, in other tools' files (sdm writes integers)
                if item.dtype.kind not in kinds:
                    raise NIRFormatError(f"{where}: {key} must hold {what}, found {_describe(item)}")
            if _text(sub["type"][()]) == "NIRGraph":
                walk(sub, prefix + name + ".")

    with h5py.File(path, "r") as f:
        if not isinstance(f.get("node"), h5py.Group):
            raise NIRFormatError(f"{path}: not a NIR file (no 'node' group)")
        meta = f["node"].get("metadata")
        foreign = not (isinstance(meta, h5py.Group) and "sdm.format" in meta)
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
    except Exception as e:  # a node NIR cannot build from the file's fields, or a graph whose types disagree
        if not _written_by_sdm(path):  # other tools' types (batch dims, scalar parameters): our shape pass checks
            try:
                return _read_untyped(path)
            except Exception:
                pass
        if isinstance(e, (OSError, KeyError)):
            raise NIRFormatError(f"{path}: corrupt or truncated NIR file ({type(e).__name__}: "
                                 f"{_one_line(e, 120)})") from None
        try:
            node = _failing_node(path)
        except Exception:
            node = None
        raise NIRFormatError(f"{path}: {node}" if node else
                             f"{path}: inconsistent NIR graph ({_one_line(e)})") from None


def _read_untyped(path: Path):
    """``nir.read(path, type_check=False)``, nested graphs included (NIR checks those regardless)."""
    import nir
    from nir.serialization import hdf2dict

    def untyped(d: dict) -> None:
        if isinstance(d.get("padding"), bytes):
            d["padding"] = d["padding"].decode()
        if _text(d.get("type", "")) == "NIRGraph":
            d["type_check"] = False
            for sub in d.get("nodes", {}).values():
                untyped(sub)

    with h5py.File(path, "r") as f:
        d = hdf2dict(f["node"])
    untyped(d)
    return nir.dict2NIRNode(d)


def _written_by_sdm(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            meta = f.get("node/metadata")
            return isinstance(meta, h5py.Group) and "sdm.format" in meta
    except OSError:  # unreadable: the caller reports the file as corrupt
        return True


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
    if "sdm.junction" in n.metadata:
        return _read_junction_conv(name, n, where)
    if np.any(_arr(n.dilation) != 1) or np.any(_arr(n.groups) != 1):
        raise NIRFormatError(f"{where}: only dilation 1 and groups 1 convolutions are supported")
    if n.input_shape is None:
        raise NIRFormatError(f"{where}: Conv2d without input_shape")
    weight = _arr(n.weight)
    if weight.ndim != 4:
        raise NIRFormatError(f"{where}: weight must be a (C_out, C_in, kH, kW) array, got shape {list(weight.shape)}")
    return Conv(name, weight, _arr(n.bias), _pad(n.stride, where, "stride"), _pad(n.padding, where, "padding"),
                (weight.shape[1], *_ints(n.input_shape, "input_shape")))


def _read_junction_conv(name, n, where) -> Node:
    """A junction written as an identity 1x1 convolution (:func:`_write_junction`)."""
    weight, bias = _arr(n.weight), _arr(n.bias)
    c = weight.shape[0] if weight.ndim == 4 else 0
    if weight.shape != (c, c, 1, 1) or np.any(weight[:, :, 0, 0] != np.eye(c)) or np.any(bias != 0) \
            or n.input_shape is None or np.any(_arr(n.stride) != 1) or np.any(_arr(n.padding) != 0):
        raise NIRFormatError(f"{where}: a junction (sdm.junction) must be an identity 1x1 Conv2d with zero bias")
    return Junction(name, (c, *_ints(n.input_shape, "input_shape")))


def _neuron_array(v, shape, what: str) -> np.ndarray:
    """A neuron parameter as a full (C, H, W) array: per neuron, per channel (C,) or one value."""
    a = np.asarray(v, dtype=np.float64) if not isinstance(v, np.ndarray) else v
    if a.size == int(np.prod(shape)):
        return a.reshape(shape)
    if a.size == 1:
        return np.full(shape, a.reshape(()), dtype=a.dtype)
    if a.size == shape[0]:
        return np.broadcast_to(a.reshape(-1, 1, 1), shape).copy()
    raise GraphError(f"{what} has shape {list(a.shape)}, which does not fit the neurons' shape {list(shape)}")


def _neuron_shape(n) -> tuple[int, int, int]:
    """The neurons' (C, H, W): the type the shape pass set (foreign graphs), else the threshold's."""
    t = n.input_type.get("input") if isinstance(n.input_type, dict) else None
    shape = tuple(int(v) for v in np.atleast_1d(t)) if t is not None and np.size(t) == 3 else None
    return shape or tuple(np.asarray(n.v_threshold).shape)


def _snap(x: float) -> float:
    """1 when ``x`` is 1 up to float32 rounding (snnTorch writes r = tau/dt in float32)."""
    return 1.0 if abs(x - 1.0) <= 1e-6 else x


def _uniform(a: np.ndarray, what: str) -> float:
    if not np.all(a == a.flat[0]):
        raise GraphError(f"{what} must be the same for every neuron of the group (one Lava LIF process)")
    return float(a.flat[0])


def _zero_reset_leak(n, shape, kind: str) -> None:
    for field in ("v_reset", "v_leak"):
        v = getattr(n, field, None)
        if v is not None and np.any(_neuron_array(v, shape, field) != 0):
            raise GraphError(f"{kind} with {field} != 0 is not supported (neurons reset to 0 and leak to 0)")


def _threshold(n, shape, strict: bool) -> np.ndarray:
    """The neurons' thresholds; ``strict`` (other tools' files, NIR's rule ``v > v_threshold``): the next
    float64 above each, so that the IR's ``h >= threshold`` fires exactly when ``h > v_threshold``."""
    th = _neuron_array(n.v_threshold, shape, "v_threshold")
    return np.nextafter(th.astype(np.float64), np.inf) if strict else th


def _read_if(name, n, where, dt: float = 1.0, strict: bool = False) -> Node:
    """``v[n] = v[n-1] + r u[n]``: NIR's ``dv/dt = R I`` one step at a time (every NIR reader ignores dt for
    IF); ``r`` uniform in (0, 1]."""
    shape = _neuron_shape(n)
    _zero_reset_leak(n, shape, "IF")
    r = _snap(_uniform(_neuron_array(n.r, shape, "r"), "IF r"))
    if not 0 < r <= 1:
        raise GraphError(f"IF with r = {r:g} is not supported (r must be in (0, 1])")
    return IFNeurons(name, _threshold(n, shape, strict), NeuronParams(input_scale=r))


def _lif_params(tau: float, r: float, dt: float, kind: str) -> NeuronParams:
    """NIR's ``tau dv/dt = (v_leak - v) + r I`` by forward Euler with step ``dt``:
    ``v[n] = (1 - dt/tau) v[n-1] + (r dt/tau) u[n]``."""
    decay, scale = 1.0 - dt / tau, _snap(r * dt / tau)
    if not (0 < decay <= 1 and 0 < scale <= 1):
        raise GraphError(f"{kind} with tau = {tau:g}, r = {r:g} at dt = {dt:g} gives decay 1 - dt/tau = {decay:g} "
                         f"and input scale r*dt/tau = {scale:g}; both must be in (0, 1] (give the file's time step "
                         "with --dt: snnTorch writes dt = 1e-4)")
    return NeuronParams(decay=decay, input_scale=scale)


def _read_lif(name, n, where, dt: float = 1.0, strict: bool = False) -> Node:
    shape = _neuron_shape(n)
    _zero_reset_leak(n, shape, "LIF")
    tau = _uniform(_neuron_array(n.tau, shape, "tau"), "LIF tau")
    r = _uniform(_neuron_array(n.r, shape, "r"), "LIF r")
    return IFNeurons(name, _threshold(n, shape, strict), _lif_params(tau, r, dt, "LIF"))


def _read_cuba_lif(name, n, where, dt: float = 1.0, strict: bool = False) -> Node:
    """A CubaLIF without synaptic memory (``tau_syn = dt``: the current is ``w_in`` times the input) is an
    LIF with ``r * w_in``; with ``tau_syn != dt`` its current decays, which the IR's neuron has no state for."""
    shape = _neuron_shape(n)
    _zero_reset_leak(n, shape, "CubaLIF")
    tau_syn = _uniform(_neuron_array(n.tau_syn, shape, "tau_syn"), "CubaLIF tau_syn")
    if abs(tau_syn - dt) > 1e-6 * dt:
        raise GraphError(f"CubaLIF with tau_syn = {tau_syn:g} != dt = {dt:g} (a decaying synaptic current) has no "
                         "sdm mapping; only tau_syn = dt (no synaptic memory) maps, to LIF")
    tau = _uniform(_neuron_array(n.tau_mem, shape, "tau_mem"), "CubaLIF tau_mem")
    r = _uniform(_neuron_array(n.r, shape, "r") * _neuron_array(n.w_in, shape, "w_in"), "CubaLIF r * w_in")
    return IFNeurons(name, _threshold(n, shape, strict), _lif_params(tau, r, dt, "CubaLIF"))


def _io_or(n, default) -> tuple[int, int, int]:
    """The (C, H, W) input type the shape pass set on a foreign node; ``default`` for sdm's own nodes."""
    t = n.input_type.get("input") if isinstance(n.input_type, dict) else None
    return tuple(int(v) for v in np.atleast_1d(t)) if t is not None and np.size(t) == 3 else default


def _diagonal_conv(name, gain: np.ndarray, shape, kernel=(1, 1), stride: int = 1, padding: int = 0) -> Conv:
    """A conv that maps each channel to itself, ``gain[c]`` on every tap of a ``kernel`` window (pools, scales)."""
    c = shape[0]
    weight = np.zeros((c, c, *kernel), dtype=np.float64)
    weight[np.arange(c), np.arange(c)] = np.asarray(gain, dtype=np.float64).reshape(c, 1, 1)
    return Conv(name, weight, np.zeros(c), stride, padding, shape)


def _read_scale(name, n, where) -> Node:
    """A unit Scale is a junction (sdm's earlier files, and other tools' identities); a per-channel scale is
    a diagonal 1x1 conv."""
    shape = _io_or(n, tuple(int(v) for v in _arr(n.scale).shape))
    scale = _neuron_array(n.scale, shape, "scale")
    if np.all(scale == 1):
        return Junction(name, shape)
    if not np.all(scale == scale[:, :1, :1]):
        raise NIRFormatError(f"{where}: only a Scale that is constant over H and W (one value per channel) is "
                             "supported")
    return _diagonal_conv(name, scale[:, 0, 0], shape)


def _read_affine(name, n, where) -> Node:
    """``W x + b`` on the (C, H, W) input (flattened in C, H, W order): a conv whose kernel covers the input,
    output (C_out, 1, 1).  ``Linear``: no bias."""
    weight = _arr(n.weight)
    shape = _io_or(n, (weight.shape[1], 1, 1) if weight.ndim == 2 else (0, 0, 0))
    if weight.ndim != 2 or weight.shape[1] != int(np.prod(shape)):
        raise NIRFormatError(f"{where}: weight {list(weight.shape)} does not fit the input {list(shape)}")
    bias = _arr(n.bias) if hasattr(n, "bias") else np.zeros(weight.shape[0], dtype=weight.dtype)
    return Conv(name, weight.reshape(weight.shape[0], *shape), bias, 1, 0, shape)


def _read_pool(name, n, where) -> Node:
    """SumPool2d / AvgPool2d: a diagonal conv with a window of ones (or of ``1 / window size``)."""
    import nir

    from .nir_foreign import padding_pairs

    shape = _io_or(n, None)
    kernel = tuple(int(v) for v in np.broadcast_to(_arr(n.kernel_size), (2,)))
    stride = _pad(n.stride, where, "stride")
    padding = _pad(padding_pairs(n.padding, kernel, (stride, stride), where), where, "padding")
    gain = 1.0 / (kernel[0] * kernel[1]) if isinstance(n, nir.AvgPool2d) else 1.0
    return _diagonal_conv(name, np.full(shape[0], gain), shape, kernel, stride, padding)


def _read_conv1d(name, n, where) -> Node:
    """Conv1d on (C, L) is a conv with a (1, k) kernel on (C, 1, L); the IR pads both axes alike, so only
    padding 0 maps."""
    weight = _arr(n.weight)
    if weight.ndim != 3 or np.any(_arr(n.dilation) != 1) or np.any(_arr(n.groups) != 1) \
            or np.any(_arr(n.padding) != 0):
        raise NIRFormatError(f"{where}: only Conv1d with padding 0, dilation 1 and groups 1 is supported")
    shape = _io_or(n, (weight.shape[1], 1, int(np.asarray(n.input_shape))))
    return Conv(name, weight[:, :, None, :], _arr(n.bias), _pad(n.stride, where, "stride"), 0, shape)


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


def _readers(dt: float, strict: bool) -> dict:
    import nir

    timed = {nir.IF: _read_if, nir.LIF: _read_lif, nir.CubaLIF: _read_cuba_lif}
    return {nir.NIRGraph: _read_extension, nir.Input: _read_input, nir.Output: _read_output, nir.Conv2d: _read_conv,
            nir.Scale: _read_scale, nir.Affine: _read_affine, nir.Linear: _read_affine, nir.SumPool2d: _read_pool,
            nir.AvgPool2d: _read_pool, nir.Conv1d: _read_conv1d,
            **{t: partial(f, dt=dt, strict=strict) for t, f in timed.items()}}


# NIR node types with no IR equivalent, and why (one line each)
REFUSED = {
    "LI": "a leaky integrator without spikes (an analog state) has no IR node",
    "CubaLI": "a leaky integrator without spikes (an analog state) has no IR node",
    "I": "an integrator without spikes (an analog state) has no IR node",
    "Delay": "edges have no delays in the IR (every node passes its value on within the step)",
    "Threshold": "a stateless threshold has no IR node (IR neurons keep their membrane)",
    "Flatten": "Flatten is supported only in front of Affine / Linear nodes",
}


def _node_from_nir(name: str, n, path, dt: float = 1.0, strict: bool = False) -> Node:
    where = f"{path}: node {name!r}"
    reader = _readers(dt, strict).get(type(n))
    if reader is None:
        why = REFUSED.get(type(n).__name__, "it is not supported by sdm")
        raise NIRFormatError(f"{where}: NIR node type {type(n).__name__} has no sdm mapping: {why}")
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


def _unguarded(ng, path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The file's node names and edges without the host guard (:func:`_host_guard`): its input feeds its
    readers again, in the same place of the edge list."""
    edges = [(_text(s), _text(d)) for s, d in ng.edges]
    guard = ng.nodes.get(HOST_GUARD)
    if guard is None or "sdm.format" not in ng.metadata:
        return list(ng.nodes), edges
    meta = getattr(guard, "metadata", {})
    source = _text(meta.get("input", ""))
    if _text(meta.get("sdm.guard", "")) != "host_inputs" or source not in ng.nodes or (source, HOST_GUARD) not in edges:
        raise NIRFormatError(f"{path}: node {HOST_GUARD!r}: malformed host-input guard")
    edges = [(source if s == HOST_GUARD else s, d) for s, d in edges if (s, d) != (source, HOST_GUARD)]
    return [n for n in ng.nodes if n != HOST_GUARD], edges


def _junction_records(records, path: Path) -> dict[str, tuple[str, list[str], int, dict]]:
    """The ``sdm.junctions`` metadata: junction -> (input, readers, edge position, metadata)."""
    where = f"{path}: sdm.junctions"
    if not isinstance(records, dict):
        raise NIRFormatError(f"{where} must be a group of junction records")
    out = {}
    for j, r in records.items():
        what = f"junction {j!r}"
        try:
            out[j] = (_text(_get(r, "input", what)), _text(_get(r, "readers", what)).split(","),
                      _int(_get(r, "edge", what), f"{what} edge"), r)
        except GraphError as e:
            raise NIRFormatError(f"{where}: {e}") from None
    return out


def _restore_junctions(nodes: dict[str, Node], edges: list[tuple[str, str]], records, path: Path):
    """Put back the single-input junctions the writer left out of the file (:class:`_FilePlan`): each one's
    input feeds it, it feeds its readers, its input edge at the position recorded; as a node it goes where
    ``nir.read`` would have put it (HDF5 lists a group's members by name)."""
    if records is None:
        return nodes, edges
    rec = _junction_records(records, path)

    def resolve(j: str, depth: int = 0) -> str:
        if depth > len(rec):
            raise NIRFormatError(f"{path}: sdm.junctions: junction {j!r}: its inputs form a cycle")
        return resolve(rec[j][0], depth + 1) if j in rec else j

    owner = {}
    for j, (inp, readers, _, _) in rec.items():
        bad = [n for n in (inp, *readers) if n not in nodes and n not in rec]
        if j in nodes or bad:
            raise NIRFormatError(f"{path}: sdm.junctions: junction {j!r} " +
                                 (f"names unknown node {bad[0]!r}" if bad else "is also a node of the file"))
        owner.update({(resolve(j), d): j for d in readers if d not in rec})
    missing = sorted(set(owner) - set(edges))
    if missing:
        raise NIRFormatError(f"{path}: sdm.junctions: junction {owner[missing[0]]!r}: the file has no edge "
                             f"{missing[0][0]} -> {missing[0][1]}")
    edges = [(owner.get(e, e[0]), e[1]) for e in edges]
    for j, (inp, _, k, _) in sorted(rec.items(), key=lambda kv: kv[1][2]):
        edges.insert(k, (inp, j))
    order = list(nodes)
    order = sorted(order + list(rec)) if order == sorted(order) else order + list(rec)
    return {n: nodes[n] if n in nodes else Junction(n, nodes[resolve(n)].shape, origin=_origin(rec[n][3]))
            for n in order}, edges


def _time_step(meta: dict, dt, where) -> float:
    """The NIR time unit of one step: the file's metadata ``dt`` if it has one, else ``dt`` (default 1)."""
    given = None
    if dt is not None:
        if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not np.isfinite(dt) or not dt > 0:
            raise NIRFormatError(f"{where}: dt must be a positive number, got {dt!r}")
        given = float(dt)
    if "dt" not in meta:
        return 1.0 if given is None else given
    try:
        step = _float(meta["dt"], "the graph metadata dt")
    except GraphError as e:
        raise NIRFormatError(f"{where}: {e}") from None
    if not (np.isfinite(step) and step > 0):
        raise NIRFormatError(f"{where}: the graph metadata dt must be a positive number, got {step!r}")
    if given is not None and given != step:
        raise NIRFormatError(f"{where}: the file's metadata says dt = {step:g}, but dt = {given:g} was given")
    return step


def _unique(name: str, taken) -> str:
    out, i = name, 1
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    return out


def _with_junctions(nodes: dict[str, Node], edges: list[tuple[str, str]]):
    """What the Lava builder needs of a foreign graph, put in as junctions (sums of one input, exact): one in
    front of the Output, and one after every conv that a conv, a TSM gain or an upsampling reads (a conv's
    bias is added by the node it feeds)."""
    nodes, edges = dict(nodes), list(edges)
    fed = [s for s in nodes if isinstance(nodes[s], Conv) and any(
        isinstance(nodes[d], (Conv, TemporalAffine, Upsample)) for x, d in edges if x == s)]
    for c in fed:
        j = _unique(f"{c}.out", nodes)
        nodes[j] = Junction(j, nodes[c].shape)
        edges = [(j if s == c else s, d) for s, d in edges] + [(c, j)]
    for o in [n for n, v in nodes.items() if isinstance(v, Output)]:
        preds = [s for s, d in edges if d == o]
        if len(preds) == 1 and isinstance(nodes[preds[0]], Junction):
            continue
        j = _unique(f"{o}.in", nodes)
        nodes[j] = Junction(j, nodes[o].shape)
        edges = [(s, j if d == o else d) for s, d in edges] + [(j, o)]
    return nodes, edges


def _foreign_nodes(ng, where, dt: float):
    """IR nodes and edges of a graph another tool wrote (:mod:`.nir_foreign` first)."""
    from .nir_foreign import canonical

    try:
        nir_nodes, edges = canonical(ng)
    except GraphError as e:
        raise NIRFormatError(f"{where}: {_one_line(e, 300)}") from None
    nodes = {name: _node_from_nir(name, n, where, dt, strict=True) for name, n in nir_nodes.items()}
    try:
        return _with_junctions(nodes, edges)
    except SDMError as e:
        raise NIRFormatError(f"{where}: {_one_line(e, 300)}") from None


def _graph_from_nir(ng, path, require_host: bool, dt) -> SNNGraph:
    meta = ng.metadata
    if _text(meta.get("sdm.format", "")) == SD_FORMAT:
        raise NIRFormatError(f"{path}: a Spiking-Diffusion file (sdid, decoder and encoder graphs), not a UNet "
                             "denoiser; sdm import-nir, simulate and energy read it as such")
    _check_version(meta, path, require_host)
    step = _time_step(meta, dt, path)
    if "sdm.format" in meta:
        names, edges = _unguarded(ng, path)
        nodes = {name: _node_from_nir(name, ng.nodes[name], path, step) for name in names}
    else:
        nodes, edges = _foreign_nodes(ng, path, step)
    _legacy_origins(nodes)
    try:
        nodes, edges = _restore_junctions(nodes, edges, meta.get("sdm.junctions"), path)
        host = _host_from_metadata(meta) if "host" in meta else None
        return SNNGraph(nodes, edges, host)
    except NIRFormatError:
        raise
    except SDMError as e:
        raise NIRFormatError(f"{path}: {_one_line(e, 300)}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise NIRFormatError(f"{path}: malformed host-side metadata ({type(e).__name__}: {_one_line(e)})") from None


def read_nir(path: str | os.PathLike, require_host: bool = True, dt: float | None = None) -> SNNGraph:
    """Read a NIR file of the supported node types into the IR, validated before anything runs.

    Running denoising needs the host-side metadata that :func:`write_nir` stores; with
    ``require_host=False`` plain spiking networks (from this or another tool) load too.  Files of other
    tools go through :func:`~sdm.export.nir_foreign.canonical` (batch dimensions, scalar parameters,
    subgraphs, Flatten); ``dt`` is the NIR time of one step when the file does not say (metadata ``dt``;
    default 1): continuous-time LIF parameters are discretised with it (docs/nir-format.md §11).  Every
    problem is a one-line :class:`NIRFormatError` naming the file and the node or field: field
    types in the HDF5 layout, the nodes' own checks (shapes, finite values, parameters), the host
    records and :meth:`SNNGraph.validate` (edges, shapes, host against graph)."""
    path = Path(path)
    return _graph_from_nir(load_nir(path), path, require_host, dt)


def graph_from_nir(ng, dt: float | None = None, name: str = "<NIR graph>") -> SNNGraph:
    """The IR of an in-memory ``nir.NIRGraph``, read as :func:`read_nir` reads a file (no host section
    required): for graphs an exporter returns that ``nir.write`` cannot store (norse's ``to_nir`` of a
    conv network: torch tensors, no ``input_shape``).  Errors name ``name`` where a file's would name it."""
    return _graph_from_nir(ng, name, False, dt)
