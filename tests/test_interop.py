"""NIR both ways: our files computed by other tools (norse, nirtorch, snnTorch), and their files read by us."""

import logging
import warnings

import nir
import numpy as np
import pytest
import torch

from sdm.export.execute import GraphModule
from sdm.export.ir import Conv, IFNeurons, Junction
from sdm.export.lower import lower_unet
from sdm.export.nir_format import (
    HOST_GUARD,
    NIRFormatError,
    _elidable_junctions,
    _expanded_edges,
    file_counts,
    file_counts_in,
    graph_from_nir,
    read_nir,
    to_nir,
    write_nir,
)
from sdm.testing.spiking_cnn import CNNConfig, SpikingCNN, lower_spiking_cnn
from sdm.testing.weights import randomise
from sdm.train.unet import SpikingUNet, UNetConfig

T = 8


@pytest.fixture(autouse=True)
def _quiet():
    """norse and nirtorch warn about deprecations and parameters they drop; the tests check the numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        yield
        logging.disable(logging.NOTSET)


def _cnn(residual: bool, seed: int = 0):
    torch.manual_seed(seed)
    cfg = CNNConfig(img_size=16, channels=(8, 8, 8) if residual else (8, 8, 16), residual=residual, T=T)
    return randomise(SpikingCNN(cfg))


def _norse_run(ng, x: torch.Tensor, steps: int):
    """norse's own executor of a NIR graph (dt = 1: one NIR time unit is one step), with the spikes of
    every IF cell recorded: (output [steps, ...], {cell name: spikes [steps, ...]})."""
    import norse.torch as norse

    module = norse.from_nir(ng, dt=1.0)
    spikes: dict[str, list[torch.Tensor]] = {}
    for name, cell in module.named_modules():
        if isinstance(cell, norse.IAFCell):
            cell.register_forward_hook(lambda m, i, o, name=name: spikes.setdefault(name, []).append(o[0]))
    state, outs = None, []
    with torch.no_grad():
        for _ in range(steps):
            out, state = module(x, state)
            outs.append(out)
    return torch.stack(outs), {k: torch.stack(v) for k, v in spikes.items()}


@pytest.mark.parametrize("residual", [True, False])
def test_norse_computes_our_standard_node_files(tmp_path, residual):
    """norse reproduces every spike and the output of an exported network: residual fan-in sums included
    (the kept junction is an identity conv, which norse sums; a unit Scale it dropped silently)."""
    model = _cnn(residual)
    graph = lower_spiking_cnn(model)
    write_nir(graph, tmp_path / "cnn.nir")
    ng = nir.read(tmp_path / "cnn.nir")
    assert {type(n).__name__ for n in ng.nodes.values()} == {"Input", "Conv2d", "IF", "Output"}
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ours = GraphModule(read_nir(tmp_path / "cnn.nir", require_host=False), T=T)
    ours.record = True
    out = ours.run({"x": x})
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=0, atol=1e-5)
    theirs, spikes = _norse_run(ng, x, T)
    assert {k.replace("_", ".") for k in spikes} == set(ours.spikes)
    for name, s in spikes.items():
        mine = ours.spikes[name.replace("_", ".")]
        assert int((s != mine).sum()) == 0, name
        assert 0 < int(mine.sum()) < mine.numel()  # real activity, not silence
    torch.testing.assert_close(theirs, out, rtol=0, atol=1e-5)
    assert out.abs().max() > 0.5


def _old_layout(graph):
    """The IR the reader rebuilt from files of the earlier writer (unit Scale junctions, the same elision)."""
    elide = _elidable_junctions(graph)
    return sorted(n for n in graph.nodes if n not in elide), _expanded_edges(graph, elide)


UNETS = {"demo": dict(img_ch=1, img_size=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, T=4),
         "no-extension": dict(img_ch=1, img_size=16, ch=8, ch_mult=(1,), num_res_blocks=1, T=2)}


@pytest.mark.parametrize("arch", ["demo", "no-extension", "cnn-residual", "cnn-sequential"])
def test_junction_forms_and_exact_read_back(tmp_path, arch):
    """No single-input junction and no Scale in the file; several-input junctions are identity 1x1 convs; the
    reader rebuilds the IR node for node and edge for edge (same order, origins, junction types)."""
    if arch in UNETS:
        torch.manual_seed(0)
        graph = lower_unet(randomise(SpikingUNet(UNetConfig(**UNETS[arch]))))
    else:
        graph = lower_spiking_cnn(_cnn(arch == "cnn-residual"))
    path = tmp_path / "g.nir"
    write_nir(graph, path)
    ng = nir.read(path)
    assert file_counts(graph) == file_counts_in(path) == (len(ng.nodes), len(ng.edges))
    assert not any(isinstance(n, nir.Scale) for n in ng.nodes.values())
    into = {}
    for s, d in ng.edges:
        into.setdefault(d, []).append(s)
    junctions = [k for k, n in ng.nodes.items() if "sdm.junction" in n.metadata]
    assert all(len(into[j]) > 1 and ng.nodes[j].weight.shape[2:] == (1, 1) for j in junctions)
    back = read_nir(path, require_host=False)
    names, edges = _old_layout(graph)
    assert list(back.nodes) == names and back.edges == edges
    for n in names:
        assert type(back.nodes[n]) is type(graph.nodes[n]) and back.nodes[n].origin == graph.nodes[n].origin, n
    kept = [n for n in names if isinstance(graph.nodes[n], Junction)]
    assert len(kept) == len(junctions) + len(ng.metadata.get("sdm.junctions", {}))


def test_host_inputs_are_guarded(tmp_path):
    """A UNet without extension nodes (ch_mult 1) still needs the host's time-embedding currents: every
    third-party reader fails on the guard node, whose name says why; our reader runs the file exactly."""
    import nirtorch
    import norse.torch as norse
    from snntorch.import_nir import import_from_nir

    from sdm.export.execute import GraphDenoiser
    from sdm.export.verify import compare

    torch.manual_seed(0)
    model = randomise(SpikingUNet(UNetConfig(**UNETS["no-extension"])))
    graph = lower_unet(model, dtype=np.float64)
    assert not any(isinstance(n, nir.NIRGraph) for n in to_nir(lower_spiking_cnn(_cnn(True))).nodes.values())
    write_nir(graph, tmp_path / "u.nir")
    ng = nir.read(tmp_path / "u.nir")
    guards = [k for k, n in ng.nodes.items() if isinstance(n, nir.NIRGraph)]
    assert guards == [HOST_GUARD] and ng.metadata["sdm.extensions"] == ""
    assert [d for s, d in ng.edges if s == "x"] == [HOST_GUARD]  # nothing reads the image but the guard
    readers = {"norse": lambda: norse.from_nir(ng, dt=1.0), "snntorch": lambda: import_from_nir(ng),
               "nirtorch": lambda: nirtorch.nir_to_torch(ng, {nir.IF: lambda n: torch.nn.Identity()})}
    for name, build in readers.items():
        with pytest.raises(ValueError, match="groups must be a positive integer"):
            build()
            pytest.fail(f"{name} built a denoiser file without its host inputs")
    den = GraphDenoiser(read_nir(tmp_path / "u.nir"), torch.float64)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    r = compare(model.double(), den, x, torch.tensor([3, 700]))
    assert r["total_mismatches"] == 0 and r["eps_max_abs_err"] < 1e-9


def _edit_junctions(edit):
    def apply(ng):
        edit(ng.metadata["sdm.junctions"]["stages.1.out"])
    return apply


def _edit_junction_conv(ng):
    ng.nodes["stages.1.out"].weight[0, 0, 0, 0] = 2.0


@pytest.mark.parametrize("residual, edit, words", [
    (False, _edit_junctions(lambda r: r.update(input="nowhere")), "names unknown node 'nowhere'"),
    (False, _edit_junctions(lambda r: r.pop("readers")), "is missing 'readers'"),
    (False, _edit_junctions(lambda r: r.update(readers="stages.0.neuron")), "has no edge"),
    (True, _edit_junction_conv, "node 'stages.1.out': a junction .* identity 1x1 Conv2d"),
], ids=["unknown-input", "no-readers", "wrong-reader", "junction-weight"])
def test_damaged_junction_records_are_one_line_errors(tmp_path, residual, edit, words):
    ng = to_nir(lower_spiking_cnn(_cnn(residual)))
    # sequential: the last stage's output junction has one input and is a record; residual: an identity conv
    assert ("stages.1.out" in ng.nodes) == residual
    edit(ng)
    nir.write(tmp_path / "bad.nir", ng)
    with pytest.raises(NIRFormatError, match=words) as err:
        read_nir(tmp_path / "bad.nir", require_host=False)
    assert str(tmp_path / "bad.nir") in str(err.value) and "\n" not in str(err.value)


# ----- files other tools wrote, read by us ------------------------------------------------------
def _snntorch_net():
    """A convolutional snnTorch network as snnTorch's exporter handles it: per-neuron beta and threshold
    tensors (its exporter fails on scalars) and the zero reset, NIR's LIF reset."""
    import snntorch as snn

    def leaky(shape, beta, out=False):
        return snn.Leaky(beta=torch.full(shape, beta), threshold=torch.full(shape, 1.0), init_hidden=True,
                         reset_mechanism="zero", output=out)

    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), leaky((6, 8, 8), 0.9),
                              torch.nn.Conv2d(6, 8, 3, stride=2, padding=1), leaky((8, 4, 4), 0.8),
                              torch.nn.Flatten(), torch.nn.Linear(128, 10), leaky((10,), 0.95, out=True))
    with torch.no_grad():
        for m in net:
            if hasattr(m, "weight"):
                m.weight.mul_(3.0)
    return net


