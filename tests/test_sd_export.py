"""Spiking-Diffusion to the spiking graph IR and NIR: exact lowering (transposed convs, LIF, the codebook),
the one-file format, and generation from the file alone."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from sdm.errors import ConfigError
from sdm.export.execute import GraphModule
from sdm.export.ir import AnalogInput, Conv, Junction, Output, SNNGraph, Upsample
from sdm.export.lower_sd import lower_spiking_diffusion, transposed_conv
from sdm.export.nir_format import NIRFormatError, read_nir
from sdm.export.sd_execute import sample, torch_calls
from sdm.export.sd_format import is_sd_file, read_sd_nir, write_sd_nir
from sdm.export.sd_verify import compare_sd
from sdm.train.absorbing import AbsorbingConfig
from sdm.train.sd_model import SpikingDiffusion, sample_absorbing
from sdm.train.sdid import SDID, SDIDConfig
from sdm.train.vqsvae import VQSVAE, VQSVAEConfig

SD_MODEL = "models/sd-absorbing/model.pt"


def _calibrate(model: nn.Module, run, seed: int) -> None:
    """BatchNorm statistics of one training-mode pass, then random gains and shifts that make every
    layer fire (5-40 %): a silent layer would test nothing."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
    model.train()
    with torch.no_grad():
        run()
        for bn in bns:
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 1.0)
            bn.bias.copy_(torch.rand(bn.num_features, generator=g) * 0.8 + 0.4)
    model.eval()


def tiny_pair(inputs: str = "raw", seed: int = 0, dtype=torch.float64) -> tuple[VQSVAE, SDID]:
    """A VQ-SVAE (16 px, 4 x 4 tokens, 8 codes) and an SDID for it, with trained-looking statistics."""
    torch.manual_seed(seed)
    vq = VQSVAE(VQSVAEConfig(img_size=16, channels=(4, 6), latent_dim=4, codebook_size=8, T=6))
    sdid = SDID(SDIDConfig(codebook_size=8, steps=5, T=6, channels=(6, 8, 6), inputs=inputs))
    x = images(8, seed=seed + 100, dtype=torch.float32)
    _calibrate(vq, lambda: vq(x), seed)
    tokens = torch.randint(0, 9, (8, 4, 4), generator=torch.Generator().manual_seed(seed))
    _calibrate(sdid, lambda: sdid(tokens, torch.randint(1, 6, (8,))), seed + 1)
    with torch.no_grad():  # codes near the encoder's features, so that the tokens vary
        vq.codebook.weight.copy_(vq.features(vq.encode(x)).permute(0, 2, 3, 1).reshape(-1, 4)[::16][:8])
    return vq.to(dtype), sdid.to(dtype)


def images(n: int = 6, size: int = 16, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, size, size, generator=g) * 2 - 1).to(dtype)


@pytest.mark.parametrize("stride,padding,kernel", [(1, 1, 3), (2, 1, 3), (2, 0, 2), (3, 2, 5)])
def test_transposed_conv_is_zero_insertion_and_a_flipped_conv(stride, padding, kernel):
    torch.manual_seed(stride * 10 + kernel)
    conv = nn.ConvTranspose2d(3, 5, kernel, stride=stride, padding=padding, output_padding=stride - 1).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    weight, bias, scale, pad = transposed_conv(conv)
    nodes = [AnalogInput("x", (3, 6, 6)), Upsample("up", (3, 6, 6), scale=scale, mode="zeros")]
    nodes.append(Conv("conv", weight.numpy(), bias.numpy(), 1, pad, nodes[1].shape))
    nodes += [Junction("j", nodes[2].shape), Output("out", nodes[2].shape)]
    graph = SNNGraph({n.name: n for n in nodes}, [("x", "up"), ("up", "conv"), ("conv", "j"), ("j", "out")])
    y = GraphModule(graph, T=1, dtype=torch.float64).run({"x": x})[0]
    assert y.shape == conv(x).shape
    torch.testing.assert_close(y, conv(x), rtol=0, atol=1e-12)


def test_transposed_conv_refuses_what_it_cannot_express_exactly():
    with pytest.raises(ConfigError, match="output_padding 0 must be stride - 1 = 1"):
        transposed_conv(nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1))
    with pytest.raises(ConfigError, match="dilation"):
        transposed_conv(nn.ConvTranspose2d(2, 2, 3, dilation=2))


@pytest.mark.parametrize("inputs", ["raw", "onehot"])
def test_every_part_lowers_exactly(inputs):
    vq, sdid = tiny_pair(inputs)
    graphs = lower_spiking_diffusion(vq, sdid, dtype=np.float64)
    result = compare_sd(graphs, vq, sdid, images(), dtype=torch.float64)
    assert set(result) == {"sdid", "decoder", "encoder"}
    for role, r in result.items():
        assert r["total_mismatches"] == 0, role
        assert all(layer["spikes"] > 0 for layer in r["layers"].values()), f"{role}: a silent layer tests nothing"
    assert result["encoder"]["token_mismatches"] == 0
    assert result["decoder"]["max_abs_err"] < 1e-12 and result["sdid"]["max_abs_err"] < 1e-10
    dec = graphs["decoder"].graph
    assert [n.mode for n in dec.of_type(Upsample)] == ["zeros", "zeros"]  # the two stride-2 transposed convs
    assert all(n.params.input_scale == 0.5 and n.params.decay == 0.5 for g in graphs.parts.values()
               for n in g.graph.nodes.values() if hasattr(n, "params"))


