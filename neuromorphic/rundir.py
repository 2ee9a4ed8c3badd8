"""The run folder of a Lava simulation, and the removal of what dead runs left behind.

Every :class:`~.simulator.LavaNetwork` keeps its probe files in a run folder
``$TMPDIR/sdm-lava-XXXXXXXX`` (:class:`RunDir`) holding two more files:

* ``owner.json``: the owning process (pid, its start time in clock ticks since boot, the boot id,
  the host name and the pid namespace), written before anything else;
* ``segments.txt``: the names of the POSIX shared-memory segments (``/dev/shm/psm_*``) that Lava
  created for the run, one per line, appended as they are created
  (:func:`~.lava_runtime.recording_segments`);
* ``folders.txt``: the ``pymp-*`` folder that holds the socket of the run's shared-memory manager
  (multiprocessing makes it in the manager's process and removes it when that process exits
  normally).

A run that ends in any way Python sees (return, error, Ctrl-C, SIGTERM) removes its folder and any
segment of its log still there.  A run killed outright (SIGKILL, OOM killer) cannot, so every new
run first calls :func:`sweep_stale`: a folder whose owner is gone (no such pid, or a pid with
another start time, or another boot) loses its logged segments and ``pymp-*`` folder and then
itself, unless some live process still maps one of the segments or files, or still listens on the
manager's socket.  A folder of another host or pid namespace is left alone (its
owner cannot be checked from here), and so is a folder without ``owner.json`` (older versions)
unless it is older than :data:`UNMARKED_AGE_S` and mapped by no process.  Segments that are in no
run's log are never touched: they may belong to anything.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import weakref
from dataclasses import dataclass, field

from .lava_runtime import unlink_segments

PREFIX = "sdm-lava-"
MARKER = "owner.json"
SEGMENTS = "segments.txt"
FOLDERS = "folders.txt"
UNMARKED_AGE_S = 600.0  # a folder without an owner marker is only removed when older than this
SHM_DIR = "/dev/shm"


# ----- who owns a folder ----------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22), or None."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    try:
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    text = _read("/proc/sys/kernel/random/boot_id")
    return text.strip() if text else None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def process_identity(pid: int | None = None) -> dict:
    """What tells process ``pid`` (default: this one) apart from a later process with the same pid."""
    pid = os.getpid() if pid is None else pid
    return dict(pid=pid, start=start_ticks(pid), boot=_boot_id(), host=socket.gethostname(), pidns=_pid_namespace())


def owner_alive(owner: dict) -> bool | None:
    """Whether the process of an ``owner.json`` still runs: True, False, or None when this process cannot
    tell (another host or pid namespace, a marker it cannot read)."""
    try:
        pid = int(owner["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    if not os.path.isdir("/proc/self") or owner.get("host") != socket.gethostname() \
            or owner.get("pidns") != _pid_namespace():
        return None
    if owner.get("boot") is not None and owner.get("boot") != _boot_id():
        return False
    start = start_ticks(pid)
    if start is None:  # no such process
        return False
    return owner.get("start") is None or start == owner["start"]


# ----- the run folder -------------------------------------------------------------------------
def _remove_own_folder(path: str) -> None:
    try:
        if os.lstat(path).st_uid == os.getuid():
            shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass


def _remove(path: str) -> None:
    unlink_segments(logged_segments(path))
    for folder in logged_folders(path):
        _remove_own_folder(folder)
    shutil.rmtree(path, ignore_errors=True)


def logged_segments(path: str) -> list[str]:
    """The segment names in the log of run folder ``path`` (well-formed lines only)."""
    text = _read(os.path.join(path, SEGMENTS)) or ""
    return [n for n in (line.strip() for line in text.splitlines())
            if n.startswith("psm_") and n[4:].isalnum() and "/" not in n]


def logged_folders(path: str) -> list[str]:
    """The ``pymp-*`` folders in the log of run folder ``path`` (absolute, named so, next to nothing else)."""
    text = _read(os.path.join(path, FOLDERS)) or ""
    return [f for f in (line.strip() for line in text.splitlines())
            if os.path.isabs(f) and os.path.basename(f).startswith("pymp-") and ".." not in f.split(os.sep)]


class RunDir:
    """A fresh run folder with its owner marker; :meth:`cleanup` (or interpreter exit) removes it and
    the logged segments that are still there."""

    def __init__(self, parent: str | None = None):
        self.path = tempfile.mkdtemp(prefix=PREFIX, dir=parent)
        tmp = os.path.join(self.path, MARKER + ".tmp")
        with open(tmp, "w") as f:
            json.dump(process_identity(), f)
        os.replace(tmp, os.path.join(self.path, MARKER))
        self.segments_path = os.path.join(self.path, SEGMENTS)
        self.folders_path = os.path.join(self.path, FOLDERS)
        self._finalizer = weakref.finalize(self, _remove, self.path)

    @property
    def name(self) -> str:
        return self.path

    def segments(self) -> list[str]:
        return logged_segments(self.path)

    def cleanup(self) -> None:
        self._finalizer()


# ----- the sweep ------------------------------------------------------------------------------
def mapped_files() -> set[str]:
    """Every file that some process (that this one may inspect) maps, from ``/proc/*/maps``."""
    paths: set[str] = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        text = _read(f"/proc/{d}/maps")
        for line in (text or "").splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                paths.add(parts[5].removesuffix(" (deleted)"))
    return paths


def bound_sockets() -> set[str]:
    """The paths of the Unix sockets some process has bound (``/proc/net/unix``)."""
    text = _read("/proc/net/unix") or ""
    return {parts[7] for parts in (line.split() for line in text.splitlines()[1:]) if len(parts) >= 8}


@dataclass
class Swept:
    """What :func:`sweep_stale` removed (folders, segments) and left because something still maps it."""

    folders: list[str] = field(default_factory=list)
    segments: int = 0
    kept: list[str] = field(default_factory=list)


def _is_stale(path: str, now: float) -> bool:
    marker = _read(os.path.join(path, MARKER))
    if marker is None:
        try:
            return now - os.stat(path).st_mtime > UNMARKED_AGE_S
        except OSError:
            return False
    try:
        owner = json.loads(marker)
    except ValueError:
        return False
    return owner_alive(owner) is False


def stale_folders(parent: str | None = None) -> list[str]:
    """Run folders in ``parent`` (default: the temporary folder) of this user whose owner is gone."""
    parent = parent or tempfile.gettempdir()
    found, now = [], time.time()
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    for e in entries:
        try:
            if not e.name.startswith(PREFIX) or not e.is_dir(follow_symlinks=False) or e.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if _is_stale(e.path, now):
            found.append(e.path)
    return found


def sweep_stale(parent: str | None = None) -> Swept:
    """Remove the run folders of dead runs and the segments they logged (module docstring).  Without
    ``/proc`` (not Linux) no owner can be checked, and nothing is removed."""
    swept = Swept()
    if not os.path.isdir("/proc/self"):
        return swept
    folders = stale_folders(parent)
    if not folders:
        return swept
    mapped, sockets = mapped_files(), bound_sockets()
    for path in folders:
        names, managers = logged_segments(path), logged_folders(path)
        in_use = any(os.path.join(SHM_DIR, n) in mapped for n in names) or \
            any(p.startswith(path + os.sep) for p in mapped) or \
            any(s.startswith(m + os.sep) for m in managers for s in sockets)
        if in_use:  # a process of that run still lives (e.g. left by an older version): not ours to end
            swept.kept.append(path)
            continue
        swept.segments += unlink_segments(names)
        for m in managers:
            _remove_own_folder(m)
        shutil.rmtree(path, ignore_errors=True)
        swept.folders.append(path)
    return swept