def snntorch_run(net, x: torch.Tensor, steps: int) -> dict[str, torch.Tensor]:
    """snnTorch's own simulation: the spikes [steps, B, ...] of every Leaky layer (by module name)."""
    import snntorch as snn
    from snntorch import utils

    spikes: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: spikes.setdefault(name, []).append(
        o[0] if isinstance(o, tuple) else o)) for name, m in net.named_modules() if isinstance(m, snn.Leaky)]
    utils.reset(net)
    with torch.no_grad():
        for _ in range(steps):
            net(x)
    for h in hooks:
        h.remove()
    return {k: torch.stack(v) for k, v in spikes.items()}


def snntorch_file(path):
    """A file written by snnTorch's exporter (and nir.write): LIF(tau = dt/(1-beta), r = tau/dt), dt = 1e-4."""
    from snntorch.export_nir import export_to_nir

    net = _snntorch_net()
    nir.write(path, export_to_nir(net, torch.zeros(1, 1, 8, 8), ignore_dims=[0]))
    return net


def _assert_same_spikes(theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> None:
    assert set(theirs) == set(ours)
    for name, s in theirs.items():
        mine = ours[name].reshape(s.shape)
        assert int((s != mine).sum()) == 0, name
        assert 0 < int(s.sum()) < s.numel(), name


def test_snntorch_file_reads_with_its_time_step(tmp_path):
    path = tmp_path / "snntorch.nir"
    net = snntorch_file(path)
    lif = nir.read(path).nodes["1"]
    assert np.allclose(lif.tau, 1e-3) and np.allclose(lif.r, 10)  # snnTorch's convention for beta = 0.9
    with pytest.raises(NIRFormatError, match=r"node '1': LIF with tau = 0\.001.*--dt"):
        read_nir(path, require_host=False)  # dt = 1 makes no discrete neuron of it: one line, naming the node
    graph = read_nir(path, require_host=False, dt=1e-4)
    assert [round(graph.nodes[n].decay, 6) for n in ("1", "3", "6")] == [0.9, 0.8, 0.95]
    assert all(graph.nodes[n].params.input_scale == 1.0 for n in ("1", "3", "6"))  # r dt / tau, float32-rounded
    assert graph.nodes["5"].weight.shape == (10, 8, 4, 4)  # Flatten + Affine: one conv over the whole input
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = GraphModule(graph, T=T)
    ours.record = True
    ours.run({"input": x})
    _assert_same_spikes(snntorch_run(net, x, T), ours.spikes)


def _norse_lif(tau: float, v_th: float):
    import norse.torch as norse

    return norse.LIFBoxCell(norse.LIFBoxParameters(tau_mem_inv=torch.tensor(1.0 / tau), v_th=torch.tensor(v_th)),
                            dt=1.0)


def norse_dense_file(path):
    """A norse network of Linear layers, exported by norse (dt = 1) and written by ``nir.write``: 0-d
    parameters and a batch dimension on Input and Output (uncompressed: HDF5 refuses to compress
    0-d datasets)."""
    import norse.torch as norse

    torch.manual_seed(4)
    net = norse.SequentialState(torch.nn.Linear(16, 12), _norse_lif(4.0, 0.3), torch.nn.Linear(12, 6),
                                norse.IAFCell(norse.IAFParameters(v_th=torch.tensor(0.4))))
    ng = norse.to_nir(net, torch.zeros(1, 16), dt=1.0)
    assert np.asarray(ng.nodes["1"].tau).shape == () and list(ng.nodes["input"].input_type["input"]) == [1, 16]
    nir.write(path, ng, compression=None)
    return net


def norse_run(net, x: torch.Tensor, steps: int) -> dict[str, torch.Tensor]:
    """norse's own simulation of ``net``: the spikes [steps, B, ...] of its LIFBox and IAF cells."""
    import norse.torch as norse

    spikes: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: spikes.setdefault(name, []).append(o[0]))
             for name, m in net.named_modules() if isinstance(m, (norse.LIFBoxCell, norse.IAFCell))]
    state = None
    with torch.no_grad():
        for _ in range(steps):
            _, state = net(x, state)
    for h in hooks:
        h.remove()
    return {k: torch.stack(v) for k, v in spikes.items()}


