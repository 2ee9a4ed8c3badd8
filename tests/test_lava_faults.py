"""Faults of a Lava simulation: what a killed, terminated, hung or misconfigured ``sdm simulate`` leaves.

* ``kill -9`` of the ``sdm simulate`` process while Lava runs: its Lava processes notice their
  parent's death (``PR_SET_PDEATHSIG`` and a parent-watching thread) and exit within seconds; the
  shared-memory manager removes the run's ``/dev/shm/psm_*`` segments on its way out.  Only the run
  folder stays (the parent cannot remove it), and the next run removes it.
* ``kill -9`` of the whole process group (nothing of the run can clean up): the next run removes
  the folder and the segments it logged.
* SIGTERM of the parent shuts Lava down as Ctrl-C does: exit code 143, no process, segment or
  folder left.
* kill -9 of the parent and SIGTERM: for both Lava builds (loihi: one process per layer; fused: a
  few stage processes).
* A hung exchange with the runtime ends at its bound (``SDM_LAVA_TIMEOUT``) with an SDMError, Lava
  stopped; a graph whose image input disagrees with its host section, or more denoising steps than
  the schedule has, are refused before any Lava process starts.

The sweep of stale run folders is also checked on its own, with fake dead runs.  Every subprocess
runs under a timeout, so a hang fails the test instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import mapped_shm, process_group, shm_segments, still_running, wait_until

from sdm.errors import ConfigError, SDMError
from sdm.export.ir import AnalogInput
from sdm.export.lower import lower_unet
from sdm.export.nir_format import write_nir
from sdm.testing.weights import randomise
from sdm.train.unet import SpikingUNet, UNetConfig

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc and /dev/shm"),
    pytest.mark.filterwarnings("ignore:Cannot import module"),
]

SMALLEST = dict(img_ch=1, img_size=8, ch=4, ch_mult=(1,), num_res_blocks=1, T=2)  # 53 Lava processes
START_S = 150  # until Lava runs (compiling on a busy 2-core machine)
CLEANUP_S = 20  # until nothing of a killed run is left (a few seconds on an idle machine)


def _graph(seed: int = 0):
    torch.manual_seed(seed)
    return lower_unet(randomise(SpikingUNet(UNetConfig(**SMALLEST)), seed=seed), dtype=np.float64)


@pytest.fixture(scope="module")
def tiny_nir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nir") / "tiny.nir"
    write_nir(_graph(), path)
    return path


def _env(tmp: Path, **extra) -> dict:
    """The child's environment: one thread, and a temporary folder of its own (its run folder goes there)."""
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp), "PYTHONWARNINGS": "ignore", **extra}


def _run_folders(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("sdm-lava-*"))


def _segments_of(folder: Path) -> list[str]:
    from sdm.neuromorphic.rundir import logged_segments

    return logged_segments(str(folder))


def _manager_folders(folder: Path) -> list[Path]:
    """The ``pymp-*`` folder (the shared-memory manager's socket) that the run logged."""
    from sdm.neuromorphic.rundir import logged_folders

    return [Path(f) for f in logged_folders(str(folder))]


class Simulation:
    """``python -m sdm.cli simulate`` in a session of its own, started and waited on until Lava runs.

    ``build="loihi"``: one Lava process per layer (53); ``"fused"``: 6 stage processes, whose calls take
    milliseconds, hence many more denoising steps to be still running when the test strikes."""

    def __init__(self, nir: Path, tmp_path: Path, steps: int = 50, build: str = "loihi"):
        self.tmp = tmp_path / "tmp"
        self.out, self.err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        self.shm_before = shm_segments()
        self.build = build
        steps = steps if build == "loihi" else 1000
        with open(self.out, "w") as fo, open(self.err, "w") as fe:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sdm.cli", "simulate", str(nir), "--denoise-steps", str(steps),
                 "--build", build, "--out", str(tmp_path / "run")], stdout=fo, stderr=fe, start_new_session=True,
                env=_env(self.tmp))
        self.pgid = self.proc.pid

    def wait_running(self, processes: int | None = None) -> dict[int, dict]:
        """Wait for Lava's processes and the first denoiser call; returns the process group then."""
        processes = processes if processes is not None else (50 if self.build == "loihi" else 8)

        def running():
            assert self.proc.poll() is None, f"exited early ({self.proc.returncode}):\n{self.err.read_text()[-3000:]}"
            return len(process_group(self.pgid)) >= processes and "1/" in self.err.read_text()

        assert wait_until(running, START_S, 0.2) is not None, f"Lava not running within {START_S} s"
        return process_group(self.pgid)

    def folder(self) -> Path:
        (folder,) = _run_folders(self.tmp)
        assert json.loads((folder / "owner.json").read_text())["pid"] == self.proc.pid
        return folder

    def pymp(self) -> list[Path]:
        """multiprocessing's temporary folders (the manager's socket) in the child's temporary folder."""
        return sorted(self.tmp.glob("pymp-*"))

    def leaked_segments(self) -> set[str]:
        """Segments that appeared since the start and that no live process maps (so: not another live run's)."""
        return (shm_segments() - self.shm_before) - mapped_shm()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@pytest.fixture
