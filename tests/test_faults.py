"""Faults: ``kill -9`` in the middle of a command, two writers on one run, data on standard output.

* ``sdm train`` killed at random moments: the checkpoint always loads and ``--resume`` continues;
  the stale ``.lock`` and temporary files of the killed run are taken over and removed;
* ``export-nir``, ``sdm sample`` and ``sdm energy --plot`` killed after a random delay, and killed
  for certain in the middle of the write (a wrapper makes the write slow): never a partial file at
  the target, and the next run removes the stale temporary file;
* a second ``sdm train`` on the same run is refused with one line while the first holds the lock;
* ``sdm energy --format json`` writes JSON and nothing else on standard output, with or without ``--plot``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sdm.cli import main
from sdm.files import atomic_write, temp_files
from sdm.train.checkpoint import load_checkpoint, save_checkpoint
from sdm.train.unet import SpikingUNet, UNetConfig

pytestmark = pytest.mark.usefixtures("torch_threads")

CFG = UNetConfig(img_ch=1, img_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, T=2)
TINY = ["--ch", "8", "--ch-mult", "1,2", "--num-res-blocks", "1", "--T", "2", "--img-size", "8"]
PNG = b"\x89PNG\r\n\x1a\n"
HDF5 = b"\x89HDF\r\n\x1a\n"

# the real CLI with every atomic write held open for a minute after its temporary file is complete:
# a kill during that minute is a kill in the middle of the write, for certain
SLOW_WRITER = """
import sys, time
import sdm.files as files

_atomic_write = files.atomic_write

def slow(path, write):
    def held(tmp):
        write(tmp)
        time.sleep(60)
    return _atomic_write(path, held)

files.atomic_write = slow  # before any stage module imports it
from sdm.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("SDM_DEBUG", raising=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    return save_checkpoint(d / "M.pt", {"model_config": CFG.to_dict(), "model": SpikingUNet(CFG).state_dict(),
                                        "data": {"spec": "mnist-bundled"}})


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k != "SDM_DEBUG"}
    e["OMP_NUM_THREADS"] = "1"
    return e


def start(argv, cwd: Path, slow: bool = False) -> subprocess.Popen:
    head = [sys.executable, "-c", SLOW_WRITER] if slow else [sys.executable, "-m", "sdm.cli"]
    return subprocess.Popen([*head, *argv], cwd=cwd, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def kill(p: subprocess.Popen) -> None:
    """``kill -9`` and reap (an unreaped child would still count as a live writer)."""
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)


def wait_for(cond, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended (exit code {proc.returncode}) before the awaited moment")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.02)


def inode(path: Path):
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


# ----- sdm train ----------------------------------------------------------------------------------
def test_kill_9_during_train_then_resume(tmp_path, capsys):
    """Killed at random moments (every step saves a checkpoint): the file at DIR/model.pt always
    loads, the lock of the dead run is taken over and --resume continues to the end; a second
    writer is refused while a run holds the lock."""
    rng = random.Random(int(os.environ.get("SDM_FAULT_SEED", "0")) or None)
    out = tmp_path / "run"
    ckpt = out / "model.pt"
    train = ["train", "--data", "mnist-bundled", "--out", str(out), "--steps", "100000", "--batch-size", "2",
             "--ckpt-every", "1", "--device", "cpu", "--threads", "1", "--seed", "3", *TINY]
    resume = ["train", "--resume", str(ckpt), "--steps", "100000", "--device", "cpu", "--threads", "1"]
    last = 0
    for leg in range(3):
        before = inode(ckpt)
        p = start(train if leg == 0 else resume, tmp_path)
        try:
            wait_for(lambda b=before: inode(ckpt) not in (None, b), proc=p)  # this leg saved a checkpoint
            if leg == 0:  # a second writer on the same run, while the first holds the lock
                assert main(["train", "--resume", str(ckpt), "--steps", "100000", "--device", "cpu"]) == 2
                err = capsys.readouterr().err.strip()
                assert len(err.splitlines()) == 1 and "another sdm train" in err and str(p.pid) in err, err
            time.sleep(rng.uniform(0.0, 0.8))
        finally:
            kill(p)
        assert (out / ".lock").exists()  # left behind by the kill: stale, taken over by the next leg
        state = load_checkpoint(ckpt)  # whatever moment the kill hit, the checkpoint is whole
        assert state["step"] >= max(last, 1)
        last = state["step"]
    # the last leg runs to its end: two more steps, exactly continuing the run
    assert main(["train", "--resume", str(ckpt), "--steps", str(last + 2), "--device", "cpu"]) == 0
    assert f"step {last + 2}" in capsys.readouterr().out
    state = load_checkpoint(ckpt)
    assert state["step"] == last + 2 and [h[0] for h in state["history"]][-1] == last + 2
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]  # no stale temp file, no lock