def test_lowering_needs_eval_mode():
    vq, sdid = tiny_pair()
    with pytest.raises(ConfigError, match="eval mode"):
        lower_spiking_diffusion(vq.train(), sdid)


def test_file_round_trip_is_exact_and_standard_nir(tmp_path):
    import nir

    vq, sdid = tiny_pair("onehot", seed=3)
    path = write_sd_nir(lower_spiking_diffusion(vq, sdid, dtype=np.float64), tmp_path / "sd.nir")
    assert is_sd_file(path)
    ng = nir.read(path)  # unmodified NIR, type checking on
    assert {"sdid", "decoder", "encoder"} <= set(ng.nodes)
    lifs = [n for n in ng.nodes["sdid"].nodes.values() if isinstance(n, nir.LIF)]
    assert len(lifs) == 3 and all(np.all(n.tau == 2.0) and np.all(n.r == 1.0) for n in lifs)  # spikingjelly's LIF
    back = read_sd_nir(path)
    result = compare_sd(back, vq, sdid, images(seed=1), dtype=torch.float64)
    assert sum(r["total_mismatches"] for r in result.values()) == 0
    assert result["encoder"]["token_mismatches"] == 0 and result["sdid"]["max_abs_err"] < 1e-10
    with pytest.raises(NIRFormatError, match="a Spiking-Diffusion file"):
        read_nir(path)


def test_the_file_alone_generates_the_models_samples(tmp_path):
    vq, sdid = tiny_pair(seed=5)
    path = write_sd_nir(lower_spiking_diffusion(vq, sdid, dtype=np.float64), tmp_path / "sd.nir")
    graphs = read_sd_nir(path)
    calls = torch_calls(graphs, torch.float64)
    x, tokens = sample(graphs, calls["sdid"], calls["decoder"], 3, temperature=0.8, seed=7, batch_size=2)
    model = SpikingDiffusion(vq, sdid, AbsorbingConfig(codebook_size=8, steps=5))
    x_ref, tokens_ref = sample_absorbing(model, 3, temperature=0.8, seed=7, batch_size=2, return_tokens=True)
    assert torch.equal(tokens, tokens_ref) and calls["sdid"].calls == 2 * 5
    torch.testing.assert_close(x, x_ref.to(x.dtype), rtol=0, atol=1e-12)


def test_the_committed_models_file_samples_as_the_checkpoint_in_float32(tmp_path):
    from sdm.export.api import export_checkpoint
    from sdm.train.sd_model import load_absorbing

    export_checkpoint(SD_MODEL, tmp_path / "sd.nir")
    graphs = read_sd_nir(tmp_path / "sd.nir")
    calls = torch_calls(graphs)
    _, tokens = sample(graphs, calls["sdid"], calls["decoder"], 4, seed=11)
    _, tokens_ref = sample_absorbing(load_absorbing(SD_MODEL), 4, seed=11, return_tokens=True)
    assert torch.equal(tokens, tokens_ref)


def test_damaged_host_sections_are_named(tmp_path):
    vq, sdid = tiny_pair()
    path = write_sd_nir(lower_spiking_diffusion(vq, sdid), tmp_path / "sd.nir")
    with h5py.File(path, "r+") as f:
        del f["node/metadata/sd_host/decoder/codebook"]
    with pytest.raises(NIRFormatError, match="sd_host decoder is missing 'codebook'"):
        read_sd_nir(path)
    path = write_sd_nir(lower_spiking_diffusion(vq, sdid), tmp_path / "sd2.nir")
    with h5py.File(path, "r+") as f:
        f["node/metadata/sd_host/sdid/codebook_size"][()] = 9
    with pytest.raises(NIRFormatError, match="sdid: output has 8 channels, the host reads 9"):
        read_sd_nir(path)
    path = write_sd_nir(lower_spiking_diffusion(vq, sdid), tmp_path / "sd3.nir")
    with h5py.File(path, "r+") as f:
        del f["node/metadata/sd_host/encoder/bias"]
        f["node/metadata/sd_host/encoder/bias"] = np.zeros(9)
    with pytest.raises(NIRFormatError, match="encoder: output has 8 channels, the host reads 9"):
        read_sd_nir(path)


def _sdm(*args):
    return subprocess.run([sys.executable, "-m", "sdm.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_export_compare_and_sample_the_committed_model(tmp_path):
    out, grid = tmp_path / "sd.nir", tmp_path / "grid.png"
    r = _sdm("export-nir", SD_MODEL, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "Spiking-Diffusion (absorbing checkpoint), 3 graphs" in r.stdout and "upsample_zeros" in r.stdout
    r = _sdm("import-nir", str(out), "--compare", SD_MODEL, "--sample", str(grid), "-n", "4")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("compared")]
    assert len(lines) == 3 and all(": 0 of " in line for line in lines), r.stdout
    assert "0 of 392 tokens differ" in r.stdout and grid.exists()
    r = _sdm("export-nir", SD_MODEL, "-o", str(tmp_path / "x.nir"), "--threshold-scale", "1.1")
    assert r.returncode == 2 and "threshold guidance is for the spiking UNet" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.nir").exists()