def test_norse_file_and_graph_read(tmp_path):
    """norse's LIFBox (v += dt/tau (u - v), r = 1) is NIR's LIF: decay 1 - dt/tau and input scale dt/tau."""
    import norse.torch as norse

    net = norse_dense_file(tmp_path / "norse.nir")
    graph = read_nir(tmp_path / "norse.nir", require_host=False)
    assert (graph.nodes["1"].decay, graph.nodes["1"].params.input_scale) == (0.75, 0.25)
    assert graph.nodes["input"].shape == (16, 1, 1)  # batch dimension dropped, 1-D as (N, 1, 1)
    x = torch.rand(3, 16, generator=torch.Generator().manual_seed(5)) * 2
    ours = GraphModule(graph, T=T)
    ours.record = True
    ours.run({"input": x.reshape(3, 16, 1, 1)})
    _assert_same_spikes(norse_run(net, x, T), ours.spikes)
    # a conv network: nir.write cannot store norse's graph (Conv2d input_shape None), the API reads it
    torch.manual_seed(6)
    conv = norse.SequentialState(torch.nn.Conv2d(1, 6, 3, padding=1), _norse_lif(4.0, 0.3),
                                 torch.nn.Conv2d(6, 8, 3, stride=2),
                                 norse.IAFCell(norse.IAFParameters(v_th=torch.tensor(0.5))))
    graph = graph_from_nir(norse.to_nir(conv, torch.zeros(1, 1, 8, 8), dt=1.0))
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(7)) * 2
    ours = GraphModule(graph, T=T)
    ours.record = True
    ours.run({"input": x})
    _assert_same_spikes(norse_run(conv, x, T), ours.spikes)


