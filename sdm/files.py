"""Writing output files so that a failure or a kill never leaves a half-written one.

:func:`atomic_write` writes to a temporary file beside the target and renames it onto the
target (one ``rename``: readers see the old file or the new one, never a part).  The temporary
file is named ``.{target name}.{writer pid}.{random}.tmp``; a write killed with ``kill -9``
leaves it behind, and the next write to the same target removes every such file whose writer
process is gone (:func:`remove_stale_temps`).  Temporary files of a live writer are never
touched, nor files of other targets.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

TMP_SUFFIX = ".tmp"
# bytes of the target's name kept in its temporary files: ``.{name}.{pid}.{8 random}.tmp`` must
# fit the file system's 255-byte limit even for a target whose own name is close to it
_MAX_NAME_IN_TMP = 200


def _tmp_stem(name: str) -> str:
    """``.{name}.``, the name cut to :data:`_MAX_NAME_IN_TMP` bytes (on a character boundary)."""
    raw = os.fsencode(name)
    if len(raw) > _MAX_NAME_IN_TMP:
        name = raw[:_MAX_NAME_IN_TMP].decode("utf-8", errors="ignore")
    return f".{name}."


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and is not a zombie (killed, not yet reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[-1].split()[:1]
        return state != [b"Z"]
    except OSError:
        return True  # no /proc: trust kill(0)


def temp_files(path: str | os.PathLike) -> list[tuple[Path, int]]:
    """``(temporary file, writer pid)`` of every pending or abandoned :func:`atomic_write` to ``path``."""
    path = Path(path)
    stem = _tmp_stem(path.name)
    found = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if not (name.startswith(stem) and name.endswith(TMP_SUFFIX)):
            continue
        parts = name[len(stem):-len(TMP_SUFFIX)].split(".")
        # exactly "{pid}.{random}": the random part of mkstemp has no dot, so a longer target name
        # that starts with this one (``x.nir`` vs ``x``) never matches
        if len(parts) == 2 and parts[0].isdigit() and parts[1]:
            found.append((path.parent / name, int(parts[0])))
    return found


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of writes to ``path`` whose writer process is gone; returns them."""
    removed = []
    for tmp, pid in temp_files(path):
        if pid != os.getpid() and not pid_alive(pid):
            try:
                os.unlink(tmp)
                removed.append(tmp)
            except FileNotFoundError:
                pass  # another writer cleaned it up first
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` (same directory, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_stem(path.name)}{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        # mkstemp makes the file 0600; give the result the mode any newly created file would get
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``atomic_write`` of a text file."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
