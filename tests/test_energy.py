"""Energy counting: hand-checked layers, paper vs exact, reference MACs, NeuroBench, Lava vs PyTorch."""

import json

import numpy as np
import pytest
import torch

from sdm.energy.counting import count_layers, dense_conv_macs, fanout_map, paper_formula_pj, price
from sdm.energy.presets import PRESETS
from sdm.energy.rates import model_spike_counts, read_sim_counts
from sdm.export.ir import AnalogInput, Conv, IFNeurons, Junction, Output, SNNGraph
from sdm.export.lower import lower_unet
from sdm.testing.spiking_cnn import CNNConfig, SpikingCNN, lower_spiking_cnn
from sdm.train.unet import SpikingUNet, UNetConfig


def conv_node(stride=1, zero_tap=None):
    w = np.ones((1, 1, 3, 3), dtype=np.float32)
    if zero_tap is not None:
        w[0, 0][zero_tap] = 0.0
    return Conv("c", w, np.zeros(1, dtype=np.float32), stride, 1, (1, 4, 4))


def test_fanout_hand_counted():
    # 3x3 kernel, stride 1, zero padding 1 on 4x4: corners reach 4 outputs, edges 6, interior 9
    fan = fanout_map(conv_node())[0]
    assert fan[0, 0] == 4 and fan[0, 1] == 6 and fan[1, 1] == 9 and fan[3, 3] == 4
    assert fan.sum() == 4 * 4 + 8 * 6 + 4 * 9  # = the valid (output, tap) pairs: 4 corners, 8 edges, 4 inside
    # stride 2: outputs centred on (0,0),(0,2),(2,0),(2,2)
    fan2 = fanout_map(conv_node(stride=2))[0]
    assert fan2[0, 0] == 1 and fan2[1, 1] == 4 and fan2[3, 3] == 1 and fan2[1, 0] == 2
    # a zero weight removes the events through it: the centre tap zero -> interior pixel reaches 8
    fan0 = fanout_map(conv_node(zero_tap=(1, 1)))[0]
    assert fan0[1, 1] == 8 and fan0[0, 0] == 3


def _tiny_graph(stride=1, zero_tap=None):
    nodes = {"x": AnalogInput("x", (1, 4, 4)), "n": IFNeurons("n", np.ones((1, 4, 4), dtype=np.float32)),
             "c": conv_node(stride, zero_tap), "j": None, "out": None}
    nodes["j"] = Junction("j", nodes["c"].shape)
    nodes["out"] = Output("out", nodes["c"].shape)
    return SNNGraph(nodes, [("x", "n"), ("n", "c"), ("c", "j"), ("j", "out")])


def test_exact_vs_paper_convention_on_one_layer():
    g = _tiny_graph()
    spikes = np.zeros((1, 4, 4))
    spikes[0, 0, 0] = 1  # a corner spike: 4 events
    spikes[0, 1, 2] = 1  # an interior spike: 9 events
    rows = count_layers(g, {"n": spikes}, T=1)
    conv = next(r for r in rows if r.name == "c")
    assert conv.kind == "AC" and conv.synaptic_events == 13
    assert conv.dense_flops == 9 * 16 and conv.input_rate == pytest.approx(2 / 16)
    assert conv.sop_paper == pytest.approx(2 / 16 * 144)  # 18: the convention over-counts the border
    price(rows, PRESETS["45nm-fp32"])
    assert conv.energy_pj == pytest.approx(13 * 0.9)
    # T = 4 with the same spikes each step: rate unchanged, events x4
    rows4 = count_layers(g, {"n": spikes * 4}, T=4)
    conv4 = next(r for r in rows4 if r.name == "c")
    assert conv4.synaptic_events == 52 and conv4.sop_paper == pytest.approx(4 * 18)


def test_reference_network_dense_macs():
    """SDDPM's CIFAR-10 UNet: 6.48 GMAC per pass (notes/reference-sdm.md)."""
    g = lower_unet(SpikingUNet(UNetConfig(img_ch=3, img_size=32, ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2)).eval())
    assert dense_conv_macs(g) == pytest.approx(6.48e9, rel=1e-3)


def _randomised_cnn():
    torch.manual_seed(0)
    model = SpikingCNN(CNNConfig(img_size=16, channels=(4, 8, 8), strides=(1, 2), T=4)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.uniform_(0.2, 0.8)
                m.weight.uniform_(0.8, 1.5)
    return model


def _cnn_counts(model, graph, x):
    from sdm.train.neuron import IFNeuron

    got = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o.sum(0).mean(0).double().numpy()))
             for n, m in model.named_modules() if isinstance(m, IFNeuron)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert set(got) == {n.name for n in graph.of_type(IFNeurons)}
    return got