def _plain(nodes: dict, edges: list, **meta):
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)


def test_standard_nodes_map_or_are_refused_in_one_line(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    one = np.ones((4, 6, 6), dtype=np.float32)
    sub = nir.NIRGraph(nodes={"i": nir.Input(np.array([4, 6, 6])), "n": nir.IF(r=one, v_threshold=one),
                              "o": nir.Output(np.array([4, 6, 6]))}, edges=[("i", "n"), ("n", "o")])
    nodes = {"in": nir.Input(np.array([2, 6, 6])),
             "c": nir.Conv2d((6, 6), w, 1, "same", 1, 1, np.zeros(4, dtype=np.float32)),
             "sub": sub, "pool": nir.SumPool2d(np.array([2, 2]), np.array([2, 2]), np.array([0, 0])),
             "s": nir.Scale(np.array([1.0, 2.0, 3.0, 4.0])), "out": nir.Output(np.array([4, 3, 3]))}
    ng = _plain(nodes, [("in", "c"), ("c", "sub"), ("sub", "pool"), ("pool", "s"), ("s", "out")])
    nir.write(tmp_path / "ok.nir", ng)
    assert read_nir(tmp_path / "ok.nir", require_host=False).nodes["c"].padding == 1  # 'same' from a file too
    g = graph_from_nir(ng)
    assert isinstance(g.nodes["sub.n"], IFNeurons) and g.nodes["c"].padding == 1  # subgraph inlined, 'same'
    assert isinstance(g.nodes["pool"], Conv) and isinstance(g.nodes["s"], Conv)  # window of ones, diagonal
    assert g.predecessors("s") == ["pool.out"] and g.predecessors("out") == ["out.in"]  # junctions for Lava
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64) * 3
    y = GraphModule(g, T=1, dtype=torch.float64).run({"in": x})[0]
    s = (torch.nn.functional.conv2d(x, torch.from_numpy(w).double(), padding=1) >= 1).double()
    want = torch.nn.functional.avg_pool2d(s, 2) * 4 * torch.arange(1.0, 5.0).view(1, 4, 1, 1).double()
    torch.testing.assert_close(y, want)
    for kind, node in [("LI", nir.LI(one, one, 0 * one)), ("Delay", nir.Delay(one)), ("I", nir.I(one)),
                       ("Threshold", nir.Threshold(one)),
                       ("CubaLIF", nir.CubaLIF(tau_syn=2 * one, tau_mem=4 * one, r=one, v_leak=0 * one,
                                               v_threshold=one))]:
        graph = _plain({"in": nir.Input(np.array([2, 6, 6])), "c": nir.Conv2d((6, 6), w, 1, 1, 1, 1, np.zeros(4)),
                        "x": node, "out": nir.Output(np.array([4, 6, 6]))}, [("in", "c"), ("c", "x"), ("x", "out")])
        nir.write(tmp_path / "g.nir", graph)
        with pytest.raises(NIRFormatError, match=f"node 'x': .*{kind}") as err:
            read_nir(tmp_path / "g.nir", require_host=False)
        assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