def simulation(tiny_nir, tmp_path):
    sims = []

    def start(steps: int = 50, build: str = "loihi") -> Simulation:
        sims.append(Simulation(tiny_nir, tmp_path, steps, build))
        return sims[-1]

    yield start
    for sim in sims:  # whatever a failed test left
        sim.kill()
        if sim.tmp.exists():
            from sdm.neuromorphic.lava_runtime import unlink_segments

            for folder in _run_folders(sim.tmp):
                unlink_segments(_segments_of(folder))


# ----- killed and terminated runs -------------------------------------------------------------
@pytest.mark.parametrize("build", ["loihi", "fused"])
def test_kill9_of_the_parent_leaves_no_process_and_no_segment(simulation, build):
    sim = simulation(build=build)
    running = sim.wait_running()
    folder = sim.folder()
    logged = _segments_of(folder)
    assert len(logged) > (50 if build == "loihi" else 10) and set(logged) <= shm_segments()  # Lava's channels
    assert _manager_folders(folder) == sim.pymp() and sim.pymp()
    os.kill(sim.proc.pid, signal.SIGKILL)
    assert sim.proc.wait(timeout=30) == -signal.SIGKILL
    took = wait_until(lambda: not still_running(running) and not process_group(sim.pgid), CLEANUP_S)
    left = still_running(running)
    assert took is not None, f"{len(left)} processes left {CLEANUP_S} s after kill -9: {list(left.values())[:3]}"
    assert not set(logged) & shm_segments(), "the run's segments outlived it"
    assert not sim.leaked_segments()
    assert "leaked shared_memory" not in sim.err.read_text()  # the manager removed them, nobody had to
    assert not sim.pymp(), "the manager's socket folder outlived it"
    # the run folder stays (its owner could not remove it): the next run's sweep does
    from sdm.neuromorphic.rundir import sweep_stale

    swept = sweep_stale(str(sim.tmp))
    assert swept.folders == [str(folder)] and not folder.exists()


def test_kill9_of_the_group_is_cleaned_up_by_the_next_run(simulation, monkeypatch):
    """Everything of the run killed at once (nothing can clean up): the next run removes its folder and
    the segments it logged, and nothing of a live run."""
    import tempfile

    from sdm.neuromorphic.simulator import LavaNetwork

    sim = simulation()
    running = sim.wait_running()
    folder = sim.folder()
    logged = _segments_of(folder)
    assert logged
    os.killpg(sim.pgid, signal.SIGKILL)
    sim.proc.wait(timeout=30)
    assert wait_until(lambda: not still_running(running), CLEANUP_S) is not None
    left = set(logged) & shm_segments()
    assert left, "expected the segments of a run killed as a whole to be left"
    pymp = _manager_folders(folder)
    assert pymp and all(p.is_dir() for p in pymp)
    # a live run's folder in the same place must survive the sweep
    monkeypatch.setattr(tempfile, "tempdir", str(sim.tmp))
    with LavaNetwork(_graph(), SMALLEST["T"], batch=1) as net:  # a new run (built, not compiled)
        assert not folder.exists(), "the dead run's folder was not removed"
        assert not left & shm_segments(), "the dead run's segments were not removed"
        assert not any(p.exists() for p in pymp), "the dead run's manager folder was not removed"
        assert Path(net.run_dir).is_dir() and Path(net.run_dir).parent == sim.tmp
    assert not Path(net.run_dir).exists()