def test_exact_events_equal_neurobench_synaptic_operations():
    pytest.importorskip("neurobench", reason="test dependency: requirements-test.lock")
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.workload import SynapticOperations
    from neurobench.models import TorchModel

    model = _randomised_cnn()
    graph = lower_spiking_cnn(model)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    rows = count_layers(graph, _cnn_counts(model, graph, x), T=4)
    ours = sum(r.synaptic_events for r in rows if r.kind == "AC")
    assert ours > 0

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(3)), batch_size=3)
    nb = Benchmark(TorchModel(model), loader, [], [], [[], [SynapticOperations]]).run(verbose=False)
    # equal up to float rounding of the per-image mean (~1e-9 relative)
    assert nb["SynapticOperations"]["Effective_ACs"] == pytest.approx(ours, rel=1e-8)
    # NeuroBench's MACs: the first conv on the analog image, run on T copies by the model's layer
    first = next(r for r in rows if r.kind == "MAC")
    assert nb["SynapticOperations"]["Effective_MACs"] > 0 and first.dense_flops > 0


def test_paper_formula_line_and_ann():
    model = SpikingUNet(UNetConfig(img_ch=1, img_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, T=4)).eval()
    g = lower_unet(model)
    rates = {n.name: np.full(n.shape, 2.0) for n in g.of_type(IFNeurons)}  # 2 spikes per neuron per call
    rows = count_layers(g, rates)
    pj = paper_formula_pj(rows, PRESETS["45nm-fp32"])
    first = next(r for r in rows if r.name == "stem.conv_in")
    ac_rows = [r for r in rows if r.kind == "AC"]
    assert all(r.input_rate == pytest.approx(0.5) for r in ac_rows)
    assert pj == pytest.approx(4.6 * first.dense_flops + 0.9 * sum(0.5 * 4 * r.dense_flops for r in ac_rows))
    assert {r.kind for r in rows} == {"AC", "MAC", "neuron"}
    assert any(r.name == "host.time_mlp" for r in rows) and any("shortcut" in r.name and r.kind == "MAC" for r in rows)


def test_energy_cli_formats_and_plot(tmp_path, capsys, trained_ckpt):
    from sdm.cli import main

    assert main(["energy", str(trained_ckpt), "--denoise-steps", "2", "-n", "2", "--format", "json",
                 "--out", str(tmp_path / "e.json"), "--plot", str(tmp_path / "e.png")]) == 0
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["total_pj_per_sample"] == pytest.approx(2 * rep["total_pj_per_call"])
    assert sum(r["share"] for r in rep["rows"]) == pytest.approx(1.0)
    assert len(rep["per_t"]) == 2 and rep["snn_over_ann"] > 0
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["energy", str(trained_ckpt), "--denoise-steps", "1", "-n", "1", "--format", "csv",
                 "--preset", "loihi"]) == 0
    csv_text = capsys.readouterr().out
    assert csv_text.startswith("name,layer,kind") and "neurons" in csv_text


def test_energy_bad_input(tmp_path, capsys, trained_ckpt):
    from sdm.cli import main

    bad = tmp_path / "notamodel.pt"
    bad.write_text("hello")
    assert main(["energy", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "notamodel.pt" in err and "\n" not in err
    empty = tmp_path / "nosim"
    empty.mkdir()
    assert main(["energy", str(trained_ckpt), "--sim", str(empty)]) == 2
    assert "spikes.h5" in capsys.readouterr().err


@pytest.mark.slow
def test_lava_spike_records_equal_pytorch_hook_counts(tmp_path, trained_ckpt, capsys):
    """The same run counted from Lava's spike records and from PyTorch hooks gives identical counts,
    and a record from another model is refused."""
    from sdm.cli import main
    from sdm.train.sampling import model_from_checkpoint

    assert main(["export-nir", str(trained_ckpt), "-o", str(tmp_path / "m.nir"), "--dtype", "float64"]) == 0
    assert main(["simulate", str(tmp_path / "m.nir"), "--denoise-steps", "2", "-n", "2", "--out",
                 str(tmp_path / "sim")]) == 0
    model, _, _ = model_from_checkpoint(trained_ckpt)
    graph = lower_unet(model)
    lava, inputs = read_sim_counts(tmp_path / "sim", graph)
    torch_counts = model_spike_counts(model.double(), graph, [(x, t) for x, t in inputs])
    assert set(lava.per_call) == set(torch_counts)
    for name, c in lava.per_call.items():
        np.testing.assert_array_equal(c, torch_counts[name])
    assert sum(c.sum() for c in torch_counts.values()) > 0
    capsys.readouterr()
    assert main(["energy", str(trained_ckpt), "--sim", str(tmp_path / "sim"), "--format", "json",
                 "--out", str(tmp_path / "e.json")]) == 0
    # a checkpoint with other weights refuses this record
    other = SpikingUNet(model.cfg)
    from sdm.train.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "other.pt", {"model_config": model.cfg.to_dict(), "model": other.state_dict()})
    assert main(["energy", str(tmp_path / "other.pt"), "--sim", str(tmp_path / "sim")]) == 2
    assert "another model" in capsys.readouterr().err