# ----- in Lava ------------------------------------------------------------------------------------
def lava_spikes(graph, x: torch.Tensor, mode: str = "floating_pt", build: str = "loihi", varying: bool = False):
    """Spikes [T, B, C, H, W] of every neuron group and the output of ``graph`` run in Lava on ``x [T, B, ...]``."""
    from sdm.export.plain import PlainInput
    from sdm.neuromorphic.builder import fold_input_scale
    from sdm.neuromorphic.plain_run import PlainLavaNetwork, _stages

    inp = PlainInput(x.to(torch.float64), varying)
    g = fold_input_scale(graph)
    with PlainLavaNetwork(g, inp.T, batch=inp.batch, mode=mode, build=build, stages=_stages(g, build, None),
                          varying_input=varying) as net:
        out = net.run_graph(inp.x)
        return {k: torch.from_numpy(v) for k, v in net.last_spikes.items()}, out


def _mismatch_rate(theirs: dict, ours: dict) -> float:
    bad = sum(int((s != ours[k].reshape(s.shape)).sum()) for k, s in theirs.items())
    return bad / sum(s.numel() for s in theirs.values())


@pytest.mark.parametrize("mode, build", [("floating_pt", "loihi"), ("floating_pt", "fused"), ("fixed_pt", "loihi"),
                                         ("fixed_pt", "fused")])
def test_snntorch_file_in_lava(tmp_path, mode, build):
    """A file of snnTorch's exporter, in Lava: floating point reproduces snnTorch's own spikes exactly;
    fixed point (8-bit weights, 24-bit state) stays close."""
    net = snntorch_file(tmp_path / "snn.nir")
    graph = read_nir(tmp_path / "snn.nir", require_host=False, dt=1e-4)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    spikes, _ = lava_spikes(graph, x.unsqueeze(0).expand(T, *x.shape), mode, build)
    rate = _mismatch_rate(snntorch_run(net, x, T), spikes)
    assert rate == 0 if mode == "floating_pt" else rate < 0.03
    assert sum(int(s.sum()) for s in spikes.values()) > 100


