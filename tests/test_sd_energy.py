"""Energy of Spiking-Diffusion: exact fan-out through zero insertion, counts from the model's hooks equal to
the graph's own spikes, per-sample totals, and the command on the committed checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_sd_export import SD_MODEL, images, tiny_pair
from torch import nn
from torch.nn import functional as F

from sdm.energy.counting import conv_flops, fanout_map
from sdm.energy.sd_report import ann_macs, sd_energy_report, torch_counts
from sdm.export.ir import Conv, Upsample
from sdm.export.lower_sd import lower_spiking_diffusion, transposed_conv
from sdm.export.sd_execute import torch_runner
from sdm.train.absorbing import AbsorbingConfig
from sdm.train.sd_model import SpikingDiffusion


@pytest.mark.parametrize("stride,padding,kernel", [(2, 1, 3), (1, 1, 3), (2, 0, 2)])
def test_zero_insertion_fanout_is_the_transposed_convs(stride, padding, kernel):
    """Every input element's events through the lowered conv = the outputs its transposed conv writes
    through non-zero weights, counted one input element at a time."""
    torch.manual_seed(kernel)
    convt = nn.ConvTranspose2d(3, 4, kernel, stride=stride, padding=padding, output_padding=stride - 1).double()
    with torch.no_grad():
        convt.weight[0, 1] = 0.0  # a zero kernel must not count
    weight, bias, scale, pad = transposed_conv(convt)
    up = Upsample("up", (3, 5, 5), scale=scale, mode="zeros")
    conv = Conv("conv", weight.numpy(), bias.numpy(), 1, pad, up.shape)
    mask = (convt.weight != 0).double()
    brute = np.zeros((3, 5, 5))
    for c, i, j in np.ndindex(3, 5, 5):
        x = torch.zeros(1, 3, 5, 5, dtype=torch.float64)
        x[0, c, i, j] = 1.0
        brute[c, i, j] = float(F.conv_transpose2d(x, mask, stride=stride, padding=padding,
                                                  output_padding=stride - 1).sum())
    np.testing.assert_array_equal(fanout_map(conv, up), brute)


def test_hook_counts_equal_the_graphs_spikes_and_totals_add_up():
    vq, sdid = tiny_pair(seed=2, dtype=torch.float32)
    graphs = lower_spiking_diffusion(vq, sdid)
    model = SpikingDiffusion(vq, sdid, AbsorbingConfig(codebook_size=8, steps=5))
    x = images(3, dtype=torch.float32)
    counts = torch_counts(model, vq, graphs, 3, 1.0, 0, x)
    assert len(counts["sdid"].timesteps) == 5 and counts["sdid"].timesteps == [5, 4, 3, 2, 1]
    # the encoder's counts from hooks on the model = the graph executor's recorded spikes
    runner = torch_runner(graphs["encoder"], record=True)
    runner(graphs["encoder"].host.currents(x))
    for name, s in runner.spikes.items():
        np.testing.assert_allclose(counts["encoder"].per_call[name][0], s.sum(0).mean(0).double().numpy())
    rep = sd_energy_report(graphs, counts, "tiny")
    parts = rep["parts"]
    assert parts["sdid"]["calls_per_sample"] == 5 and parts["decoder"]["calls_per_sample"] == 1
    assert rep["total_pj_per_sample"] == pytest.approx(5 * parts["sdid"]["total_pj_per_call"]
                                                       + parts["decoder"]["total_pj_per_call"])
    for p in parts.values():
        assert sum(r["energy_pj"] for r in p["rows"]) == pytest.approx(p["total_pj_per_call"])
        assert np.mean([t["energy_pj"] for t in p["per_t"]]) == pytest.approx(p["total_pj_per_call"])
    # the decoder's first conv is on analog code vectors (MAC, once per call), the rest on spikes (AC)
    kinds = {r["name"]: (r["kind"], r["executions"]) for r in parts["decoder"]["rows"]}
    assert kinds["asg.conv"] == ("MAC", 1) and kinds["decoder.0.conv"][0] == kinds["out_conv"][0] == "AC"


def test_ann_counts_a_transposed_conv_at_its_own_cost():
    vq, sdid = tiny_pair()
    dec = lower_spiking_diffusion(vq, sdid)["decoder"]
    conv = dec.graph.nodes["decoder.0.conv"]
    convt = vq.decoder[0].conv
    own = convt.in_channels * convt.out_channels * 9 * 4 * 4  # C_in C_out k^2 H_in W_in on the 4 x 4 grid
    assert conv_flops(conv, dec.graph) == own == conv_flops(conv) / 4
    assert ann_macs(dec) == pytest.approx(sum(conv_flops(n, dec.graph) for n in dec.graph.of_type(Conv)) + 256)


def _sdm(*args):
    return subprocess.run([sys.executable, "-m", "sdm.cli", *args], capture_output=True, text=True, timeout=300)


def test_energy_command_on_the_committed_model(tmp_path):
    out, png = tmp_path / "e.json", tmp_path / "e.png"
    r = _sdm("energy", SD_MODEL, "-n", "2", "--format", "json", "--out", str(out), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert set(rep["parts"]) == {"sdid", "decoder", "encoder"} and png.exists()
    assert rep["parts"]["sdid"]["calls"] == 49  # one batch of 2 samples: 49 SDID calls
    assert 0 < rep["snn_over_ann_per_sample"] < 1
    first = rep["parts"]["sdid"]["rows"][0]
    assert first["name"] == "layers.0.conv" and first["kind"] == "MAC"
    r = _sdm("energy", SD_MODEL, "--denoise-steps", "3")
    assert r.returncode == 2 and "--denoise-steps applies to the spiking UNet" in r.stderr
    r = _sdm("energy", "models/demo.pt", "--temperature", "0.5")
    assert r.returncode == 2 and "--temperature applies to Spiking-Diffusion" in r.stderr
