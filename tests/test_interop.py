"""NIR both ways: our files computed by other tools (norse, nirtorch, snnTorch), and their files read by us."""

import logging
import warnings

import nir
import numpy as np
import pytest
import torch

from sdm.export.execute import GraphModule
from sdm.export.ir import Junction
from sdm.export.lower import lower_unet
from sdm.export.nir_format import (
    HOST_GUARD,
    NIRFormatError,
    _elidable_junctions,
    _expanded_edges,
    file_counts,
    file_counts_in,
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