def test_norse_file_in_lava_with_a_per_step_input(tmp_path):
    """norse's LIF (input scale 1/tau, folded into the conv for Lava) on an input that changes every step."""
    net = norse_dense_file(tmp_path / "norse.nir")
    graph = read_nir(tmp_path / "norse.nir", require_host=False)
    x = torch.rand(T, 3, 16, generator=torch.Generator().manual_seed(8)) * 2
    theirs = {}
    import norse.torch as norse

    state, cells = None, {n: m for n, m in net.named_modules() if isinstance(m, (norse.LIFBoxCell, norse.IAFCell))}
    for name, cell in cells.items():
        cell.register_forward_hook(lambda m, i, o, name=name: theirs.setdefault(name, []).append(o[0]))
    with torch.no_grad():
        for step in range(T):
            _, state = net(x[step], state)
    theirs = {k: torch.stack(v) for k, v in theirs.items()}
    spikes, out = lava_spikes(graph, x.reshape(T, 3, 16, 1, 1), varying=True)
    assert _mismatch_rate(theirs, spikes) == 0 and sum(int(s.sum()) for s in theirs.values()) > 20
    torch.testing.assert_close(out.reshape(T, 3, 6).float(), theirs["3"], rtol=0, atol=0)  # the output: IF spikes
    from sdm.errors import ConfigError

    with pytest.raises(ConfigError, match="loihi build"):
        lava_spikes(graph, x.reshape(T, 3, 16, 1, 1), build="fused", varying=True)


def _branching_file(path):
    """A graph no sequential converter takes: a nested subgraph, a branch and a fan-in sum, a pool, a
    per-channel Scale, Flatten + Affine; scalar parameters and a batch dimension, as other tools write."""
    rng = np.random.default_rng(1)

    def conv(cin, cout, hw, pad=1):
        return nir.Conv2d(hw, rng.normal(0, 0.6, (cout, cin, 3, 3)).astype(np.float32), 1, pad, 1, 1,
                          rng.normal(0, 0.1, cout).astype(np.float32))

    s = np.float32
    block = nir.NIRGraph(nodes={"in": nir.Input(np.array([6, 8, 8])), "a": conv(6, 6, (8, 8)),
                                "n": nir.IF(r=np.array(s(1)), v_threshold=np.array(s(0.7))), "b": conv(6, 6, (8, 8)),
                                "out": nir.Output(np.array([6, 8, 8]))},
                         edges=[("in", "a"), ("a", "n"), ("n", "b"), ("b", "out")], type_check=False)
    nodes = {"x": nir.Input(np.array([1, 2, 8, 8])), "c0": conv(2, 6, (8, 8)),
             "n0": nir.LIF(tau=np.array(s(5.0)), r=np.array(s(5.0)), v_leak=np.array(s(0)), v_threshold=np.array(s(1))),
             "block": block, "skip": conv(6, 6, (8, 8)),
             "n1": nir.IF(r=np.array(s(1)), v_threshold=np.array(s(1))),
             "pool": nir.SumPool2d(np.array([2, 2]), np.array([2, 2]), np.array([0, 0])),
             "scale": nir.Scale(np.array([0.5, 1.0, 1.5, 2.0, 0.25, 1.0], dtype=s)),
             "n2": nir.IF(r=np.array(s(1)), v_threshold=np.array(s(1.5))),
             "flat": nir.Flatten({"input": np.array([6, 4, 4])}, 0, -1),
             "fc": nir.Affine(rng.normal(0, 0.3, (5, 96)).astype(s), rng.normal(0, 0.1, 5).astype(s)),
             "n3": nir.IF(r=np.array(s(1)), v_threshold=np.array(s(1))), "y": nir.Output(np.array([1, 5]))}
    edges = [("x", "c0"), ("c0", "n0"), ("n0", "block"), ("n0", "skip"), ("block", "n1"), ("skip", "n1"),
             ("n1", "pool"), ("pool", "scale"), ("scale", "n2"), ("n2", "flat"), ("flat", "fc"), ("fc", "n3"),
             ("n3", "y")]
    nir.write(path, nir.NIRGraph(nodes=nodes, edges=edges, type_check=False), compression=None)


