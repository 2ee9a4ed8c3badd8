"""Spiking-Diffusion generated in Lava: every SDID call and the decoder spike for spike equal to PyTorch, the
same samples as the trained model, spike records that price to the same energy as PyTorch's hooks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_sd_export import images, tiny_pair

from sdm.energy.sd_report import sd_energy_report, sim_counts, torch_counts
from sdm.export.lower_sd import lower_spiking_diffusion
from sdm.export.sd_format import read_sd_nir, write_sd_nir
from sdm.neuromorphic.sd_run import simulate_sd
from sdm.train.absorbing import AbsorbingConfig
from sdm.train.sd_model import SpikingDiffusion, sample_absorbing


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    vq, sdid = tiny_pair(seed=4)
    path = tmp_path_factory.mktemp("sd") / "sd.nir"
    write_sd_nir(lower_spiking_diffusion(vq, sdid, dtype=np.float64), path)
    return path, SpikingDiffusion(vq, sdid, AbsorbingConfig(codebook_size=8, steps=5))


@pytest.fixture(scope="module")
def fused_run(tiny_file, tmp_path_factory):
    path, _ = tiny_file
    out = tmp_path_factory.mktemp("sim")
    return out, simulate_sd(path, out, n=2, temperature=0.9, seed=3, progress=False)


def test_fused_generation_is_spike_exact_and_the_models_samples(tiny_file, fused_run):
    _, model = tiny_file
    out, r = fused_run
    assert r["parts"]["sdid"]["calls"] == 5 and r["parts"]["decoder"]["calls"] == 1
    for role, p in r["parts"].items():
        assert p["total_spike_mismatches"] == 0, role
        assert max(p["output_max_abs_err_per_call"]) < 1e-9, role
    assert r["token_mismatches_vs_pytorch"] == 0 and r["final_image_max_abs_err"] < 1e-6
    _, tokens = sample_absorbing(model, 2, temperature=0.9, seed=3, batch_size=2, return_tokens=True)
    record = json.loads((out / "report.json").read_text())
    assert torch.equal(torch.tensor(record["sample_tokens"]), tokens)  # the trained model's own samples
    for name in ("samples.png", "reference.png", "sdid/spikes.h5", "decoder/spikes.h5"):
        assert (out / name).exists(), name


def test_energy_from_the_lava_record_equals_the_hooks(tiny_file, fused_run):
    """``sdm energy --sim``'s source: the Lava spikes of each call price exactly as PyTorch's hooks on the
    trained modules along the same generation."""
    path, model = tiny_file
    out, _ = fused_run
    graphs = read_sd_nir(path)
    lava = sim_counts(out, graphs)
    assert set(lava) == {"sdid", "decoder"}
    hooks = torch_counts(model, model.vqsvae, graphs, 2, 0.9, 3, images(2))
    assert lava["sdid"].timesteps == hooks["sdid"].timesteps == [5, 4, 3, 2, 1]
    for role in lava:
        for name, counts in lava[role].per_call.items():
            np.testing.assert_allclose(counts, hooks[role].per_call[name], rtol=0, atol=1e-12, err_msg=name)
    rep_lava = sd_energy_report(graphs, {**hooks, **lava}, "lava")
    rep_hooks = sd_energy_report(graphs, hooks, "hooks")
    assert rep_lava["total_pj_per_sample"] == pytest.approx(rep_hooks["total_pj_per_sample"], rel=1e-12)


def test_loihi_build_and_fixed_point(tiny_file, tmp_path):
    path, _ = tiny_file
    r = simulate_sd(path, tmp_path / "loihi", n=1, seed=1, build="loihi", progress=False)
    assert all(p["total_spike_mismatches"] == 0 for p in r["parts"].values())
    assert r["token_mismatches_vs_pytorch"] == 0
    fixed = simulate_sd(path, tmp_path / "fixed", n=1, seed=1, mode="fixed_pt", progress=False)
    for role, p in fixed["parts"].items():  # quantisation moves some spikes, not most
        assert max(p["spike_mismatch_rate"].values()) < 0.25, (role, p["spike_mismatch_rate"])
        errors = p["output_max_abs_err_per_call"]
        assert len(errors) == p["calls"] and all(np.isfinite(errors)) and max(errors) > 0  # reported, not hidden
    assert 0 <= fixed["token_mismatches_vs_pytorch"] <= fixed["tokens"]


def test_simulate_refuses_unet_options_and_vq_files(tiny_file, tmp_path):
    path, model = tiny_file
    r = subprocess.run([sys.executable, "-m", "sdm.cli", "simulate", str(path), "--out", str(tmp_path / "o"),
                        "--denoise-steps", "3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--denoise-steps applies to UNet denoisers" in r.stderr
    graphs = lower_spiking_diffusion(model.vqsvae, None)
    vq_file = write_sd_nir(graphs, tmp_path / "vq.nir")
    r = subprocess.run([sys.executable, "-m", "sdm.cli", "simulate", str(vq_file), "--out", str(tmp_path / "o2")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "has no SDID: it cannot generate" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_images_are_checked_against_the_pytorch_reference_image(fused_run):
    out, r = fused_run
    from PIL import Image

    a = np.asarray(Image.open(out / "samples.png"), dtype=np.int16)
    b = np.asarray(Image.open(out / "reference.png"), dtype=np.int16)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1
    assert torch.tensor(a).float().std() > 0  # not a blank grid