# ----- export-nir, sample, energy --plot ---------------------------------------------------------
def _valid(target: Path, magic: bytes) -> bool:
    return target.read_bytes()[:8] == magic and target.stat().st_size > 64


COMMANDS = {
    "export-nir": (lambda m, t: ["export-nir", str(m), "-o", str(t)], "x.nir", HDF5),
    "sample": (lambda m, t: ["sample", str(m), "-n", "2", "--steps", "2", "--device", "cpu", "--out", str(t)],
               "g.png", PNG),
    "energy-plot": (lambda m, t: ["energy", str(m), "--denoise-steps", "1", "-n", "1", "--format", "json",
                                  "--plot", str(t)], "e.png", PNG),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_kill_9_during_a_write(tmp_path, model, capsys, command):
    argv_of, name, magic = COMMANDS[command]
    target = tmp_path / name
    argv = argv_of(model, target)
    rng = random.Random(int(os.environ.get("SDM_FAULT_SEED", "0")) or None)

    # killed for certain in the middle of the write: the target is absent, the temporary file stale
    p = start(argv, tmp_path, slow=True)
    try:
        wait_for(lambda: bool(temp_files(target)), proc=p)
    finally:
        kill(p)
    assert not target.exists()
    assert [pid for _, pid in temp_files(target)] == [p.pid]

    # a run killed after a random delay: the target is absent or whole, never partial
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "sdm.cli", *argv], cwd=tmp_path, env=env(), capture_output=True,
                       timeout=120)
    duration = time.monotonic() - t0
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert _valid(target, magic) and not temp_files(target)  # the run removed the killed one's temp file
    target.unlink()
    p = start(argv, tmp_path)
    try:
        time.sleep(rng.uniform(0.3, 1.0) * duration)
    finally:
        kill(p)
    assert not target.exists() or _valid(target, magic)

    # the next run writes the target and leaves no temporary file
    assert main(argv) == 0
    capsys.readouterr()
    assert _valid(target, magic) and not temp_files(target)
    assert sorted(x.name for x in tmp_path.iterdir()) == [name]


# ----- the temporary files of atomic_write ---------------------------------------------------------
def test_stale_temp_files_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "x.png"
    stale = tmp_path / f".x.png.{dead.pid}.abcd1234.tmp"
    live = tmp_path / f".x.png.{os.getppid()}.abcd1234.tmp"  # a live writer's: left alone
    other = tmp_path / f".x.png.5.{dead.pid}.abcd1234.tmp"  # a temp file of the target "x.png.5"
    legacy = tmp_path / ".x.png.abcd1234.tmp"  # no pid: whose it is is unknown, left alone
    for f in (stale, live, other, legacy):
        f.write_bytes(b"partial")
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"whole"))
    assert target.read_bytes() == b"whole"
    assert not stale.exists() and live.exists() and other.exists() and legacy.exists()
    assert [t.name for t, _ in temp_files(target)] == [live.name]


def test_a_long_target_name_still_gets_a_temporary_file(tmp_path):
    target = tmp_path / ("n" * 250 + ".png")
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"ok"))
    assert target.read_bytes() == b"ok" and not temp_files(target)


# ----- standard output holds the data ---------------------------------------------------------------
def test_energy_json_on_stdout_parses_with_and_without_plot(tmp_path, model, capsys):
    argv = ["energy", str(model), "--denoise-steps", "1", "-n", "1", "--format", "json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    json.loads(out)
    assert main([*argv, "--plot", str(tmp_path / "e.png")]) == 0
    out, err = capsys.readouterr()
    rep = json.loads(out)  # the "wrote e.png" line went to stderr
    assert "rows" in rep and f"wrote {tmp_path / 'e.png'}" in err
    assert _valid(tmp_path / "e.png", PNG)
    # the same through a real process, where any stray print would land in the pipe
    r = subprocess.run([sys.executable, "-m", "sdm.cli", *argv, "--plot", str(tmp_path / "f.png"), "--format", "csv"],
                       cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("name,layer,kind") and "wrote" not in r.stdout and "wrote" in r.stderr
