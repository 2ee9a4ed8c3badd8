"""Foreign NIR graphs (snnTorch, norse, nirtorch, ...) in the form the sdm reader reads (docs/nir-format.md §11).

Other exporters write valid NIR that leaves things to the reader: nested subgraphs, a leading batch
dimension of 1 in ``Input``/``Output`` types (nirtorch's tracer keeps it), ``Conv2d`` without
``input_shape`` (norse), scalar neuron parameters, ``Flatten`` in front of ``Affine``.  :func:`canonical`
turns such a graph into the nodes and edges the per-node readers of :mod:`.nir_format` take:

* nested ``NIRGraph`` s without ``sdm.extension`` are flattened: inner node ``n`` of subgraph ``g`` is
  ``g.n``; the subgraph's ``Input`` / ``Output`` nodes become plain edges;
* every node's ``input_type`` / ``output_type`` is set to its shape as the IR holds it, ``(C, H, W)``:
  a 1-D shape ``(N,)`` is ``(N, 1, 1)`` and a 2-D ``(C, L)`` is ``(C, 1, L)``; shapes come from the
  graph's ``Input`` types forward through the nodes (a batch dimension of 1 is dropped); a
  ``Conv2d``'s missing ``input_shape`` and a ``'same'`` / ``'valid'`` padding are filled in;
* ``Flatten`` is removed where only ``Affine`` / ``Linear`` nodes read it (they then read the
  unflattened ``(C, H, W)`` input, flattened in C, H, W order as ``torch.flatten``); elsewhere it is refused.

Every problem is a :class:`~sdm.errors.GraphError` ``node 'x': ...``; the reader adds the file.
"""

from __future__ import annotations

import numpy as np

from sdm.errors import GraphError

Shape = tuple[int, ...]


def _fail(name: str, detail: str):
    raise GraphError(f"node {name!r}: {detail}")


def _type_name(n) -> str:
    return type(n).__name__


# ----- nested subgraphs ----------------------------------------------------------------------
def flatten_subgraphs(nodes: dict, edges: list[tuple[str, str]]) -> tuple[dict, list[tuple[str, str]]]:
    """Inline every nested ``NIRGraph`` that is not an sdm extension (recursively)."""
    import nir

    nested = [k for k, n in nodes.items() if isinstance(n, nir.NIRGraph) and "sdm.extension" not in n.metadata]
    if not nested:
        return nodes, edges
    nodes, edges = dict(nodes), list(edges)
    for g in nested:
        sub = nodes.pop(g)
        inner, inner_edges = flatten_subgraphs(sub.nodes, [(str(s), str(d)) for s, d in sub.edges])
        ins = [k for k, n in inner.items() if isinstance(n, nir.Input)]
        outs = [k for k, n in inner.items() if isinstance(n, nir.Output)]
        into = {k: [d for s, d in inner_edges if s == k] for k in ins}
        out_of = {k: [s for s, d in inner_edges if d == k] for k in outs}
        new_edges = [(f"{g}.{s}", f"{g}.{d}") for s, d in inner_edges if s not in ins and d not in outs]
        for s, d in edges:
            if d == g or d.startswith(g + ".") and d[len(g) + 1:] in ins:
                port = ins[0] if d == g else d[len(g) + 1:]
                if d == g and len(ins) != 1:
                    _fail(g, f"an edge into a subgraph with {len(ins)} inputs must name one of them")
                new_edges += [(s, f"{g}.{t}") for t in into[port]]
            elif s == g or s.startswith(g + ".") and s[len(g) + 1:] in outs:
                port = outs[0] if s == g else s[len(g) + 1:]
                if s == g and len(outs) != 1:
                    _fail(g, f"an edge out of a subgraph with {len(outs)} outputs must name one of them")
                new_edges += [(f"{g}.{t}", d) for t in out_of[port]]
            else:
                new_edges.append((s, d))
        nodes.update({f"{g}.{k}": n for k, n in inner.items() if k not in ins and k not in outs})
        edges = new_edges
    return nodes, edges


# ----- shapes --------------------------------------------------------------------------------
def ir_shape(shape: Shape, name: str) -> tuple[int, int, int]:
    """A batch-free NIR shape as the IR's (C, H, W): (N,) -> (N, 1, 1), (C, L) -> (C, 1, L)."""
    shape = tuple(int(v) for v in shape)
    if len(shape) == 1:
        return (shape[0], 1, 1)
    if len(shape) == 2:
        return (shape[0], 1, shape[1])
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    _fail(name, f"a shape of {len(shape)} dimensions ({list(shape)}) has no (C, H, W) form")


