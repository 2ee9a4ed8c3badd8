"""lava-dl netx path for sequential networks: the hdf5 file runs in the unmodified
``netx.hdf5.Network`` (fixed_pt) and spikes exactly as our own Lava builder under the same plan."""

import re

import h5py
import numpy as np
import pytest
import torch

from sdm.export.lower import lower_unet
from sdm.testing.spiking_cnn import CNNConfig, SpikingCNN, lower_spiking_cnn
from sdm.testing.weights import randomise  # trained-looking BatchNorm statistics
from sdm.train.unet import SpikingUNet

pytest.importorskip("lava.lib.dl.netx")

from sdm.neuromorphic.builder import lava_conv_weight  # noqa: E402
from sdm.neuromorphic.netx_export import (  # noqa: E402
    NetxExportError,
    NetxPlan,
    first_layer_current,
    is_sequential,
    run_netx,
    write_netx_hdf5,
)

T = 4
# three IF groups: netx gets an input layer and two conv layers, one of them strided
CFG = CNNConfig(img_size=8, channels=(4, 6, 8, 8), strides=(1, 2, 1), T=T)


@pytest.fixture(scope="module")
def netx_run(tmp_path_factory):
    from sdm.neuromorphic.simulator import LavaNetwork

    torch.manual_seed(0)
    model = randomise(SpikingCNN(CFG)).double()
    graph = lower_spiking_cnn(model, dtype=np.float64)
    plan = NetxPlan(graph)
    path = tmp_path_factory.mktemp("netx") / "cnn.net"
    chain = write_netx_hdf5(graph, plan, path, T)
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with LavaNetwork(graph, T, mode="fixed_pt", plan=plan) as sim:
        sim.run_graph(x)
        ours = {k: v[:, 0].astype(np.int64) for k, v in sim.last_spikes.items()}  # [T, C, H, W]
    theirs = run_netx(path, first_layer_current(path, x[0].numpy()), T)
    return dict(graph=graph, plan=plan, path=path, chain=chain, ours=ours, theirs=theirs)


def test_netx_spikes_equal_builder(netx_run):
    chain, ours, theirs = netx_run["chain"], netx_run["ours"], netx_run["theirs"]
    assert netx_run["plan"].warnings == []
    assert len(theirs) == len(chain.neurons) == 3
    for name, spikes in zip(chain.neurons, theirs):
        assert spikes.shape == ours[name].shape == (T, *netx_run["graph"].nodes[name].shape), name
        assert np.array_equal(spikes, ours[name]), (name, int((spikes != ours[name]).sum()))
        assert spikes.sum() > 0, f"{name} never spikes: the comparison would be vacuous"
        assert spikes.sum() < spikes.size, f"{name} always spikes"


def test_netx_file_layout_and_conventions(netx_run):
    from lava.lib.dl import netx

    graph, plan, path, chain = (netx_run[k] for k in ("graph", "plan", "path", "chain"))
    with h5py.File(path, "r") as f:
        types = [f[f"layer/{i}/type"][0].decode() for i in range(len(f["layer"]))]
        assert types == ["input", "conv", "conv"]
        assert f["layer/0/neuron/iDecay"][()] == 4096 and f["layer/0/neuron/vDecay"][()] == 0
        assert tuple(f["layer/2/shape"][()]) == graph.nodes[chain.neurons[2]].shape
    net = netx.hdf5.Network(net_config=str(path), reset_interval=T, reset_offset=1)
    try:
        for i, layer in enumerate(net.layers):
            # netx's LIFReset: the plan's threshold, no current memory, bias exponent 6, staggered phase
            assert int(layer.neuron.vth.init) == plan.threshold(1.0)
            assert int(layer.neuron.du.init) == 4095 and int(layer.neuron.dv.init) == 0
            assert np.all(layer.neuron.bias_exp.init == 6)
            assert layer.neuron.proc_params["reset_offset"] == 2 + i
        for i, conv in enumerate(chain.convs[:-1], start=1):
            # netx flips and transposes the file's (Cout, Cin, kH, kW) weights exactly as our builder does
            assert np.array_equal(net.layers[i].synapse.weight.init, lava_conv_weight(plan.conv_mant[conv]))
            assert plan.conv_exp[conv] == 0
    finally:
        net.net_config.f.close()


def test_non_sequential_graphs_are_refused(tmp_path, tiny_model_cfg):
    torch.manual_seed(0)
    residual = lower_spiking_cnn(randomise(SpikingCNN(CNNConfig(img_size=8, channels=(4, 4, 4), residual=True))))
    unet = lower_unet(randomise(SpikingUNet(tiny_model_cfg)))
    for graph, node in ((residual, "stages.0.out"), (unet, "down.0.temb")):
        assert not is_sequential(graph)
        with pytest.raises(ValueError, match="^" + re.escape(node) + ": ") as err:
            write_netx_hdf5(graph, None, tmp_path / "x.net", T)  # the structure is checked first
        assert isinstance(err.value, NetxExportError)
    assert not (tmp_path / "x.net").exists()
    sequential = lower_spiking_cnn(randomise(SpikingCNN(CFG)))
    assert is_sequential(sequential)