@pytest.mark.parametrize("build", ["loihi", "fused"])
def test_sigterm_shuts_lava_down(simulation, build):
    sim = simulation(build=build)
    running = sim.wait_running()
    folder = sim.folder()
    logged = _segments_of(folder)
    t0 = time.monotonic()
    os.kill(sim.proc.pid, signal.SIGTERM)
    try:
        rc = sim.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("sdm simulate did not exit within 60 s of SIGTERM")
    assert rc == 128 + signal.SIGTERM, sim.err.read_text()[-2000:]
    assert "terminated (SIGTERM)" in sim.err.read_text()
    took = wait_until(lambda: not still_running(running) and not process_group(sim.pgid), CLEANUP_S)
    assert took is not None, f"processes left after SIGTERM: {list(still_running(running).values())[:3]}"
    assert not set(logged) & shm_segments() and not sim.leaked_segments()
    assert not folder.exists(), "the run folder was not removed"
    assert not sim.pymp()
    assert time.monotonic() - t0 < 60


# ----- refused before Lava starts ---------------------------------------------------------------
@pytest.mark.parametrize("img_shape", [(1, 16, 16), (3, 8, 8)], ids=["pixels", "channels"])
def test_host_shape_mismatch_fails_fast_with_one_line(tmp_path, img_shape):
    graph = _graph()
    graph.host.img_shape = img_shape
    bad = tmp_path / "bad.nir"
    write_nir(graph, bad)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "sdm.cli", "simulate", str(bad), "--denoise-steps", "2",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                       env=_env(tmp_path / "tmp"))
    took = time.monotonic() - t0
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("sdm simulate: error: ") and "shape" in lines[0], lines
    assert not _run_folders(tmp_path / "tmp"), "a Lava network was built"
    assert took < 60


@pytest.mark.parametrize("img_shape", [(1, 16, 16), (3, 8, 8)], ids=["pixels", "channels"])
def test_lava_refuses_a_graph_its_host_cannot_feed(img_shape):
    """Whatever the file reader checks, the simulator checks the graph against its host section itself."""
    from sdm.neuromorphic.builder import LavaBuildError, check_host
    from sdm.neuromorphic.simulator import LavaDenoiser

    graph = _graph()
    graph.host.img_shape = img_shape
    with pytest.raises(LavaBuildError) as e:
        check_host(graph)
    msg = str(e.value)
    image = next(n for n in graph.of_type(AnalogInput) if n.kind == "image")
    assert msg.startswith(f"{image.name}: image input"), msg  # names the node
    assert "1x8x8" in msg and "x".join(map(str, img_shape)) in msg, msg
    assert ("channels" in msg) == (img_shape[0] != 1), msg
    with pytest.raises(LavaBuildError):
        LavaDenoiser(graph, batch=1)