def padding_pairs(padding, kernel: Shape, stride: Shape, name: str) -> tuple[int, ...]:
    """A conv's or pool's padding per spatial axis; ``'valid'`` is 0, ``'same'`` (stride 1, odd kernel)
    is ``(k - 1) // 2``."""
    if isinstance(padding, (str, bytes)):
        text = padding.decode() if isinstance(padding, bytes) else padding
        if text == "valid":
            return tuple(0 for _ in kernel)
        if text == "same" and all(s == 1 for s in stride) and all(k % 2 == 1 for k in kernel):
            return tuple((k - 1) // 2 for k in kernel)
        _fail(name, f"padding {text!r} is supported only as 'valid' or as 'same' with stride 1 and odd kernels")
    p = np.atleast_1d(np.asarray(padding)).astype(np.int64)
    return tuple(int(p[0]) for _ in kernel) if p.size == 1 else tuple(int(v) for v in p)


def _pairs(v, n: int) -> tuple[int, ...]:
    a = np.atleast_1d(np.asarray(v)).astype(np.int64)
    return tuple(int(a[0]) for _ in range(n)) if a.size == 1 else tuple(int(x) for x in a)


def _window_out(size: Shape, kernel: Shape, stride: Shape, pad: Shape, dilation: Shape) -> tuple[int, ...]:
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(size, kernel, stride, pad, dilation))


def _conv_out(name: str, n, shape: Shape) -> Shape:
    weight = np.asarray(n.weight)
    spatial = weight.shape[2:]
    if len(shape) != 1 + len(spatial) or shape[0] != weight.shape[1] * int(np.asarray(n.groups).flat[0] or 1):
        _fail(name, f"{_type_name(n)} with weight {list(weight.shape)} cannot read an input of shape {list(shape)}")
    stride, dilation = _pairs(n.stride, len(spatial)), _pairs(n.dilation, len(spatial))
    n.padding = padding_pairs(n.padding, spatial, stride, name)
    out = _window_out(shape[1:], spatial, stride, n.padding, dilation)
    if min(out) < 1:
        _fail(name, f"kernel {list(spatial)} does not fit the input {list(shape)}")
    if n.input_shape is None:
        n.input_shape = np.array(shape[1:] if len(spatial) > 1 else shape[1])
    elif tuple(np.atleast_1d(np.asarray(n.input_shape))) != tuple(shape[1:]):
        _fail(name, f"input_shape {list(np.atleast_1d(n.input_shape))} differs from its input {list(shape[1:])}")
    return (weight.shape[0], *out)


def _pool_out(name: str, n, shape: Shape) -> Shape:
    if len(shape) != 3:
        _fail(name, f"{_type_name(n)} needs a (C, H, W) input, got {list(shape)}")
    kernel = _pairs(n.kernel_size, 2)
    stride = _pairs(n.stride, 2)
    out = _window_out(shape[1:], kernel, stride, padding_pairs(n.padding, kernel, stride, name), (1, 1))
    if min(out) < 1:
        _fail(name, f"pool window {list(kernel)} does not fit the input {list(shape)}")
    return (shape[0], *out)


def _affine_out(name: str, n, shape: Shape) -> Shape:
    weight = np.asarray(n.weight)
    if weight.ndim != 2 or int(np.prod(shape)) != weight.shape[1]:
        _fail(name, f"{_type_name(n)} with weight {list(weight.shape)} cannot read an input of shape {list(shape)}")
    return (weight.shape[0],)


def _flatten_out(name: str, n, shape: Shape) -> Shape:
    return (int(np.prod(shape)),)


def _out_shapes() -> dict:
    import nir

    return {nir.Conv2d: _conv_out, nir.Conv1d: _conv_out, nir.SumPool2d: _pool_out, nir.AvgPool2d: _pool_out,
            nir.Affine: _affine_out, nir.Linear: _affine_out, nir.Flatten: _flatten_out}


def _declared(n, key: str):
    types = n.input_type if key == "input" else n.output_type
    value = types.get(key) if isinstance(types, dict) else None
    return None if value is None else tuple(int(v) for v in np.atleast_1d(np.asarray(value)))


def _expected_rank(n) -> int | None:
    """The number of batch-free dimensions node ``n`` expects of its input, where its fields fix it."""
    import nir

    if isinstance(n, (nir.Conv2d, nir.SumPool2d, nir.AvgPool2d)):
        return 3
    if isinstance(n, nir.Conv1d):
        return 2
    if isinstance(n, (nir.Affine, nir.Linear)):
        return 1
    for field in ("v_threshold", "r", "scale", "tau"):
        a = np.asarray(getattr(n, field, np.zeros(())))
        if a.ndim > 0 and a.size > 1:
            return a.ndim
    return None


