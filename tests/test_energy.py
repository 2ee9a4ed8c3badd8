"""Energy counting: hand-checked layers, paper vs exact, reference MACs, NeuroBench, Lava vs PyTorch."""

import json

import numpy as np
import pytest
import torch

from sdm.energy.counting import (
    ROW_FUNCTIONS,
    ann_macs,
    count_layers,
    dense_conv_macs,
    fanout_map,
    host_rows,
    paper_formula_pj,
    price,
)
from sdm.energy.presets import PRESETS, get_preset
from sdm.energy.rates import model_spike_counts, read_sim_counts
from sdm.errors import ConfigError
from sdm.export.ir import (
    NODE_TYPES,
    AnalogInput,
    Conv,
    IFNeurons,
    Junction,
    Output,
    SNNGraph,
    TemporalAffine,
    Upsample,
)
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
    priced = price(rows, PRESETS["45nm-fp32"])
    assert next(r for r in priced.rows if r.name == "c").energy_pj == pytest.approx(13 * 0.9)
    assert conv.energy_pj == 0.0 and priced.total_pj == pytest.approx(13 * 0.9)  # price() returns copies
    # T = 4 with the same spikes each step: rate unchanged, events x4
    rows4 = count_layers(g, {"n": spikes * 4}, T=4)
    conv4 = next(r for r in rows4 if r.name == "c")
    assert conv4.synaptic_events == 52 and conv4.sop_paper == pytest.approx(4 * 18)


def test_reference_network_dense_macs():
    """SDDPM's CIFAR-10 UNet: 6.48 GMAC per pass (notes/reference-sdm.md)."""
    cfg = UNetConfig(img_ch=3, img_size=32, ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2)
    g = lower_unet(SpikingUNet(cfg).eval())
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
    # NeuroBench's MACs: the first conv on the analog image, which the model runs once per call (as
    # our row does); NeuroBench counts its exact taps, the dense row counts padding taps too
    first = next(r for r in rows if r.kind == "MAC")
    nb_macs = nb["SynapticOperations"]["Effective_MACs"]
    assert nb_macs > 0 and first.dense_flops > 0
    assert first.name == "conv_in" and first.executions == 1 and first.macs == first.dense_flops == 4 * 9 * 16 * 16
    # 4 output channels x (14x14 inner outputs x 9 taps + 4x14 edge outputs x 6 + 4 corners x 4)
    assert nb_macs == 4 * (14 * 14 * 9 + 4 * 14 * 6 + 4 * 4) == fanout_map(graph.nodes["conv_in"]).sum()


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
    rows = rep["rows"]
    ac = [r for r in rows if r["kind"] == "AC"]
    macs = sum(r["macs"] for r in rows if r["kind"] == "MAC")
    sop = sum(r["sop_paper"] for r in ac)
    # the ANN is every conv and host layer once, dense, at 4.6 pJ; the SNN its rows' counts at 0.9 / 4.6 pJ
    dense = sum(r["dense_flops"] for r in rows if r["layer"] in ("conv", "host"))
    assert rep["ann_pj_per_call"] == pytest.approx(4.6 * dense)
    assert rep["total_pj_per_call"] == pytest.approx(0.9 * sum(r["synaptic_events"] for r in ac) + 4.6 * macs)
    assert rep["snn_over_ann"] == pytest.approx(rep["total_pj_per_call"] / rep["ann_pj_per_call"])
    assert rep["paper_sop_convention_total_pj"] == pytest.approx(0.9 * sop + 4.6 * macs)
    # the measured rates bound it: a spike reaches at most 16/9 of the paper's mean fan-out (3x3, stride 2),
    # so even at rate 1 (every AC row at its dense FLOPs x T) the SNN stays below the ANN
    assert all(r["synaptic_events"] <= 16 / 9 * r["sop_paper"] * (1 + 1e-12) for r in ac)
    bound = (0.9 * 16 / 9 * sop + 4.6 * macs) / rep["ann_pj_per_call"]
    assert rep["snn_over_ann"] <= bound < 1
    # pricing is linear in the spike counts: the mean call's total is the mean of the per-t totals
    assert np.mean([p["energy_pj"] for p in rep["per_t"]]) == pytest.approx(rep["total_pj_per_call"])
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["energy", str(trained_ckpt), "--denoise-steps", "1", "-n", "1", "--format", "csv",
                 "--preset", "loihi"]) == 0
    csv_text = capsys.readouterr().out
    assert csv_text.startswith("name,layer,kind") and "neurons" in csv_text


