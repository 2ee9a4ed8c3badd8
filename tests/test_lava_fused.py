"""The two Lava builds and the asynchronous protocol (issue 16).

* ``fused`` (the graph cut into stage processes, T Lava steps per call, the batch an array
  dimension) reproduces the PyTorch executor spike for spike: tiny UNets with and without TSM,
  batch 1 and 2, a threshold scale, one stage / a few / one per layer, a converted signed model and
  a host-less spiking CNN;
* ``--protocol async`` (every process converted) gives exactly the loihi protocol's spikes and
  outputs, call after call (Lava's own converter runs 0 steps from the second call on);
* fixed_pt in the fused build runs the loihi build's integer models: bit for bit the same spikes
  and eps;
* the stage plan covers every layer once and passes on exactly what later stages read; bad
  ``--stages`` / ``--build`` combinations are one-line errors before any Lava process starts;
* closing a fused network leaves no process (Ctrl-C, SIGTERM and kill -9: test_lava.py and
  test_lava_faults.py, parametrised over the builds).

Runtime about 40 s on 2 cores (the loihi runs compile; fused runs take well under a second).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from test_lava import CALLS, SMALLEST, TINY, _graph, _images, deadline, descendants, wait_no_new_descendants

from sdm.errors import ConfigError
from sdm.export.execute import GraphDenoiser, GraphModule
from sdm.export.ir import AnalogInput, IFNeurons, Output
from sdm.neuromorphic.fused import crossing, plan_stages
from sdm.neuromorphic.simulator import PROTOCOLS, LavaDenoiser, LavaNetwork
from sdm.testing.spiking_cnn import CNNConfig, SpikingCNN, lower_spiking_cnn
from sdm.testing.weights import randomise

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc"),
    pytest.mark.filterwarnings("ignore:Cannot import module"),
]


def _calls(graph, cfg: dict, batch: int, calls=CALLS, **options) -> list[dict]:
    """The denoiser calls ``calls`` in Lava (``options``: build, protocol, stages, mode, ...), each with
    its eps and spikes; the network is closed before returning and must leave no process."""
    before = set(descendants())
    out = []
    with deadline(240), LavaDenoiser(graph, batch=batch, record_spikes=True, **options) as sim:
        for t, seed in calls:
            x, tt = _images(cfg, batch, seed), torch.full((batch,), t)
            eps = sim(x, tt)
            out.append(dict(x=x, t=tt, eps=eps, spikes={n: s.copy() for n, s in sim.last_spikes.items()},
                            counts={n: c.copy() for n, c in sim.last_counts.items()}))
        out[0]["steps"], out[0]["processes"] = sim.net.run_length, sim.num_processes
    assert not wait_no_new_descendants(before)
    return out


def _assert_equals_pytorch(graph, runs, threshold_scale: float = 1.0) -> int:
    """Every spike of every call equals the PyTorch executor's (float64); eps within 1e-9.  Returns the
    number of spike events compared."""
    ref = GraphDenoiser(graph, torch.float64)
    ref.threshold_scale = threshold_scale
    ref.record = True
    total = 0
    for run in runs:
        eps_ref = ref(run["x"], run["t"])
        assert set(run["spikes"]) == set(ref.spikes)
        for name, s in ref.spikes.items():
            got = torch.from_numpy(run["spikes"][name])
            assert got.shape == s.shape, name
            bad = int((got != s).sum())
            assert bad == 0, f"t={int(run['t'][0])}: {name}: {bad} of {s.numel()} spikes differ"
            np.testing.assert_array_equal(run["counts"][name], s.abs().flatten(2).sum(2).T.numpy(), err_msg=name)
            total += int(s.abs().sum())
        assert (run["eps"] - eps_ref).abs().max().item() < 1e-9
    return total


# ----- fused == PyTorch ------------------------------------------------------------------------
@pytest.mark.parametrize("tsm,batch,stages,protocol", [(False, 1, 1, "loihi"), (False, 2, 3, None),
                                                       (True, 1, None, None), (True, 2, 2, "loihi")],
                         ids=["plain-b1-K1-loihi", "plain-b2-K3", "tsm-b1-Kdefault", "tsm-b2-K2-loihi"])
def test_fused_spikes_equal_pytorch(tsm, batch, stages, protocol):
    """Default protocol of the fused build: asynchronous; two cases under the Loihi protocol."""
    graph = _graph(TINY, tsm=tsm)
    runs = _calls(graph, TINY, batch, build="fused", stages=stages, protocol=protocol)
    assert runs[0]["steps"] == TINY["T"]  # zero latency inside a stage: T Lava steps per call
    assert runs[0]["processes"] == (stages or 6)
    assert _assert_equals_pytorch(graph, runs) > 100
    a, b = runs  # the calls differ: the second is no replay of the first's records
    assert any((a["spikes"][n] != b["spikes"][n]).any() for n in a["spikes"])


def test_fused_threshold_scale_and_one_stage_per_layer():
    graph = _graph(SMALLEST, tsm=True, seed=1)
    layers = sum(1 for n in graph.nodes.values() if not isinstance(n, (AnalogInput, Output)))
    runs = _calls(graph, SMALLEST, 2, build="fused", stages=layers, threshold_scale=0.97)
    assert runs[0]["processes"] == layers
    assert _assert_equals_pytorch(graph, runs, threshold_scale=0.97) > 50
    plain = _calls(graph, SMALLEST, 2, calls=CALLS[:1], build="fused", stages=2)
    assert any((plain[0]["spikes"][n] != runs[0]["spikes"][n]).any() for n in plain[0]["spikes"])  # the scale acts


@pytest.fixture(scope="module")
def signed_graph(tmp_path_factory):
    """A converted model (quantised ReLU -> subtractive reset, v_init = 1/2, signed spikes), read from NIR."""
    from sdm.export.api import export_checkpoint, import_nir
    from sdm.train.checkpoint import save_checkpoint
    from sdm.train.conversion import convert_qann, neuron_slots
    from sdm.train.unet import SpikingUNet, UNetConfig

    tmp = tmp_path_factory.mktemp("signed")
    torch.manual_seed(4)
    model = SpikingUNet(UNetConfig(**SMALLEST, neuron="qrelu", bits=2))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for _, act, _ in neuron_slots(model):
            act.alpha.fill_(0.3 + 0.5 * torch.rand((), generator=g).item())
    ckpt = convert_qann({"model_config": model.cfg.to_dict(), "model": model.eval().state_dict()}, signed=True)
    save_checkpoint(tmp / "snn.pt", ckpt)
    export_checkpoint(tmp / "snn.pt", tmp / "snn.nir", dtype="float64")
    return import_nir(tmp / "snn.nir", dtype="float64").graph


def test_fused_converted_signed_model_equals_pytorch(signed_graph):
    assert any(n.signed for n in signed_graph.of_type(IFNeurons))
    runs = _calls(signed_graph, SMALLEST, 2, build="fused", stages=3)
    assert _assert_equals_pytorch(signed_graph, runs) > 20
    assert any((s < 0).any() for run in runs for s in run["spikes"].values())  # inhibitory spikes occurred


def test_fused_hostless_network_equals_pytorch():
    cfg = CNNConfig(img_ch=1, img_size=8, channels=(4, 4, 4), strides=(1, 2), T=3, residual=True)
    torch.manual_seed(0)
    graph = lower_spiking_cnn(randomise(SpikingCNN(cfg)), dtype=np.float64)
    ref = GraphModule(graph, cfg.T, torch.float64)
    ref.record = True
    with deadline(120), LavaNetwork(graph, cfg.T, batch=2, build="fused", stages=2) as net:
        for seed in (1, 2):
            x = _images(dict(img_ch=1, img_size=8), 2, seed) * 2
            out, out_ref = net.run_graph(x), ref.run({"x": x})
            assert out.shape == out_ref.shape and (out - out_ref).abs().max().item() < 1e-9
            for name, s in ref.spikes.items():
                assert s.sum() > 0 and int((torch.from_numpy(net.last_spikes[name]) != s).sum()) == 0, name


# ----- async == loihi; fixed fused == fixed loihi -------------------------------------------------
def _assert_same_runs(a: list[dict], b: list[dict]) -> None:
    for ra, rb in zip(a, b):
        torch.testing.assert_close(ra["eps"], rb["eps"], rtol=0, atol=0)
        assert set(ra["spikes"]) == set(rb["spikes"])
        for name in ra["spikes"]:
            np.testing.assert_array_equal(ra["spikes"][name], rb["spikes"][name], err_msg=name)


def test_async_protocol_equals_loihi_protocol():
    graph = _graph(SMALLEST, tsm=True)
    calls = CALLS + ((400, 3),)  # three runs: Lava's own converter would run 0 steps in the second and third
    sync = _calls(graph, SMALLEST, 2, calls=calls, build="loihi")
    asyn = _calls(graph, SMALLEST, 2, calls=calls, build="loihi", protocol="async")
    assert sync[0]["steps"] == asyn[0]["steps"] > SMALLEST["T"] * 2  # the latency-aligned graph
    _assert_same_runs(sync, asyn)
    assert _assert_equals_pytorch(graph, asyn) > 50
    fused = {p: _calls(graph, SMALLEST, 2, calls=calls, build="fused", protocol=p, stages=3) for p in PROTOCOLS}
    _assert_same_runs(fused["loihi"], fused["async"])
    assert _assert_equals_pytorch(graph, fused["async"]) > 50


@pytest.mark.parametrize("which", ["tsm-b2", "signed-b1"])
def test_fixed_point_fused_equals_loihi_bit_for_bit(which, signed_graph):
    graph, cfg, batch = (_graph(TINY, tsm=True), TINY, 2) if which == "tsm-b2" else (signed_graph, SMALLEST, 1)
    loihi = _calls(graph, cfg, batch, build="loihi", mode="fixed_pt")
    fused = _calls(graph, cfg, batch, build="fused", mode="fixed_pt", stages=3)
    _assert_same_runs(loihi, fused)
    assert sum(int(np.abs(s).sum()) for s in fused[0]["spikes"].values()) > 20


# ----- the stage plan and the options -----------------------------------------------------------
@pytest.mark.parametrize("stages", [1, 2, 4, 6])
def test_stage_plan(stages):
    graph = _graph(TINY)
    plan = plan_stages(graph, stages)
    layers = [n for n in graph.topological_order() if not isinstance(graph.nodes[n], (AnalogInput, Output))]
    assert len(plan) == stages and [n for s in plan for n in s.layers] == layers  # each layer once, in order
    done: set[str] = set()
    for s in plan:
        assert s.bus_in == (plan[s.index - 1].bus_out if s.index else ())
        for n in s.layers:  # every input of a layer is an input file, computed earlier here, or on the bus
            for p in graph.predecessors(n):
                assert p in s.inputs or p in done or p in s.bus_in or p in s.layers[:s.layers.index(n)], (n, p)
        done |= set(s.layers)
        later = {p for t in plan[s.index + 1:] for n in t.layers for p in graph.predecessors(n)}
        assert set(s.bus_out) == later & done  # exactly what later stages read
    assert plan[-1].bus_out == ()
    cross = crossing(graph, layers)
    assert cross[0] == [] and cross[-1] == []


def test_bad_stage_options_are_one_line_errors(tmp_path, capsys):
    from sdm.cli import main
    from sdm.export.nir_format import write_nir

    graph = _graph(SMALLEST)
    with pytest.raises(ConfigError, match="--stages must be an integer from 1 to"):
        plan_stages(graph, 10_000)
    with pytest.raises(ConfigError, match="fused build"):
        LavaDenoiser(graph, build="loihi", stages=3)
    nir = tmp_path / "tiny.nir"
    write_nir(graph, nir)
    before = set(descendants())
    for argv, words in ((["--stages", "0"], "--stages"), (["--stages", "999"], "--stages"),
                        (["--build", "loihi", "--stages", "2"], "fused build")):
        assert main(["simulate", str(nir), "--denoise-steps", "1", "--out", str(tmp_path / "out"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "out" / "report.json").exists() and not set(descendants()) - before