def _input_shape(name: str, n, readers: list) -> Shape:
    """An ``Input``'s batch-free shape: its type, less a leading 1 when its readers expect one dimension
    fewer (or when it has four)."""
    shape = _declared(n, "input") or _declared(n, "output")
    if shape is None:
        _fail(name, "Input without a type")
    ranks = {r for r in map(_expected_rank, readers) if r is not None}
    if shape[0] == 1 and (len(shape) == 4 or (len(ranks) == 1 and len(shape) == ranks.pop() + 1)):
        shape = shape[1:]
    return shape


def infer_shapes(nodes: dict, edges: list[tuple[str, str]]) -> dict[str, Shape]:
    """Each node's batch-free output shape (in NIR's own rank), from the Inputs forward."""
    import nir

    preds = {k: [s for s, d in edges if d == k] for k in nodes}
    succs = {k: [d for s, d in edges if s == k] for k in nodes}
    rules, shapes, order = _out_shapes(), {}, _topological(nodes, edges)
    for k in order:
        n = nodes[k]
        if isinstance(n, nir.Input):
            shapes[k] = _input_shape(k, n, [nodes[d] for d in succs[k]])
            continue
        ins = {shapes[p] for p in preds[k]}
        if not ins:
            _fail(k, f"{_type_name(n)} has no input edges")
        if len({ir_shape(s, k) for s in ins}) != 1:
            _fail(k, f"its inputs have different shapes {sorted(map(list, ins))}")
        shape = max(ins, key=len)
        rule = rules.get(type(n))
        shapes[k] = rule(k, n, shape) if rule is not None else shape
        if isinstance(n, nir.Output):
            declared = _declared(n, "output")
            if declared is not None and declared not in (shape, (1, *shape)) and \
                    ir_shape(declared, k) != ir_shape(shape, k):
                _fail(k, f"Output type {list(declared)} differs from its input {list(shape)}")
    return shapes


def _topological(nodes: dict, edges: list[tuple[str, str]]) -> list[str]:
    for s, d in edges:
        for end in (s, d):
            if end not in nodes:
                raise GraphError(f"edge ({s} -> {d}) names unknown node {end!r}")
    indeg = {k: 0 for k in nodes}
    for _, d in edges:
        indeg[d] += 1
    ready, order = [k for k in nodes if indeg[k] == 0], []
    while ready:
        k = ready.pop(0)
        order.append(k)
        for s, d in edges:
            if s == k:
                indeg[d] -= 1
                if indeg[d] == 0:
                    ready.append(d)
    if len(order) != len(nodes):
        cyclic = next(k for k in nodes if k not in order)
        _fail(cyclic, "the graph has a cycle through this node (recurrent networks are not supported)")
    return order


# ----- Flatten --------------------------------------------------------------------------------
def remove_flatten(nodes: dict, edges: list[tuple[str, str]], shapes: dict[str, Shape]):
    """Remove every ``Flatten`` read only by ``Affine`` / ``Linear`` nodes: they read its input instead."""
    import nir

    for k in [k for k, n in nodes.items() if isinstance(n, nir.Flatten)]:
        readers = [d for s, d in edges if s == k]
        if not readers or not all(isinstance(nodes[d], (nir.Affine, nir.Linear)) for d in readers):
            bad = next((d for d in readers if not isinstance(nodes[d], (nir.Affine, nir.Linear))), None)
            _fail(k, "Flatten is supported only in front of Affine / Linear nodes" +
                  (f" (node {bad!r} is a {_type_name(nodes[bad])})" if bad else ""))
        sources = [s for s, d in edges if d == k]
        edges = [e for e in edges if k not in e] + [(s, d) for d in readers for s in sources]
        shapes = {**shapes, k: shapes[sources[0]]}
        del nodes[k]
    return nodes, edges, shapes


# ----- all of it ------------------------------------------------------------------------------
def canonical(ng) -> tuple[dict, list[tuple[str, str]]]:
    """The nodes and edges of a foreign NIR graph in the reader's form (module docstring)."""
    import nir

    nodes = {str(k): n for k, n in ng.nodes.items()}
    for k, n in nodes.items():
        if not isinstance(n, nir.NIRNode):
            _fail(k, f"is {type(n).__name__}, not a NIR node (an exporter left it unmapped)")
    nodes, edges = flatten_subgraphs(nodes, [(str(s), str(d)) for s, d in ng.edges])
    edges = list(dict.fromkeys(e for e in edges if e[0] != e[1]))  # nirtorch's tracer may add self-edges
    nodes, edges, shapes = remove_flatten(nodes, edges, infer_shapes(nodes, edges))
    preds = {k: [s for s, d in edges if d == k] for k in nodes}
    for k, n in nodes.items():
        out = ir_shape(shapes[k], k)
        into = ir_shape(shapes[preds[k][0]], k) if preds[k] else out
        n.input_type = {"input": np.array(into)}
        n.output_type = {"output": np.array(out)}
    return nodes, edges