def _every_kind_graph():
    """x -> c0 (analog, once) -> tsm gain -> j0 -> n -> upsample -> c1 (AC) -> j1 -> out;  j0 -> c2 (analog, T)."""
    def ones(*s):
        return np.ones(s, dtype=np.float32)

    zero = np.zeros(1, dtype=np.float32)
    nodes = [AnalogInput("x", (1, 2, 2)), Conv("c0", ones(1, 1, 3, 3), zero, 1, 1, (1, 2, 2)),
             TemporalAffine("g", ones(2), zero, (1, 2, 2)), Junction("j0", (1, 2, 2)), IFNeurons("n", ones(1, 2, 2)),
             Upsample("up", (1, 2, 2)), Conv("c1", ones(1, 1, 3, 3), zero, 1, 1, (1, 4, 4)), Junction("j1", (1, 4, 4)),
             Output("out", (1, 4, 4)), Conv("c2", ones(1, 1, 1, 1), zero, 1, 0, (1, 2, 2)), Junction("j2", (1, 2, 2))]
    edges = [("x", "c0"), ("c0", "g"), ("g", "j0"), ("j0", "n"), ("n", "up"), ("up", "c1"), ("c1", "j1"),
             ("j1", "out"), ("j0", "c2"), ("c2", "j2")]
    return SNNGraph({n.name: n for n in nodes}, edges)


def test_every_row_kind_hand_counted():
    g = _every_kind_graph()
    spikes = np.zeros((1, 2, 2))
    spikes[0, 0, 0] = 1  # one spike per call, copied to up[0:2, 0:2]: fan-outs 4 + 6 + 6 + 9 on the 4x4 conv
    rows = {r.name: r for r in count_layers(g, {"n": spikes}, T=2)}
    assert set(rows) == {"c0", "g", "n", "c1", "c2"}  # inputs, upsampling, sums and the output cost nothing
    c0, gain, n, c1, c2 = (rows[k] for k in ("c0", "g", "n", "c1", "c2"))
    assert (c0.kind, c0.dense_flops, c0.executions, c0.macs) == ("MAC", 9 * 4, 1, 36)  # on the image: once
    assert (gain.layer, gain.kind, gain.executions, gain.macs) == ("tsm_gain", "MAC", 2, 4 * 2)
    assert (n.kind, n.neuron_updates) == ("neuron", 4 * 2)
    assert (c1.kind, c1.dense_flops, c1.synaptic_events) == ("AC", 9 * 16, 4 + 6 + 6 + 9)
    assert c1.input_rate == pytest.approx(1 / 4 / 2) and c1.sop_paper == pytest.approx(1 / 4 * 144)
    assert (c2.kind, c2.dense_flops, c2.executions, c2.macs) == ("MAC", 4, 2, 8)  # on a residual stream: T times
    assert ann_macs(g) == dense_conv_macs(g) == 36 + 144 + 4
    assert paper_formula_pj(list(rows.values()), PRESETS["45nm-fp32"]) == pytest.approx(4.6 * 36 + 0.9 * 36)


def test_price_is_pure_under_both_conventions():
    g = _every_kind_graph()
    spikes = np.zeros((1, 2, 2))
    spikes[0, 0, 0] = 1
    rows = count_layers(g, {"n": spikes}, T=2)
    before = [r.to_dict() for r in rows]
    fp32 = PRESETS["45nm-fp32"]
    exact, paper = price(rows, fp32), price(rows, fp32, convention="paper")
    assert [r.to_dict() for r in rows] == before  # the counted rows are priced twice without a recount
    macs = 36 + 8 + 8
    assert exact.total_pj == pytest.approx(4.6 * macs + 0.9 * 25)
    assert paper.total_pj == pytest.approx(4.6 * macs + 0.9 * 36)
    assert sum(r.share for r in exact.rows) == pytest.approx(1.0)
    assert [r.name for r in exact.rows] == [r.name for r in rows]
    loihi = price(rows, PRESETS["loihi"], memory=True)
    assert loihi.total_pj == pytest.approx(4.6 * macs + 23.6 * 25 + 81 * 8 + 10 * (macs + 25))
    with pytest.raises(ConfigError, match="convention"):
        price(rows, fp32, convention="dense")


def test_row_functions_cover_every_node_type():
    assert set(ROW_FUNCTIONS) == set(NODE_TYPES)


def test_ann_and_dense_macs_share_the_layer_counts():
    g = lower_unet(SpikingUNet(UNetConfig(img_ch=1, img_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, T=2)).eval())
    rows = count_layers(g, {n.name: np.ones(n.shape) for n in g.of_type(IFNeurons)})
    assert ann_macs(g) == sum(r.dense_flops for r in rows if r.layer in ("conv", "host"))
    tail = sum(r.dense_flops for r in host_rows(g) if r.name in ("host.tail.conv", "host.tail.out_conv"))
    assert dense_conv_macs(g) == sum(r.dense_flops for r in rows if r.layer == "conv") + tail


def test_bad_preset_and_missing_T_are_config_errors(tmp_path):
    from sdm.energy.report import energy_report

    with pytest.raises(ConfigError, match="unknown preset 'nope'; choose from 45nm-fp32"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="unknown preset"):  # before the model is read
        energy_report(tmp_path / "missing.pt", preset="nope")
    with pytest.raises(ConfigError, match="give T"):
        count_layers(_tiny_graph(), {"n": np.zeros((1, 4, 4))})


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
