"""The ``sdm`` command line: help, one-line errors with exit code 2, training and sampling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdm.cli import main
from sdm.train.checkpoint import load_checkpoint
from sdm.train.sampling import sweep_paths

pytestmark = pytest.mark.usefixtures("torch_threads")

SDM = Path(sys.executable).parent / "sdm"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("SDM_DEBUG", raising=False)


def fails(capsys, argv, *needles) -> str:
    """Run ``sdm argv`` in-process; it must exit 2 with exactly one 'sdm ...: error:' line on stderr."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"sdm {argv[0]}: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert str(n) in lines[0], (n, err)
    return lines[0]


# ----- help -----------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["sample", "--help"]])
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sdm")
    if argv[0] == "train":
        assert "--resume" in out and "--tsm" in out and "--ch-mult" in out
    if argv[0] == "sample":
        assert "--threshold-sweep" in out and "MODEL.pt" in out


def test_console_script_help_and_error(tmp_path):
    r = subprocess.run([str(SDM), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "sample" in r.stdout
    missing = tmp_path / "missing.pt"
    env = {k: v for k, v in os.environ.items() if k != "SDM_DEBUG"}
    r = subprocess.run([str(SDM), "sample", str(missing), "--device", "cpu"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"sdm sample: error: {missing}: no such file"]
    assert r.stdout == ""


# ----- train: bad input -----------------------------------------------------------------
def test_train_without_out(capsys):
    fails(capsys, ["train", "--steps", "1"], "--out")


def test_train_unknown_data_spec(capsys, tmp_path):
    fails(capsys, ["train", "--data", "nosuch", "--out", str(tmp_path / "o")], "'nosuch'")
    assert not (tmp_path / "o").exists()


def test_train_invalid_json_config(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"ch": 8,}\n')
    fails(capsys, ["train", "--config", str(bad), "--out", str(tmp_path / "o")], bad, "not valid JSON")


def test_train_resume_with_model_options(capsys, trained_ckpt, tmp_path):
    fails(capsys, ["train", "--resume", str(trained_ckpt), "--out", str(tmp_path), "--ch", "16"], "--resume")


def test_train_tsm_without_resume(capsys, tmp_path):
    fails(capsys, ["train", "--tsm", "--out", str(tmp_path)], "--resume")


def test_tsm_stage_needs_its_length(capsys, trained_ckpt):
    """A new TSM stage must not silently inherit the base run's step count."""
    fails(capsys, ["train", "--resume", str(trained_ckpt), "--tsm"], "--steps")
    assert not (trained_ckpt.parent / "tsm" / "model.pt").exists()


def test_train_resume_of_malicious_file(capsys, tmp_path):
    sentinel = tmp_path / "SENTINEL"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch '{sentinel}'",)

    evil = tmp_path / "model.pt"
    torch.save(Evil(), evil)
    fails(capsys, ["train", "--resume", str(evil), "--steps", "1", "--device", "cpu"], evil)
    assert not sentinel.exists()


# ----- train: a real (tiny) run through the CLI -----------------------------------------
def test_train_then_resume(capsys, tmp_path, tiny_model_flags):
    out = tmp_path / "run"
    args = ["train", "--data", "mnist-bundled", "--out", str(out), "--steps", "2", "--batch-size", "4",
            "--lr", "1e-3", "--seed", "7", "--device", "cpu", *tiny_model_flags]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out / 'model.pt'} (base stage, step 2" in stdout
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt["step"] == 2
    assert ckpt["model_config"]["img_ch"] == 1  # taken from the data set
    assert (ckpt["model_config"]["ch"], ckpt["model_config"]["ch_mult"], ckpt["model_config"]["T"]) == (8, [1, 2], 2)
    assert ckpt["train_config"]["lr"] == 1e-3 and ckpt["train_config"]["seed"] == 7

    # --resume with a larger --steps continues the same run in the checkpoint's directory
    assert main(["train", "--resume", str(out / "model.pt"), "--steps", "3", "--device", "cpu"]) == 0
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt["step"] == 3 and ckpt["train_config"]["lr"] == 1e-3


# ----- sample ---------------------------------------------------------------------------
def test_sample_missing_file(capsys, tmp_path):
    path = tmp_path / "nope.pt"
    fails(capsys, ["sample", str(path), "--device", "cpu", "--out", str(tmp_path / "g.png")], path, "no such file")
    assert not (tmp_path / "g.png").exists()


def test_sample_corrupt_file(capsys, trained_ckpt, tmp_path):
    path = tmp_path / "model.pt"
    data = trained_ckpt.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    fails(capsys, ["sample", str(path), "--device", "cpu", "--out", str(tmp_path / "g.png")], path)
    assert not (tmp_path / "g.png").exists()


def test_sample_malicious_pickle(capsys, tmp_path):
    sentinel = tmp_path / "SENTINEL"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch '{sentinel}'",)

    path = tmp_path / "model.pt"
    torch.save({"format": "sdm-checkpoint", "version": 1, "model_config": {}, "model": Evil()}, path)
    fails(capsys, ["sample", str(path), "--device", "cpu", "--out", str(tmp_path / "g.png")], path, "unsafe")
    assert not sentinel.exists()


def test_sample_checkpoint_of_another_architecture(capsys, trained_ckpt, tmp_path):
    ckpt = load_checkpoint(trained_ckpt)
    ckpt["model_config"]["ch"] = 16  # weights no longer fit
    path = tmp_path / "model.pt"
    torch.save(ckpt, path)
    fails(capsys, ["sample", str(path), "--device", "cpu", "--out", str(tmp_path / "g.png")], path,
          "does not match")


def _grid(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "L"
        return np.asarray(img)


def test_sample_writes_png_grid(capsys, trained_ckpt, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", str(trained_ckpt), "-n", "4", "--steps", "2", "--out", str(out), "--device", "cpu"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    g = _grid(out)
    # 2 x 2 grid of 16 px images with 2 px padding, enlarged 2x: (2 * (16 + 2) + 2) * 2 = 76
    assert g.shape == (76, 76)
    assert g.std() > 0  # not a blank image
    assert sorted(os.listdir(tmp_path)) == ["grid.png"]

    # same seed -> same grid; another seed -> another grid
    again = tmp_path / "again.png"
    assert main(["sample", str(trained_ckpt), "-n", "4", "--steps", "2", "--out", str(again), "--device", "cpu"]) == 0
    assert np.array_equal(_grid(again), g)
    other = tmp_path / "other.png"
    assert main(["sample", str(trained_ckpt), "-n", "4", "--steps", "2", "--out", str(other), "--device", "cpu",
                 "--seed", "1"]) == 0
    assert not np.array_equal(_grid(other), g)


def test_sample_threshold_sweep(capsys, trained_ckpt, tmp_path):
    out = tmp_path / "grid.png"
    scales = [0.997, 1.0, 1.003]
    assert main(["sample", str(trained_ckpt), "-n", "4", "--steps", "2", "--out", str(out), "--device", "cpu",
                 "--threshold-sweep", "0.997,1.0,1.003"]) == 0
    expected = sweep_paths(out, scales)
    assert [p.name for p in expected] == ["grid_th0.997.png", "grid_th1.png", "grid_th1.003.png"]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in expected)  # and no plain grid.png
    low, mid, high = (_grid(p) for p in expected)
    assert low.shape == mid.shape == high.shape == (76, 76)
    # Same starting noise for every scale, so any difference is the threshold's doing: a +-0.3 %
    # threshold moves a few spikes of neurons whose membrane is within 0.3 % of theta, which the
    # DDIM x0-prediction amplifies into visible pixels.
    assert not np.array_equal(low, high)

    # the 1.0 grid of the sweep is the plain grid
    plain = tmp_path / "plain.png"
    assert main(["sample", str(trained_ckpt), "-n", "4", "--steps", "2", "--out", str(plain), "--device", "cpu"]) == 0
    assert np.array_equal(_grid(plain), mid)


def test_sample_bad_options(capsys, trained_ckpt, tmp_path):
    fails(capsys, ["sample", str(trained_ckpt), "-n", "0", "--device", "cpu"], "-n")
    fails(capsys, ["sample", str(trained_ckpt), "--threshold-scale", "0", "-n", "1", "--steps", "1",
                   "--device", "cpu", "--out", str(tmp_path / "g.png")], "threshold")
    with pytest.raises(SystemExit) as info:
        main(["sample", str(trained_ckpt), "--threshold-sweep", "0.9,abc"])
    assert info.value.code == 2
    assert "comma-separated numbers" in capsys.readouterr().err


# ----- version, shared options, the error wrapper ------------------------------------------
def test_version(capsys):
    import sdm

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"sdm {sdm.__version__}\n"


# Which of the shared options (sdm/commands/options.py) each command has.
SHARED = ("--seed", "--threads", "--device", "--no-ema", "--batch-size")
SHARED_BY_COMMAND = {
    "train": {"--seed", "--threads", "--device", "--batch-size"},
    "sample": set(SHARED),
    "export-nir": {"--threads", "--no-ema"},
    "import-nir": {"--seed", "--threads", "--no-ema"},
    "simulate": {"--seed", "--threads"},
    "convert": {"--seed", "--threads", "--no-ema", "--batch-size"},
    "import-checkpoint": {"--threads"},
    "moments": set(SHARED),
    "train-classifier": {"--seed", "--threads", "--device", "--batch-size"},
    "eval": set(SHARED),
    "energy": {"--seed", "--threads", "--no-ema"},
    "demo": {"--seed", "--threads", "--no-ema"},
}


def _help(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


def test_every_command_is_in_the_table(capsys):
    out = _help(capsys, ["--help"])
    for command in SHARED_BY_COMMAND:
        assert command in out
    from sdm.commands import COMMANDS

    assert {c.replace("_", "-") for c in COMMANDS} == set(SHARED_BY_COMMAND)


@pytest.mark.parametrize("command", sorted(SHARED_BY_COMMAND))
def test_subcommand_help_lists_its_shared_options(capsys, command):
    out = _help(capsys, [command, "--help"])
    assert out.startswith(f"usage: sdm {command}")
    assert "common options:" in out
    listed = {flag for flag in SHARED if f"  {flag}" in out}
    assert listed == SHARED_BY_COMMAND[command], out


def test_export_nir_script_has_the_same_options(capsys):
    from sdm.cli import export_nir_main

    with pytest.raises(SystemExit) as info:
        export_nir_main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: export-nir")
    assert {flag for flag in SHARED if f"  {flag}" in out} == SHARED_BY_COMMAND["export-nir"]
    assert "--threshold-scale" in out and "MODEL.pt" in out


def test_shared_option_defaults_are_per_command():
    from sdm.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["sample", "m.pt"]).batch_size == 64
    assert parse(["convert", "q.pt", "--out", "s.pt"]).batch_size == 16
    assert parse(["eval", "m.pt"]).batch_size == 64
    assert parse(["train-classifier", "--out", "c.pt"]).batch_size == 64
    a = parse(["train"])  # None: the configuration (file or TrainConfig) decides
    assert (a.batch_size, a.seed, a.threads, a.device) == (None, None, None, None)
    for argv in (["sample", "m.pt"], ["energy", "m.pt"], ["simulate", "m.nir", "--out", "d"], ["demo"],
                 ["import-nir", "m.nir"], ["eval", "m.pt"], ["convert", "q.pt", "--out", "s.pt"]):
        a = parse(argv)
        assert a.seed == 0 and a.threads is None, argv
    for argv in (["sample", "m.pt"], ["energy", "m.pt"], ["export-nir", "m.pt"], ["import-nir", "m.nir"],
                 ["eval", "m.pt"], ["convert", "q.pt", "--out", "s.pt"], ["demo"]):
        assert parse(argv).no_ema is False and parse([*argv, "--no-ema"]).no_ema is True, argv


def test_bad_shared_options(capsys, trained_ckpt):
    for argv, needle in ((["sample", str(trained_ckpt), "--threads", "-1"], "--threads"),
                         (["sample", str(trained_ckpt), "--batch-size", "0"], "--batch-size"),
                         (["energy", str(trained_ckpt), "--threads", "two"], "--threads")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert needle in capsys.readouterr().err
    fails(capsys, ["sample", str(trained_ckpt), "-n", "1", "--steps", "1", "--device", "nosuch"], "--device", "nosuch")
    fails(capsys, ["train", "--out", "unused", "--device", "nosuch"], "--device")
    fails(capsys, ["energy", str(trained_ckpt), "-n", "0"], "-n")


def test_threads_option_sets_torch_threads(capsys, trained_ckpt, tmp_path, torch_threads):
    try:
        assert main(["energy", str(trained_ckpt), "--denoise-steps", "1", "-n", "1", "--threads", "1",
                     "--format", "json", "--out", str(tmp_path / "e.json")]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(torch_threads)


def test_energy_no_ema(capsys, trained_ckpt, tmp_path):
    """`sdm energy --no-ema` prices the raw weights: the API's use_ema=False, not the EMA report."""
    import json

    from sdm.energy.report import energy_report

    ckpt = load_checkpoint(trained_ckpt)
    assert ckpt["ema"] is not None
    assert any(not torch.equal(ckpt["ema"][k], v) for k, v in ckpt["model"].items())  # the fixture's EMA differs
    args = ["energy", str(trained_ckpt), "--denoise-steps", "2", "-n", "2", "--format", "json"]
    assert main([*args, "--out", str(tmp_path / "ema.json")]) == 0
    assert main([*args, "--no-ema", "--out", str(tmp_path / "raw.json")]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / 'ema.json'}", f"wrote {tmp_path / 'raw.json'}"]
    ema = json.loads((tmp_path / "ema.json").read_text())
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert raw["total_pj_per_call"] != ema["total_pj_per_call"]
    assert [r["input_rate"] for r in raw["rows"]] != [r["input_rate"] for r in ema["rows"]]
    api = energy_report(trained_ckpt, denoise_steps=2, n=2, use_ema=False)
    assert raw["total_pj_per_call"] == pytest.approx(api["total_pj_per_call"])


def test_internal_value_error_keeps_its_traceback(monkeypatch, capsys, trained_ckpt):
    """Only the project's own errors become one line: a plain ValueError is a bug and propagates."""
    from sdm.energy import report
    from sdm.errors import ConfigError

    def bug(*a, **k):
        raise ValueError("an internal bug")

    monkeypatch.setattr(report, "energy_report", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["energy", str(trained_ckpt)])

    def user_error(*a, **k):
        raise ConfigError("a bad option")

    monkeypatch.setattr(report, "energy_report", user_error)
    assert fails(capsys, ["energy", str(trained_ckpt)]) == "sdm energy: error: a bad option"


def test_keyboard_interrupt_exits_130(monkeypatch, capsys, trained_ckpt):
    from sdm.export import api

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "export_checkpoint", interrupted)
    assert main(["export-nir", str(trained_ckpt)]) == 130
    assert capsys.readouterr().err.strip() == "sdm: interrupted"


def test_demo_constants_live_with_the_command():
    from sdm.commands.demo import DEMO_CHECKPOINT, DEMO_MODEL, DEMO_TRAIN

    assert DEMO_CHECKPOINT.name == "demo.pt" and DEMO_CHECKPOINT.parent.name == "models"
    assert DEMO_CHECKPOINT.parent.parent == Path(__file__).resolve().parent.parent
    assert DEMO_MODEL["img_ch"] == 1 and DEMO_TRAIN["data"] == "mnist-bundled"


def test_import_nir_samples_and_compares(capsys, trained_ckpt, tmp_path):
    nir_file = tmp_path / "m.nir"
    assert main(["export-nir", str(trained_ckpt), "-o", str(nir_file), "--dtype", "float64", "--threads", "1"]) == 0
    grid = tmp_path / "g.png"
    assert main(["import-nir", str(nir_file), "--dtype", "float64", "--compare", str(trained_ckpt),
                 "--sample", str(grid), "-n", "4", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert " 0 of " in out and f"wrote {grid}" in out
    assert _grid(grid).shape == (76, 76)
    # the raw weights are another model than the EMA export
    assert main(["import-nir", str(nir_file), "--dtype", "float64", "--compare", str(trained_ckpt), "--no-ema"]) == 0
    assert " 0 of " not in capsys.readouterr().out


# ----- the SDM paper's samplers and reference checkpoints ------------------------------------
def test_sampler_names_agree_with_the_samplers_module():
    from sdm.commands.options import SAMPLERS
    from sdm.train.samplers import SAMPLERS as IMPLEMENTED

    assert SAMPLERS == IMPLEMENTED


def test_moments_then_analytic_and_dpm_solver_samples(tmp_path, capsys):
    """`sdm moments` stores Gamma in the checkpoint; the analytic samplers refuse a model without it,
    then sample with it; DPM-Solver samples; the moments travel into the NIR host section."""
    import torch

    from sdm.export.nir_format import read_nir
    from sdm.train.checkpoint import load_checkpoint, save_checkpoint
    from sdm.train.unet import SpikingUNet, UNetConfig

    cfg = UNetConfig(img_ch=1, img_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, T=2)
    torch.manual_seed(0)
    model = SpikingUNet(cfg).eval()
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, {"model_config": cfg.to_dict(), "model": model.state_dict(),
                           "data": {"spec": "mnist-bundled"}})
    assert main(["sample", str(ckpt), "--sampler", "analytic-ddim", "--steps", "3", "-n", "2",
                 "--out", str(tmp_path / "a.png")]) == 2
    assert "sdm moments" in capsys.readouterr().err
    assert main(["moments", str(ckpt), "-n", "4", "--points", "5", "--batch-size", "4"]) == 0
    m = load_checkpoint(ckpt)["moments"]
    assert m["timesteps"].tolist() == [0, 250, 500, 749, 999] and m["n"] == 4 and (m["gamma"] > 0).all()
    for sampler in ("analytic-ddpm", "analytic-ddim", "dpm-solver", "dpm-solver++"):
        out = tmp_path / f"{sampler}.png"
        assert main(["sample", str(ckpt), "--sampler", sampler, "--steps", "3", "-n", "2", "--order", "3",
                     "--out", str(out)]) == 0 and out.stat().st_size > 0
    assert main(["export-nir", str(ckpt), "-o", str(tmp_path / "m.nir")]) == 0
    host = read_nir(tmp_path / "m.nir").host
    assert host.moments is not None and host.moments.gamma.tolist() == m["gamma"].tolist()
    assert main(["energy", str(ckpt), "--sampler", "analytic-ddim", "--denoise-steps", "2", "-n", "1",
                 "--format", "json"]) == 0


def test_import_checkpoint_command(tmp_path, capsys):
    from pathlib import Path

    fixtures = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"
    if not fixtures.is_dir():
        pytest.skip(f"reference fixtures not found at {fixtures}")
    out = tmp_path / "sdm.pt"
    assert main(["import-checkpoint", str(fixtures / "sdm_tsm_ch16_T8.ckpt.pt"), "--from", "sdm", "--ema",
                 "--out", str(out)]) == 0
    assert "T=8 with TSM gains" in capsys.readouterr().out
    assert main(["import-checkpoint", str(fixtures / "sdm_tsm_ch16_T8.ckpt.pt"), "--from", "sddpm",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "use --from sdm" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


# ----- Spiking-Diffusion through the CLI ---------------------------------------------------------
def test_spiking_diffusion_train_resume_sample(tmp_path, capsys):
    """Stage 1 (VQ-SVAE), stage 2 (SDID on its tokens), an exact-family resume, a grid, and the
    UNet-only options refused instead of ignored."""
    from sdm.train.checkpoint import load_checkpoint
    from sdm.train.sd_model import checkpoint_kind

    vq, ab, grid = tmp_path / "vq", tmp_path / "ab", tmp_path / "g.png"
    assert main(["train", "--model", "vq-svae", "--data", "mnist-bundled", "--out", str(vq), "--steps", "2",
                 "--batch-size", "4", "--T", "4", "--channels", "8,8", "--codebook-size", "32",
                 "--holdout", "4990"]) == 0
    first = load_checkpoint(vq / "model.pt")
    assert checkpoint_kind(first) == "vq-svae" and first["data"]["images"] == 10
    assert (first["model_config"]["T"], first["model_config"]["channels"], first["model_config"]["codebook_size"]) \
        == (4, [8, 8], 32)
    assert main(["train", "--resume", str(vq / "model.pt"), "--steps", "3"]) == 0  # the family is kept
    assert load_checkpoint(vq / "model.pt")["step"] == 3
    assert main(["train", "--model", "absorbing", "--vqvae", str(vq / "model.pt"), "--data", "mnist-bundled",
                 "--out", str(ab), "--steps", "2", "--batch-size", "4", "--T", "2", "--channels", "8,16,8",
                 "--inputs", "onehot", "--ema-decay", "0.9"]) == 0
    second = load_checkpoint(ab / "model.pt")
    assert second["model_config"] == {"codebook_size": 32, "steps": 49, "T": 2, "channels": [8, 16, 8], "tau": 2.0,
                                      "inputs": "onehot"} and second["ema"] is not None
    assert main(["sample", str(ab / "model.pt"), "-n", "2", "--temperature", "0.9", "--out", str(grid)]) == 0
    assert grid.stat().st_size > 0
    capsys.readouterr()
    for argv, flag in ((["train", "--model", "vq-svae", "--ch", "4", "--out", str(tmp_path / "x")], "--ch"),
                       (["train", "--model", "vq-svae", "--inputs", "raw", "--out", str(tmp_path / "x")], "--inputs"),
                       (["train", "--channels", "4,8", "--out", str(tmp_path / "x")], "--channels"),
                       (["train", "--resume", str(ab / "model.pt"), "--channels", "4,4"], "--channels"),
                       (["train", "--model", "vq-svae", "--channels", "4,0", "--out", str(tmp_path / "x")],
                        "--channels"),
                       (["train", "--model", "absorbing", "--out", str(tmp_path / "y")], "--vqvae"),
                       (["sample", str(ab / "model.pt"), "--threshold-scale", "0.99", "--out", str(tmp_path / "h.png")],
                        "--threshold-scale")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], err
    assert not (tmp_path / "x").exists() and not (tmp_path / "h.png").exists()
