"""Reference-code checkpoints (SDDPM Spk_UNet, SDM Spk_UNet_TSM) imported into project checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdm.export.execute import GraphDenoiser
from sdm.export.lower import lower_unet
from sdm.export.nir_format import read_nir, write_nir
from sdm.export.verify import compare
from sdm.testing.oracles import if_step
from sdm.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sdm.train.neuron import IFNeuron
from sdm.train.reference_import import import_reference, reference_parameters
from sdm.train.sampling import model_from_checkpoint
from sdm.train.unet import count_parameters

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"
CASES = [("sddpm_ch16_T4", "sddpm", False, 4, False), ("sdm_tsm_ch16_T8", "sdm", True, 8, True)]

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"reference fixtures not found at {FIXTURES}")


def _ties(model, x, t) -> list[str]:
    """Neuron layers with a membrane exactly at threshold in this float32 run: there the spike depends
    on the last bit of the conv's rounding, which differs between builds of the same convolution."""
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, i, n=n: inputs.__setitem__(n, i[0]))
             for n, m in model.named_modules() if isinstance(m, IFNeuron)]
    with torch.no_grad():
        model(x, t)
    for h in hooks:
        h.remove()
    ties = []
    for name, cur in inputs.items():
        v = torch.zeros_like(cur[0])
        for k in range(cur.shape[0]):
            _, v, h = if_step(v, cur[k], 1.0)
            if bool((h == 1.0).any()):
                ties.append(name)
                break
    return ties


@pytest.mark.parametrize("name,source,ema,T,tsm", CASES)
def test_reference_eps_reproduced(tmp_path, name, source, ema, T, tsm):
    payload = import_reference(FIXTURES / f"{name}.ckpt.pt", source, ema=ema)
    save_checkpoint(tmp_path / "m.pt", payload)
    model, _, ckpt = model_from_checkpoint(tmp_path / "m.pt", use_ema=ema)
    cfg = model.cfg
    assert (cfg.T, cfg.tsm, cfg.ch, cfg.ch_mult, cfg.num_res_blocks) == (T, tsm, 16, (1, 2, 2, 4), 2)
    assert ckpt["imported_from"]["format"] == source and ckpt["stage"] == ("tsm" if tsm else "base")
    ref = torch.load(FIXTURES / f"{name}.ckpt.pt", weights_only=True)["net_model"]
    assert count_parameters(model) == reference_parameters(ref)
    if tsm:  # the gains are carried, not reset to 1
        torch.testing.assert_close(model.stem.conv_in.tsm_gain.detach(), ref["conv.tsmp"].flatten())
    expected = torch.load(FIXTURES / f"{name}.expected.pt", weights_only=True)
    x, t = expected["x"], expected["t"]
    ties = _ties(model, x, t)
    for m in (mod for n, mod in model.named_modules() if n in ties):
        m.threshold_scale = 1.0 + 1e-7  # break each exact tie the way the reference's rounding did
    with torch.no_grad():
        eps = model(x, t)
    assert float((eps - expected["eps"]).abs().max()) < 1e-5, ties
    assert len(ties) <= 2  # the SDM fixture has two exact ties at t = 999; anything more is a real difference


def test_imported_model_exports_exactly(tmp_path):
    payload = import_reference(FIXTURES / "sdm_tsm_ch16_T8.ckpt.pt", "sdm")
    save_checkpoint(tmp_path / "m.pt", payload)
    model, _, _ = model_from_checkpoint(tmp_path / "m.pt")
    write_nir(lower_unet(model.double(), dtype=np.float64), tmp_path / "m.nir")
    den = GraphDenoiser(read_nir(tmp_path / "m.nir"), torch.float64)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = compare(model, den, x, torch.tensor([5, 700]))
    assert r["total_mismatches"] == 0 and r["eps_max_abs_err"] < 1e-9


def test_wrong_files_are_refused_in_one_line(tmp_path):
    ours = tmp_path / "ours.pt"
    save_checkpoint(ours, {"model_config": {}, "model": {}})
    with pytest.raises(CheckpointError, match="no 'net_model'"):
        import_reference(ours, "sddpm")
    with pytest.raises(CheckpointError, match="use --from sdm"):
        import_reference(FIXTURES / "sdm_tsm_ch16_T8.ckpt.pt", "sddpm")
    with pytest.raises(CheckpointError, match="use --from sddpm"):
        import_reference(FIXTURES / "sddpm_ch16_T4.ckpt.pt", "sdm")
    with pytest.raises(CheckpointError, match="no 'ema_model'"):
        import_reference(FIXTURES / "sddpm_ch16_T4.ckpt.pt", "sddpm", ema=True)
    with pytest.raises(CheckpointError, match="contradicts"):
        import_reference(FIXTURES / "sdm_tsm_ch16_T8.ckpt.pt", "sdm", T=4)
    obj = torch.load(FIXTURES / "sddpm_ch16_T4.ckpt.pt", weights_only=True)
    obj["net_model"]["upblocks.0.conv1.weight"] = obj["net_model"]["upblocks.0.conv1.weight"][:, :5]
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="'upblocks.0.conv1.weight': shape"):
        import_reference(tmp_path / "bad.pt", "sddpm")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable reference checkpoint"):
        import_reference(tmp_path / "junk.pt", "sddpm")
    assert load_checkpoint(ours)  # the refusals wrote nothing