@pytest.mark.parametrize("mode, build", [("floating_pt", "loihi"), ("floating_pt", "fused"), ("fixed_pt", "loihi")])
def test_branching_graph_in_lava(tmp_path, mode, build):
    """Branches, a fan-in sum and path lengths that differ (the loihi build's delay lines): Lava against the
    project's executor of the same graph.  The pool sums spikes and the scales are multiples of 1/4, so
    ``n2``'s membranes hit its threshold 1.5 exactly: NIR's ``v > v_threshold`` (Lava's too) must hold
    there, not sdm's ``>=`` (without the reader's strict thresholds 172 spikes of n2 differed)."""
    from sdm.export.plain import PlainInput, reference_run

    _branching_file(tmp_path / "b.nir")
    graph = read_nir(tmp_path / "b.nir", require_host=False)
    assert "block.n" in graph.nodes and sorted(graph.predecessors("n1")) == ["block.b", "skip"]
    x = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(9)) * 2
    xs = x.unsqueeze(0).expand(T, *x.shape).double()
    ref_out, ref = reference_run(graph, PlainInput(xs, False))
    spikes, out = lava_spikes(graph, xs, mode, build)
    rate = _mismatch_rate(ref, spikes)
    assert all(int(s.sum()) > 0 for s in ref.values())
    if mode == "floating_pt":
        assert rate == 0
        torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    else:
        assert rate < 0.05


def test_simulate_and_energy_commands(tmp_path, capsys):
    """``sdm simulate FILE.nir --input X.npy`` writes spikes, outputs, the energy table and the report;
    ``sdm energy`` prices the same spikes from PyTorch and from the Lava record alike."""
    import json

    import h5py

    from sdm.cli import main

    snntorch_file(tmp_path / "snn.nir")
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(3)).numpy()
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "run"
    args = [str(tmp_path / "snn.nir"), "--input", str(tmp_path / "x.npy"), "--T", "12", "--dt", "1e-4"]
    assert main(["simulate", *args, "--build", "loihi", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0 spike mismatches" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["total_spike_mismatches"] == 0 and report["T"] == 12 and report["output_max_abs_err"] == 0
    with h5py.File(out / "output.h5") as f:
        assert f["lava"].shape == (12, 1, 10, 1, 1) and np.array_equal(f["lava"][()], f["pytorch"][()])
    assert main(["energy", *args, "--format", "json"]) == 0
    torch_rep = json.loads(capsys.readouterr().out)
    assert main(["energy", *args, "--format", "json", "--sim", str(out), "--preset", "45nm-fp32"]) == 0
    lava_rep = json.loads(capsys.readouterr().out)
    assert [r["synaptic_events"] for r in torch_rep["rows"]] == [r["synaptic_events"] for r in lava_rep["rows"]]
    kinds = {r["name"]: r["kind"] for r in lava_rep["rows"]}
    assert (kinds["0"], kinds["2"], kinds["5"]) == ("MAC", "AC", "AC")  # analog input, then spikes
    csv_rows = (out / "energy.csv").read_text().splitlines()
    assert csv_rows[0].startswith("name,layer,kind") and len(csv_rows) == 1 + len(lava_rep["rows"])
    energy_col = csv_rows[0].split(",").index("energy_pj")
    assert abs(sum(float(r.split(",")[energy_col]) for r in csv_rows[1:]) - lava_rep["total_pj"]) < 1e-6 * lava_rep[
        "total_pj"]
    np.save(tmp_path / "bad.npy", np.zeros((3, 8, 8)))
    assert main(["simulate", str(tmp_path / "snn.nir"), "--input", str(tmp_path / "bad.npy"), "--dt", "1e-4",
                 "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.npy" in err and "'input'" in err and "[1, 8, 8]" in err
