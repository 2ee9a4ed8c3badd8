"""Bad input to every command: one line on stderr, exit code 2, and nothing on disk touched.

A table-driven battery (docs/failure-behaviour.md): bad option values, an output that is one of
the inputs, an occupied run without --force, bad destinations and argparse's own errors.  Each
case must exit with code 2 and print exactly one non-empty line on stderr, without a traceback,
that names the option or path at fault, and leave every file of the fixture folder byte-identical
(no new file either: no temporary file, lock or directory left behind).  The positive cases at the
end show that --force replaces on purpose and that resuming into a run's own directory works.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from sdm.cli import main
from sdm.train.checkpoint import load_checkpoint, save_checkpoint
from sdm.train.unet import SpikingUNet, UNetConfig

pytestmark = pytest.mark.usefixtures("torch_threads")

CFG = UNetConfig(img_ch=1, img_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, T=2)
TINY = ["--ch", "8", "--ch-mult", "1,2", "--num-res-blocks", "1", "--T", "2", "--img-size", "8"]
LONG_NAME = "x" * 300 + ".png"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("SDM_DEBUG", raising=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """M.pt (a plain checkpoint), X.nir (its export), run/model.pt and run2/model.pt (two trained runs),
    notes.txt, a directory adir and a file afile."""
    d = tmp_path_factory.mktemp("bad_input")
    torch.manual_seed(0)
    save_checkpoint(d / "M.pt", {"model_config": CFG.to_dict(), "model": SpikingUNet(CFG).state_dict(),
                                 "data": {"spec": "mnist-bundled"}})
    assert main(["export-nir", str(d / "M.pt"), "-o", str(d / "X.nir")]) == 0
    assert main(["train", "--data", "mnist-bundled", "--out", str(d / "run"), "--steps", "1", "--batch-size", "2",
                 "--device", "cpu", "--seed", "1", *TINY]) == 0
    (d / "run2").mkdir()
    shutil.copyfile(d / "run" / "model.pt", d / "run2" / "model.pt")  # another run, same bytes
    (d / "notes.txt").write_text("my notes\n")
    (d / "adir").mkdir()
    (d / "afile").write_text("a file\n")
    return d


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root``: relative path -> sha256 (directories: 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(argv) -> int:
    """``main(argv)``'s exit code; argparse's errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


