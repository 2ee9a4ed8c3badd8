"""The typed contracts of the graph IR: identity, origins, the one neuron record, host records, samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdm.errors import ConfigError, GraphError, SDMError
from sdm.export.execute import GraphDenoiser
from sdm.export.ir import AnalogInput, Conv, IFNeurons, Junction, Node, Origin, Output, SNNGraph, Tail
from sdm.export.lower import lower_unet
from sdm.export.nir_format import NIRFormatError, read_nir, to_nir, write_nir
from sdm.export.verify import compare
from sdm.testing.weights import randomise
from sdm.train.diffusion import GaussianDiffusion, ScheduleConfig
from sdm.train.neuron import IFNeuron, NeuronParams, multistep_if
from sdm.train.samplers import DDIMSampler, DDPMSampler, denoise, make_sampler
from sdm.train.unet import SpikingUNet, UNetConfig

SMALL = dict(img_ch=1, img_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, T=3)


def _conv(name="c"):
    return Conv(name, np.ones((2, 1, 3, 3), dtype=np.float32), np.zeros(2, dtype=np.float32), 1, 1, (1, 4, 4))


def test_nodes_compare_by_identity():
    a, b = _conv(), _conv()
    assert a != b and a == a  # used to raise "truth value of an array is ambiguous"
    assert len({a, b}) == 2
    with pytest.raises(TypeError, match="abstract"):
        Node("x")


def test_one_neuron_validation_everywhere():
    """The PyTorch layer, the model config and the IR node refuse the same parameters with the same rule."""
    bad = dict(reset="zero", signed=True)
    with pytest.raises(ConfigError, match="signed spikes need reset='subtract'"):
        NeuronParams(**bad)
    with pytest.raises(ConfigError, match="signed spikes need reset='subtract'"):
        IFNeuron(**bad)
    with pytest.raises(ConfigError, match="signed spikes need reset='subtract'"):
        UNetConfig(**SMALL, **bad)
    leaky_signed = dict(decay=0.5, reset="subtract", signed=True)  # the IR accepted this before
    for make in (lambda: NeuronParams(**leaky_signed), lambda: IFNeuron(**leaky_signed),
                 lambda: UNetConfig(**SMALL, **leaky_signed)):
        with pytest.raises(ConfigError, match="decay 1"):
            make()
    with pytest.raises(ConfigError, match="inhibit_margin"):
        NeuronParams(inhibit_margin=0.0)
    with pytest.raises(ConfigError, match="finite"):
        NeuronParams(decay=float("nan"))
    assert isinstance(ConfigError("x"), SDMError) and isinstance(GraphError("x"), ValueError)


def test_inhibit_margin_is_the_nodes_and_travels_in_the_file(tmp_path):
    """A signed neuron inhibits at v <= -margin: the margin of the IR node decides, and NIR carries it."""
    theta = 1.0
    x = torch.tensor([[0.6], [-1.105]])  # v0 = 0.5: 1.1 fires -> v 0.1; 0.1 - 1.105 = -1.005: inhibits (-1)
    tight = NeuronParams(reset="subtract", v_init=0.5, signed=True, inhibit_margin=1e-3)
    loose = NeuronParams(reset="subtract", v_init=0.5, signed=True, inhibit_margin=0.01)
    assert multistep_if(x, theta, params=tight).flatten().tolist() == [1.0, -1.0]
    assert multistep_if(x, theta, params=loose).flatten().tolist() == [1.0, -1.0]
    x2 = torch.tensor([[0.6], [-0.105]])  # v after step 2: 0.1 - 0.105 = -0.005: inhibits only with margin 1e-3
    assert multistep_if(x2, theta, params=tight).flatten().tolist() == [1.0, -1.0]
    assert multistep_if(x2, theta, params=loose).flatten().tolist() == [1.0, 0.0]
    nodes = {"x": AnalogInput("x", (1, 1, 1)), "n": IFNeurons("n", np.ones((1, 1, 1)), loose),
             "out": Output("out", (1, 1, 1))}
    graph = SNNGraph(nodes, [("x", "n"), ("n", "out")])
    write_nir(graph, tmp_path / "g.nir")
    back = read_nir(tmp_path / "g.nir", require_host=False)
    assert back.nodes["n"].params == loose


def test_origins_round_trip_and_old_files_still_compare(tmp_path):
    torch.manual_seed(0)
    model = randomise(SpikingUNet(UNetConfig(**SMALL))).double()
    graph = lower_unet(model, dtype=np.float64)
    split = [n for n in graph.of_type(IFNeurons) if n.origin.channels is not None]
    assert split, "the up path splits neurons on the skip concatenation"
    for n in split:
        assert n.origin.module == n.name.rsplit(".", 1)[0]
    write_nir(graph, tmp_path / "g.nir")
    back = read_nir(tmp_path / "g.nir")
    assert {n: (back.nodes[n].origin or Origin(n)) for n in back.nodes if isinstance(back.nodes[n], IFNeurons)} == \
        {n.name: n.origin for n in graph.of_type(IFNeurons)}
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([10, 900])
    assert compare(model, GraphDenoiser(back, torch.float64), x, t)["total_mismatches"] == 0
    # a file from before origins were stored: the legacy reader derives them from the names
    ng = to_nir(graph)
    for node in ng.nodes.values():
        node.metadata.pop("sdm.module", None)
        node.metadata.pop("sdm.channels", None)
    import nir

    nir.write(tmp_path / "old.nir", ng)
    old = read_nir(tmp_path / "old.nir")
    assert compare(model, GraphDenoiser(old, torch.float64), x, t)["total_mismatches"] == 0


def test_host_records_are_typed_and_checked():
    model = randomise(SpikingUNet(UNetConfig(**SMALL)))
    host = lower_unet(model).host
    assert isinstance(host.tail, Tail) and host.tail.conv_gain is None
    assert isinstance(host.schedule, ScheduleConfig) and host.schedule.steps == 1000
    assert set(host.tail.arrays()) == {"bn_scale", "bn_shift", "conv_w", "conv_b", "out_w", "out_b",
                                       "out_bn_scale", "out_bn_shift"}
    with pytest.raises(GraphError, match="unknown arrays"):
        Tail.from_arrays({**host.tail.arrays(), "extra": np.zeros(1)}, "host tail")
    with pytest.raises(ConfigError, match="schedule"):
        ScheduleConfig(steps=10, beta_start=0.5, beta_end=0.1)


def test_graph_errors_name_the_node():
    with pytest.raises(GraphError, match="unknown node 'nope'"):
        SNNGraph({"c": _conv()}, [("nope", "c")])
    j = Junction("j", (2, 4, 4))
    with pytest.raises(GraphError, match="shape mismatch"):
        SNNGraph({"x": AnalogInput("x", (1, 4, 4)), "j": j, "o": Output("o", (2, 4, 4))}, [("x", "j"), ("j", "o")])


def test_unknown_neuron_fields_in_a_file_are_one_line_errors(tmp_path):
    nodes = {"x": AnalogInput("x", (1, 1, 1)), "n": IFNeurons("n", np.ones((1, 1, 1)), NeuronParams(reset="subtract")),
             "out": Output("out", (1, 1, 1))}
    ng = to_nir(SNNGraph(nodes, [("x", "n"), ("n", "out")]))
    ng.nodes["n"].metadata["reset"] = "soft"
    import nir

    nir.write(tmp_path / "bad.nir", ng)
    with pytest.raises(NIRFormatError, match="node 'n'.*reset"):
        read_nir(tmp_path / "bad.nir", require_host=False)


def test_samplers_own_their_timesteps_and_noise():
    d = GaussianDiffusion(ScheduleConfig(steps=50))
    ddim = make_sampler("ddim", d, 5)
    assert isinstance(ddim, DDIMSampler) and ddim.timesteps == d.ddim_timesteps(5)
    assert ddim.pairs()[-1][1] == -1 and not ddim.needs_noise(10, 5)
    assert make_sampler("ddim", d, 5, eta=1.0).needs_noise(10, 5)
    ddpm = make_sampler("ddpm", d, 7)
    assert isinstance(ddpm, DDPMSampler) and len(ddpm.pairs()) == 50 and ddpm.pairs(3) == [(49, 48), (48, 47),
                                                                                            (47, 46)]
    assert ddpm.needs_noise(1, 0) and not ddpm.needs_noise(0, -1)
    with pytest.raises(ConfigError, match="unknown sampler"):
        make_sampler("euler", d)
    seen = []
    x = denoise(lambda x, t: torch.zeros_like(x), ddpm, torch.ones(2, 1, 2, 2), torch.Generator().manual_seed(0),
                limit=4, on_call=lambda x, t, eps: seen.append(int(t[0])))
    assert seen == [49, 48, 47, 46] and x.shape == (2, 1, 2, 2)


@pytest.mark.parametrize("params,nir_type,tau,r", [(NeuronParams.lif(2.0), "LIF", 2.0, 1.0),
                                                   (NeuronParams.lif(4.0), "LIF", 4.0, 1.0),
                                                   (NeuronParams(input_scale=0.25), "IF", None, 0.25)])
def test_lif_input_scale_travels_through_nir(tmp_path, params, nir_type, tau, r):
    """spikingjelly's LIF (h = v + (x - v)/tau) is NIR's LIF(tau, r = 1) at dt = 1; an IF with an input scale
    c is IF(r = c): the scale is written, never dropped, and read back as it was."""
    import nir

    from sdm.export.nir_format import read_nir

    nodes = {"x": AnalogInput("x", (1, 1, 1)), "n": IFNeurons("n", np.ones((1, 1, 1)), params),
             "out": Output("out", (1, 1, 1))}
    write_nir(SNNGraph(nodes, [("x", "n"), ("n", "out")]), tmp_path / "g.nir")
    node = nir.read(tmp_path / "g.nir").nodes["n"]
    assert type(node).__name__ == nir_type and np.all(node.r == r) and (tau is None or np.all(node.tau == tau))
    back = read_nir(tmp_path / "g.nir", require_host=False).nodes["n"].params
    assert (back.decay, back.input_scale) == (params.decay, params.input_scale)
