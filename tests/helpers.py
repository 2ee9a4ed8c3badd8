"""Plain helper functions shared by several test modules (``from helpers import ...``; pytest puts
``tests/`` on ``sys.path`` because the folder has a ``conftest.py`` and no ``__init__.py``)."""

from __future__ import annotations

import torch


def assert_same(a, b, where="state"):
    """Recursive equality where tensors must be bit-identical (dtype included)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(map(str, a)), sorted(map(str, b)))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


# ----- processes and shared memory, from /proc (Linux) ------------------------------------------
def proc_table() -> dict[int, dict]:
    """pid -> {ppid, pgid, state, start, cmd} of every process (from /proc)."""
    import os

    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        table[int(d)] = dict(state=rest[0], ppid=int(rest[1]), pgid=int(rest[2]), start=int(rest[19]), cmd=cmd)
    return table


def is_live(info: dict) -> bool:
    """Not a zombie (a zombie is dead, only not yet reaped)."""
    return info["state"] not in ("Z", "X")


def process_group(pgid: int) -> dict[int, dict]:
    """The live processes of process group ``pgid``."""
    return {p: i for p, i in proc_table().items() if i["pgid"] == pgid and is_live(i)}


def still_running(procs: dict[int, dict]) -> dict[int, dict]:
    """Those of ``procs`` (pid -> info as from :func:`proc_table`) that still run: same pid, same start time."""
    table = proc_table()
    return {p: i for p, i in procs.items() if p in table and table[p]["start"] == i["start"] and is_live(table[p])}


def shm_segments() -> set[str]:
    """The names of the POSIX shared-memory segments of multiprocessing (``/dev/shm/psm_*``)."""
    import os

    return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")}


def mapped_shm() -> set[str]:
    """The ``/dev/shm`` segments some live process maps (a live run's, whoever started it)."""
    import os

    names = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/maps") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            if "/dev/shm/" in line:
                names.add(line.split("/dev/shm/", 1)[1].split()[0])
    return names


def wait_until(condition, timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until ``condition()`` held (polled every ``interval``), or None when ``timeout`` passed first."""
    import time

    t0 = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)


def run_ddp_cli(tmp_path, module: str, model_class: str, cli_args: list[str]):
    """Run ``sdm <cli_args>`` on two gloo CPU ranks under torchrun; the launcher replaces
    ``module.model_class`` by a subclass that records the model the trainer builds, so that each
    rank writes its final parameters to ``OUT/params_rank{r}.pt`` for comparison.  Returns the
    completed process."""
    import os
    import subprocess
    import sys

    launcher = tmp_path / "launch.py"
    launcher.write_text(f"""
import os, sys
import torch
import {module} as trainer
from sdm.cli import main

built = []

class Recorded(trainer.{model_class}):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        built.append(self)

trainer.{model_class} = Recorded
rc = main(sys.argv[1:])
if rc == 0:
    out = sys.argv[sys.argv.index("--out") + 1]
    params = {{k: v.detach().clone() for k, v in built[-1].named_parameters()}}
    torch.save(params, os.path.join(out, "params_rank%s.pt" % os.environ["RANK"]))
sys.exit(rc)
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    env.pop("SDM_DEBUG", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher),
           *cli_args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