# (id, argv, what the error line must contain); paths are relative to the fixture folder (the cwd)
CASES = [
    # ----- sample
    ("sample-out-is-input", ["sample", "M.pt", "--out", "M.pt"], ["--out", "M.pt", "input"]),
    ("sample-out-empty", ["sample", "M.pt", "--out", ""], ["--out", "empty"]),
    ("sample-out-directory", ["sample", "M.pt", "--out", "adir"], ["--out", "adir", "directory"]),
    ("sample-out-trailing-slash", ["sample", "M.pt", "--out", "new/"], ["--out", "new/"]),
    ("sample-out-under-a-file", ["sample", "M.pt", "--out", "afile/g.png"], ["afile", "not a directory"]),
    ("sample-out-unwritable", ["sample", "M.pt", "--out", "/proc/sdm-grid.png"], ["--out", "/proc"]),
    ("sample-out-name-too-long", ["sample", "M.pt", "--out", LONG_NAME], ["--out", "too long"]),
    ("sample-out-other-kind", ["sample", "M.pt", "--out", "notes.txt"], ["notes.txt", "--force"]),
    ("sample-out-trained-run", ["sample", "M.pt", "--out", "run/model.pt"], ["run/model.pt", "trained run"]),
    ("sample-n-0", ["sample", "M.pt", "-n", "0"], ["-n"]),
    ("sample-n-not-int", ["sample", "M.pt", "-n", "two"], ["-n", "two"]),
    ("sample-steps-0", ["sample", "M.pt", "--steps", "0"], ["--steps"]),
    ("sample-eta-nan", ["sample", "M.pt", "--eta", "nan"], ["--eta"]),
    ("sample-eta-negative", ["sample", "M.pt", "--eta", "-0.5"], ["--eta"]),
    ("sample-threshold-inf", ["sample", "M.pt", "--threshold-scale", "inf"], ["--threshold-scale"]),
    ("sample-threshold-nan", ["sample", "M.pt", "--threshold-scale", "nan"], ["--threshold-scale"]),
    ("sample-threshold-0", ["sample", "M.pt", "--threshold-scale", "0"], ["--threshold-scale"]),
    ("sample-threshold-negative", ["sample", "M.pt", "--threshold-scale", "-1"], ["--threshold-scale"]),
    ("sample-sweep-twice", ["sample", "M.pt", "--threshold-sweep", "1,1.0"], ["--threshold-sweep"]),
    ("sample-sweep-nan", ["sample", "M.pt", "--threshold-sweep", "1,nan"], ["--threshold-sweep"]),
    ("sample-scale-0", ["sample", "M.pt", "--scale", "0"], ["--scale"]),
    pytest.param("sample-cuda", ["sample", "M.pt", "--device", "cuda"], ["--device", "no CUDA device"],
                 marks=NO_CUDA, id="sample-cuda"),
    ("sample-unknown-option", ["sample", "M.pt", "--bogus"], ["--bogus"]),
    ("sample-bad-choice", ["sample", "M.pt", "--sampler", "nosuch"], ["--sampler", "nosuch"]),
    ("sample-missing-model", ["sample"], ["MODEL.pt"]),
    # ----- export-nir
    ("export-out-is-input", ["export-nir", "M.pt", "-o", "M.pt"], ["-o/--out", "M.pt", "input"]),
    ("export-out-empty", ["export-nir", "M.pt", "-o", ""], ["-o/--out", "empty"]),
    ("export-default-is-input", ["export-nir", "X.nir"], ["X.nir", "input"]),
    ("export-out-other-kind", ["export-nir", "M.pt", "-o", "notes.txt"], ["notes.txt", "NIR", "--force"]),
    ("export-out-directory", ["export-nir", "M.pt", "-o", "adir"], ["adir", "directory"]),
    ("export-threshold-0", ["export-nir", "M.pt", "-o", "new.nir", "--threshold-scale", "0"], ["--threshold-scale"]),
    ("export-bad-dtype", ["export-nir", "M.pt", "--dtype", "float16"], ["--dtype", "float16"]),
    # ----- energy
    ("energy-out-is-input", ["energy", "M.pt", "--out", "M.pt"], ["--out", "M.pt", "input"]),
    ("energy-plot-is-input", ["energy", "M.pt", "--plot", "M.pt"], ["--plot", "M.pt", "input"]),
    ("energy-out-is-plot", ["energy", "M.pt", "--out", "e.png", "--plot", "e.png"], ["--plot", "e.png"]),
    ("energy-json-over-text", ["energy", "M.pt", "--format", "json", "--out", "notes.txt"], ["notes.txt", "JSON"]),
    ("energy-plot-under-a-file", ["energy", "M.pt", "--plot", "afile/e.png"], ["--plot", "afile"]),
    ("energy-n-0", ["energy", "M.pt", "-n", "0"], ["-n"]),
    ("energy-denoise-steps-0", ["energy", "M.pt", "--denoise-steps", "0"], ["--denoise-steps"]),
    ("energy-bad-format", ["energy", "M.pt", "--format", "xml"], ["--format", "xml"]),
    # ----- import-nir
    ("import-nir-sample-is-input", ["import-nir", "X.nir", "--sample", "X.nir"], ["--sample", "X.nir", "input"]),
    ("import-nir-sample-is-compare", ["import-nir", "X.nir", "--compare", "M.pt", "--sample", "M.pt"],
     ["--sample", "M.pt", "--compare"]),
    ("import-nir-n-0", ["import-nir", "X.nir", "-n", "0"], ["-n"]),
    ("import-nir-steps-0", ["import-nir", "X.nir", "--steps", "0"], ["--steps"]),
    # ----- simulate
    ("simulate-out-is-input", ["simulate", "X.nir", "--out", "X.nir"], ["--out", "X.nir", "input"]),
    ("simulate-out-is-a-file", ["simulate", "X.nir", "--out", "notes.txt"], ["--out", "notes.txt", "not a directory"]),
    ("simulate-threshold-nan", ["simulate", "X.nir", "--out", "sim", "--threshold-scale", "nan"],
     ["--threshold-scale"]),
    ("simulate-n-0", ["simulate", "X.nir", "--out", "sim", "-n", "0"], ["-n"]),
    ("simulate-bad-mode", ["simulate", "X.nir", "--out", "sim", "--mode", "analog"], ["--mode", "analog"]),
    # ----- convert, import-checkpoint, moments, train-classifier
    ("convert-out-is-input", ["convert", "M.pt", "--out", "M.pt"], ["--out", "M.pt", "input"]),
    ("convert-out-trained-run", ["convert", "M.pt", "--out", "run/model.pt"], ["run/model.pt", "trained run"]),
    ("convert-finetune-lr-nan", ["convert", "M.pt", "--out", "S.pt", "--finetune-steps", "1", "--finetune-lr", "nan"],
     ["--finetune-lr"]),
    ("import-checkpoint-out-is-input", ["import-checkpoint", "M.pt", "--from", "sdm", "--out", "M.pt"],
     ["--out", "M.pt", "input"]),
    ("import-checkpoint-img-size", ["import-checkpoint", "M.pt", "--from", "sdm", "--out", "I.pt",
                                    "--img-size", "100000"], ["--img-size"]),
    ("import-checkpoint-bad-source", ["import-checkpoint", "M.pt", "--from", "ddpm", "--out", "I.pt"], ["--from"]),
    ("moments-out-trained-run", ["moments", "M.pt", "--out", "run/model.pt"], ["run/model.pt", "trained run"]),
    ("moments-points-1", ["moments", "M.pt", "--points", "1"], ["--points"]),
    ("classifier-out-not-a-classifier", ["train-classifier", "--out", "M.pt"], ["M.pt", "classifier", "--force"]),
    ("classifier-img-size-0", ["train-classifier", "--out", "c.pt", "--img-size", "0"], ["--img-size"]),
    # ----- eval
    ("eval-json-is-input", ["eval", "M.pt", "--json", "M.pt"], ["--json", "M.pt", "input"]),
    ("eval-json-over-text", ["eval", "M.pt", "--json", "notes.txt"], ["--json", "notes.txt"]),
    ("eval-n-1", ["eval", "M.pt", "-n", "1"], ["--n"]),
    ("eval-threshold-0", ["eval", "M.pt", "--threshold-scale", "0"], ["--threshold-scale"]),
    ("eval-steps-0", ["eval", "M.pt", "--steps", "0"], ["--steps"]),
    # ----- train
    ("train-occupied-run", ["train", "--out", "run", "--steps", "1", *TINY], ["--out", "run", "--force"]),
    ("train-resume-into-another-run", ["train", "--resume", "run/model.pt", "--out", "run2", "--steps", "2"],
     ["--out", "run2", "another run"]),
    ("train-out-is-a-file", ["train", "--out", "notes.txt", *TINY], ["--out", "notes.txt", "not a directory"]),
    ("train-out-under-a-file", ["train", "--out", "afile/run", *TINY], ["--out", "afile"]),
    ("train-out-unwritable", ["train", "--out", "/proc/sdm-run", *TINY], ["--out", "/proc"]),
    ("train-out-is-resume", ["train", "--resume", "run/model.pt", "--out", "run/model.pt"], ["--out", "input"]),
    ("train-img-size-huge", ["train", "--out", "new", "--img-size", "100000"], ["--img-size", "100000"]),
    ("train-img-size-not-multiple", ["train", "--out", "new", "--img-size", "10", "--ch-mult", "1,2,2"],
     ["--img-size", "10"]),
    ("train-ckpt-every-0", ["train", "--out", "new", "--ckpt-every", "0"], ["--ckpt-every"]),
    ("train-steps-0", ["train", "--out", "new", "--steps", "0"], ["--steps"]),
    ("train-lr-nan", ["train", "--out", "new", "--lr", "nan"], ["--lr"]),
    ("train-ema-decay-1", ["train", "--out", "new", "--ema-decay", "1"], ["--ema-decay"]),
    pytest.param("train-cuda", ["train", "--out", "new", "--device", "cuda"], ["--device", "no CUDA device"],
                 marks=NO_CUDA, id="train-cuda"),
    ("train-bad-precision", ["train", "--out", "new", "--precision", "fp64"], ["--precision", "fp64"]),
    ("train-out-empty", ["train", "--out", ""], ["--out"]),
    # ----- demo, the main parser
    ("demo-out-is-a-file", ["demo", "--out", "notes.txt"], ["--out", "notes.txt"]),
    ("demo-n-0", ["demo", "--out", "new", "-n", "0"], ["-n"]),
    ("demo-lava-steps-negative", ["demo", "--out", "new", "--lava-steps", "-1"], ["--lava-steps"]),
    ("demo-sd-model-missing", ["demo", "--out", "new", "--sd-model", "none.pt"], ["--sd-model", "none.pt"]),
    ("demo-temperature-0", ["demo", "--out", "new", "--temperature", "0"], ["--temperature"]),
    ("unknown-command", ["nosuch"], ["nosuch"]),
]