def test_ddpm_steps_beyond_the_schedule_are_refused(tiny_nir, tmp_path, capsys):
    from sdm.cli import main
    from sdm.neuromorphic.run import simulate

    with pytest.raises(ConfigError, match=r"--denoise-steps 2000 .*1000-step"):
        simulate(tiny_nir, tmp_path / "out", denoise_steps=2000, sampler="ddpm", progress=False)
    assert main(["simulate", str(tiny_nir), "--sampler", "ddpm", "--denoise-steps", "2000",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--denoise-steps" in err[0] and "1000" in err[0], err
    assert not (tmp_path / "out" / "report.json").exists()


# ----- the watchdog -----------------------------------------------------------------------------
def test_a_hung_exchange_ends_at_its_bound(monkeypatch):
    """The runtime stops answering (its messages are dropped): the call ends after SDM_LAVA_TIMEOUT
    with an SDMError, Lava is stopped by force and nothing is left."""
    from helpers import proc_table

    from sdm.neuromorphic.lava_runtime import LavaTimeoutError
    from sdm.neuromorphic.simulator import LavaDenoiser

    def mine():
        table = proc_table()
        return {p for p, i in table.items() if i["ppid"] == os.getpid() and "resource_tracker" not in i["cmd"]
                and i["state"] not in ("Z", "X")}

    before = mine()
    x, t = torch.randn(1, 1, 8, 8, dtype=torch.float64), torch.tensor([5])
    sim = LavaDenoiser(_graph(), batch=1)
    try:
        sim(x, t)
        run_dir, logged = Path(sim.run_dir), sim._run_dir.segments()
        assert logged and len(mine() - before) >= sim.num_processes
        sim.net.source.runtime.runtime_to_service[0].send = lambda msg: None  # the runtime hears nothing
        monkeypatch.setenv("SDM_LAVA_TIMEOUT", "3")
        t0 = time.monotonic()
        with pytest.raises(LavaTimeoutError, match="did not finish within 3 s") as e:
            sim(x, t)
        assert isinstance(e.value, SDMError) and time.monotonic() - t0 < 60
        assert sim.closed
    finally:
        sim.close()
    assert wait_until(lambda: not (mine() - before), CLEANUP_S) is not None
    assert not run_dir.exists() and not set(logged) & shm_segments()


def test_timeout_setting():
    from sdm.neuromorphic.simulator import exchange_timeout

    with pytest.MonkeyPatch.context() as m:
        m.delenv("SDM_LAVA_TIMEOUT", raising=False)
        assert exchange_timeout(90.0) == 90.0
        m.setenv("SDM_LAVA_TIMEOUT", "0")
        assert exchange_timeout(90.0) is None
        m.setenv("SDM_LAVA_TIMEOUT", "12.5")
        assert exchange_timeout(90.0) == 12.5
        for bad in ("soon", "-1"):
            m.setenv("SDM_LAVA_TIMEOUT", bad)
            with pytest.raises(ConfigError, match="SDM_LAVA_TIMEOUT"):
                exchange_timeout(90.0)


def test_watchdog_interrupts_a_blocked_wait():
    import threading

    from sdm.neuromorphic.lava_runtime import LavaTimeoutError, watchdog

    lock = threading.Lock()
    lock.acquire()
    t0 = time.monotonic()
    with pytest.raises(LavaTimeoutError, match="waiting did not finish within 1 s"):
        with watchdog(1.0, "waiting"):
            lock.acquire()  # never released: only the watchdog ends this
    assert time.monotonic() - t0 < 10
    with watchdog(5.0, "quick"):  # a block that ends in time raises nothing, now or later
        pass
    time.sleep(0.2)


# ----- the sweep on its own ---------------------------------------------------------------------
def _dead_identity() -> dict:
    from sdm.neuromorphic.rundir import process_identity

    p = subprocess.Popen(["sleep", "30"])
    ident = process_identity(p.pid)
    p.kill()
    p.wait()
    return ident


def _fake_run(parent: Path, owner: dict | None, mapped: bool = False):
    """A run folder with one real segment in its log; ``mapped``: keep the segment mapped here."""
    folder = Path(__import__("tempfile").mkdtemp(prefix="sdm-lava-", dir=parent))
    if owner is not None:
        (folder / "owner.json").write_text(json.dumps(owner))
    seg = shared_memory.SharedMemory(create=True, size=64)
    resource_tracker.unregister(seg._name, "shared_memory")  # the test removes it, not the tracker
    (folder / "segments.txt").write_text(seg.name + "\n")
    (folder / "0000.npy").write_bytes(b"probe")
    manager = Path(__import__("tempfile").mkdtemp(prefix="pymp-", dir=parent))  # a dead manager's socket folder
    (folder / "folders.txt").write_text(f"{manager}\n")
    if not mapped:
        seg.close()
    return folder, seg


def test_sweep_removes_only_dead_runs(tmp_path):
    from sdm.neuromorphic.lava_runtime import unlink_segments
    from sdm.neuromorphic.rundir import process_identity, sweep_stale

    dead, seg_dead = _fake_run(tmp_path, _dead_identity())
    live, seg_live = _fake_run(tmp_path, process_identity())
    busy, seg_busy = _fake_run(tmp_path, _dead_identity(), mapped=True)  # an orphan still uses it
    other_host, seg_host = _fake_run(tmp_path, {**_dead_identity(), "host": "elsewhere"})
    unmarked, seg_unmarked = _fake_run(tmp_path, None)  # an older version's folder, just made
    try:
        swept = sweep_stale(str(tmp_path))
        assert swept.folders == [str(dead)] and swept.segments == 1 and swept.kept == [str(busy)]
        assert not dead.exists() and seg_dead.name not in shm_segments()
        assert len(list(tmp_path.glob("pymp-*"))) == 4  # the dead run's went with it
        for folder, seg in ((live, seg_live), (busy, seg_busy), (other_host, seg_host), (unmarked, seg_unmarked)):
            assert folder.is_dir() and seg.name in shm_segments(), folder
        old = time.time() - 3600
        os.utime(unmarked, (old, old))
        assert sweep_stale(str(tmp_path)).folders == [str(unmarked)]
        assert seg_unmarked.name not in shm_segments()
    finally:
        seg_busy.close()
        unlink_segments([s.name for s in (seg_dead, seg_live, seg_busy, seg_host, seg_unmarked)])