@pytest.mark.parametrize("name,argv,needles", [pytest.param(*c, id=c[0]) if type(c) is tuple else c
                                               for c in CASES])
def test_bad_input(workdir, monkeypatch, capsys, name, argv, needles):
    monkeypatch.chdir(workdir)
    before = snapshot(workdir)
    rc = run_cli(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (name, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    line = lines[0]
    assert "Traceback" not in err
    command = argv[0] if argv[0] in {"sample", "export-nir", "energy", "import-nir", "simulate", "convert",
                                     "import-checkpoint", "moments", "train-classifier", "eval", "train",
                                     "demo"} else None
    assert line.startswith(f"sdm {command}: error: " if command else "sdm: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    assert out == ""
    assert snapshot(workdir) == before, name


def test_the_battery_is_large_enough():
    assert len(CASES) >= 40


# ----- positive cases: --force, explicit replacement, resuming in place ------------------------------
@pytest.fixture
def copy(workdir, tmp_path, monkeypatch):
    """A private copy of the fixture folder as the cwd."""
    d = tmp_path / "w"
    shutil.copytree(workdir, d)
    monkeypatch.chdir(d)
    return d


def test_force_replaces_a_file_of_another_kind(copy, capsys):
    assert run_cli(["sample", "M.pt", "-n", "1", "--steps", "1", "--out", "notes.txt", "--force"]) == 0
    assert (copy / "notes.txt").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {Path('notes.txt')}" in capsys.readouterr().out


def test_an_own_kind_output_is_replaced_without_force(copy, capsys):
    """Re-running a command over its own output (a PNG, a NIR file, the default MODEL.nir) is allowed."""
    for _ in range(2):
        assert run_cli(["sample", "M.pt", "-n", "1", "--steps", "1", "--out", "g.png"]) == 0
        assert run_cli(["export-nir", "M.pt", "-o", "X.nir"]) == 0
        assert run_cli(["export-nir", "M.pt"]) == 0
    assert (copy / "M.nir").read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    assert not list(copy.glob(".*.tmp"))


def test_force_replaces_a_trained_run(copy, capsys):
    old = load_checkpoint(copy / "run" / "model.pt")
    assert run_cli(["train", "--data", "mnist-bundled", "--out", "run", "--steps", "2", "--batch-size", "2",
                    "--device", "cpu", "--seed", "9", "--force", *TINY]) == 0
    new = load_checkpoint(copy / "run" / "model.pt")
    assert new["step"] == 2 and new["train_config"]["seed"] == 9 and old["train_config"]["seed"] == 1
    assert sorted(p.name for p in (copy / "run").iterdir()) == ["model.pt"]  # lock released, no temp file
    # --force also lets --resume write into a directory holding another run
    assert run_cli(["train", "--resume", "run/model.pt", "--out", "run2", "--steps", "3", "--force"]) == 0
    assert load_checkpoint(copy / "run2" / "model.pt")["step"] == 3


def test_resume_into_its_own_directory(copy, capsys):
    assert run_cli(["train", "--resume", "run/model.pt", "--steps", "2", "--device", "cpu"]) == 0
    assert load_checkpoint(copy / "run" / "model.pt")["step"] == 2
    assert run_cli(["train", "--resume", "run/model.pt", "--out", "run", "--steps", "3", "--device", "cpu"]) == 0
    assert load_checkpoint(copy / "run" / "model.pt")["step"] == 3
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in (copy / "run").iterdir()) == ["model.pt"]


def test_moments_updates_its_input_in_place(copy, capsys):
    """`sdm moments MODEL.pt` (and --out MODEL.pt) rewrites its input by design: the exception to the rule."""
    assert run_cli(["moments", "M.pt", "-n", "2", "--points", "2", "--batch-size", "2", "--out", "M.pt"]) == 0
    assert load_checkpoint(copy / "M.pt")["moments"]["n"] == 2


def test_failed_train_leaves_no_directory(copy, capsys):
    """A run that fails after taking the lock (the data set has 1 channel, the model 3) removes the
    lock and the directories it created for it."""
    (copy / "rgb.json").write_text('{"model": {"img_ch": 3}}')
    before = snapshot(copy)
    assert run_cli(["train", "--config", "rgb.json", "--data", "mnist-bundled", "--out", "fresh/deeper",
                    "--steps", "1", "--batch-size", "2", "--device", "cpu", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "channel" in err and len(err.splitlines()) == 1
    assert snapshot(copy) == before


def test_argparse_errors_are_one_line_for_the_console_script(copy, capsys):
    from sdm.cli import export_nir_main

    with pytest.raises(SystemExit) as info:
        export_nir_main(["M.pt", "--dtype", "float16"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("export-nir: error: ") and len(err.strip().splitlines()) == 1
    assert not (copy / "M.nir").exists()
