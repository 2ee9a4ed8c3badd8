"""Checks on a command's output paths, done before its long work starts, and the run lock of ``sdm train``.

The rules (docs/failure-behaviour.md):

* an output path is never empty, never one of the command's inputs (compared as files:
  ``samefile``, else the resolved paths), never a directory, never under a file; its
  parent exists or can be created, is writable, and every new name fits the file system;
* an existing file at an output path is replaced only when it is what that output holds
  (a PNG image for a grid or plot, a NIR file for ``export-nir``, a report for ``--out``/``--json``,
  a checkpoint of the same kind for ``convert``, ``import-checkpoint``, ``train-classifier``),
  never when it holds a trained run, unless ``--force`` is given;
* ``sdm train --out DIR`` never replaces a run in DIR (``DIR/model.pt``) other than the one it
  resumes, unless ``--force``; ``DIR/.lock`` (:func:`run_lock`) keeps a second ``sdm train`` out.

Every failure is a one-line :class:`~sdm.errors.UserError` naming the option and the path.
Only the standard library is imported here; torch loads only to look inside an existing checkpoint.
"""

from __future__ import annotations

import codecs
import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

from sdm.errors import UserError

PathLike = Union[str, "os.PathLike[str]"]
Inputs = Iterable[Tuple[str, Optional[PathLike]]]  # (what it is, e.g. "MODEL.pt", its path or None)

LOCK_NAME = ".lock"
RUN_FILE = "model.pt"
_NAME_MAX, _PATH_MAX = 255, 4096  # when the file system does not say
_SNIFF_BYTES = 1 << 20
_JSON_MAX_BYTES = 64 << 20


# ----- what an existing file is ----------------------------------------------------------------
def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _is_png(path: Path) -> bool:
    return _head(path, 8) == b"\x89PNG\r\n\x1a\n"


def _is_hdf5(path: Path) -> bool:
    return _head(path, 8) == b"\x89HDF\r\n\x1a\n"


def _is_text(path: Path) -> bool:
    data = _head(path, _SNIFF_BYTES)
    if b"\0" in data:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=len(data) < _SNIFF_BYTES)
    except UnicodeDecodeError:
        return False
    return True


def _is_json(path: Path) -> bool:
    if path.stat().st_size > _JSON_MAX_BYTES:
        return False
    try:
        json.loads(path.read_bytes())
    except ValueError:
        return False
    return True


def _checkpoint(path: Path) -> Optional[dict]:
    """The file as a project checkpoint (read safely, tensors memory-mapped), or None."""
    if _head(path, 2) not in (b"PK",) and _head(path, 1) != b"\x80":
        return None
    import torch

    for kwargs in ({"mmap": True}, {}):  # mmap needs the zip format
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, **kwargs)
        except Exception:
            continue
        return obj if isinstance(obj, dict) and obj.get("format") == "sdm-checkpoint" else None
    return None


def is_trained_run(path: PathLike) -> bool:
    """A checkpoint holding a training state (``sdm train``'s model.pt, or a copy of one)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    ckpt = _checkpoint(path)
    return ckpt is not None and "optimizer" in ckpt


def _is_checkpoint_of(kind: str):
    def check(path: Path) -> bool:
        ckpt = _checkpoint(path)
        if ckpt is None or "optimizer" in ckpt:
            return False
        if kind == "converted":
            return ckpt.get("stage") == "converted"
        if kind == "imported":
            return "imported_from" in ckpt
        if kind == "classifier":
            from sdm.train.classifier import KIND

            return ckpt.get("kind") == KIND
        return True

    return check


# kind -> (what the output holds, in words; the test an existing file must pass to be replaced)
KINDS = {
    "png": ("a PNG image", _is_png),
    "nir": ("a NIR file", _is_hdf5),
    "hdf5": ("an HDF5 file", _is_hdf5),
    "json": ("a JSON file", _is_json),
    "text": ("a text file", _is_text),
    "converted": ("a converted checkpoint (sdm convert)", _is_checkpoint_of("converted")),
    "imported": ("an imported checkpoint (sdm import-checkpoint)", _is_checkpoint_of("imported")),
    "classifier": ("a classifier checkpoint (sdm train-classifier)", _is_checkpoint_of("classifier")),
    "checkpoint": ("a checkpoint without a training run", _is_checkpoint_of("any")),
}


# ----- the checks --------------------------------------------------------------------------------
def same_path(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` are the same file: ``samefile`` when both exist, else the resolved paths."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _nonempty(path: Optional[PathLike], option: str) -> Path:
    if path is None or not str(path).strip():
        raise UserError(f"{option}: empty path; give a file name")
    return Path(path)


def _not_an_input(path: Path, option: str, inputs: Inputs) -> None:
    for label, other in inputs:
        if other is not None and str(other) and same_path(path, other):
            raise UserError(f"{option} {path}: is the input {label} ({other}); write the output elsewhere")


def _limit(directory: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(directory, name)
    except (OSError, ValueError):
        return default


def _check_place(path: Path, option: str, shown: Path) -> None:
    """``path`` (a file or directory to create or replace) can be created: its nearest existing
    ancestor is a writable directory and every new name fits the file system."""
    new = [path.name]
    d = path.parent
    while not d.exists() and d != d.parent:
        new.append(d.name)
        d = d.parent
    if not d.is_dir():
        raise UserError(f"{option} {shown}: {d} is a file, not a directory")
    name_max = _limit(d, "PC_NAME_MAX", _NAME_MAX)
    for name in new:
        if len(os.fsencode(name)) > name_max:
            raise UserError(f"{option} {shown}: file name too long ({len(os.fsencode(name))} bytes, "
                            f"at most {name_max})")
    if len(os.fsencode(os.path.abspath(path))) >= _limit(d, "PC_PATH_MAX", _PATH_MAX):
        raise UserError(f"{option} {shown}: path too long")
    try:
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError as e:
        raise UserError(f"{option} {shown}: cannot create files in {d} ({e.strerror or type(e).__name__})") from None


def _replaceable(path: Path, option: str, kind: str, force: bool) -> None:
    """An existing file at ``path`` is what ``kind`` outputs hold (or empty), or ``force``."""
    if force or not path.exists() or path.stat().st_size == 0:
        return
    what, test = KINDS[kind]
    try:
        if is_trained_run(path):
            raise UserError(f"{option} {path}: holds a trained run (an sdm train checkpoint); "
                            "give --force to replace it")
        ok = test(path)
    except OSError as e:
        raise UserError(f"{option} {path}: cannot read the existing file ({e.strerror})") from None
    if not ok:
        raise UserError(f"{option} {path}: exists and is not {what}; give --force to replace it")


def check_file_name(path: Optional[PathLike], option: str) -> Path:
    """``path`` names a file: not empty, not ending in ``/``, not an existing directory."""
    raw = "" if path is None else os.fspath(path)
    p = _nonempty(path, option)
    _names_fit(p, option)
    if raw.endswith(("/", os.sep)) or p.name in ("", ".", ".."):
        raise UserError(f"{option} {raw}: names a directory; give a file name")
    if p.is_dir():
        raise UserError(f"{option} {p}: is a directory; give a file name")
    return p


def _names_fit(p: Path, option: str) -> None:
    """No component of ``p`` is longer than any file system allows (checked before ``p`` is looked
    at: the system calls themselves fail on such a name)."""
    for part in p.parts:
        if len(os.fsencode(part)) > _NAME_MAX:
            raise UserError(f"{option} {p}: file name too long ({len(os.fsencode(part))} bytes, "
                            f"at most {_NAME_MAX})")


def check_output(path: Optional[PathLike], option: str, kind: str, inputs: Inputs = (),
                 force: bool = False) -> Path:
    """Check a file ``path`` that the command will write (see the module docstring); returns it."""
    p = check_file_name(path, option)
    _not_an_input(p, option, list(inputs))
    if p.exists() and not p.is_file():
        raise UserError(f"{option} {p}: is not a regular file")
    _check_place(p, option, p)
    _replaceable(p, option, kind, force)
    return p


def check_directory(path: Optional[PathLike], option: str, inputs: Inputs = ()) -> Path:
    """Check an output directory: an existing, writable directory, or one that can be created."""
    p = _nonempty(path, option)
    _names_fit(p, option)
    _not_an_input(p, option, list(inputs))
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{option} {p}: is a file, not a directory")
        try:
            with tempfile.TemporaryFile(dir=p):
                pass
        except OSError as e:
            raise UserError(f"{option} {p}: cannot create files in it ({e.strerror or type(e).__name__})") from None
    else:
        _check_place(p, option, p)
    return p


def check_distinct(outputs: Sequence[Tuple[str, Optional[PathLike]]]) -> None:
    """No two outputs of one command are the same file."""
    given = [(o, p) for o, p in outputs if p is not None and str(p)]
    for i, (opt_a, a) in enumerate(given):
        for opt_b, b in given[i + 1:]:
            if same_path(a, b):
                raise UserError(f"{opt_b} {b}: is also the {opt_a} output; give them different paths")


def check_run_dir(directory: Path, option: str, resume: Optional[PathLike] = None, force: bool = False) -> None:
    """``sdm train`` may write ``directory/model.pt``: absent, the checkpoint it resumes, or ``force``."""
    model = directory / RUN_FILE
    if model.is_dir():
        raise UserError(f"{option} {directory}: {model} is a directory")
    if not (model.exists() or model.is_symlink()) or force:
        return
    if resume is not None and same_path(model, resume):
        return
    if resume is not None:
        raise UserError(f"{option} {directory}: holds another run ({model}), not the resumed {resume}; "
                        "choose another directory or give --force to replace it")
    raise UserError(f"{option} {directory}: already holds a run ({model}); continue it with --resume {model}, "
                    "choose another directory, or give --force to replace it")


# ----- the run lock ------------------------------------------------------------------------------
def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", errors="replace").strip()
    except OSError:
        return "?"
    return text if text.isdigit() else "?"


def _take(lock: Path, directory: Path, option: str) -> int:
    """An open descriptor of ``lock`` holding an exclusive ``flock`` and this process's pid."""
    import fcntl

    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            pid = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"{option} {directory}: another sdm train is writing this run (pid {pid}, "
                                f"lock {lock}); wait for it to finish or stop it") from None
            raise UserError(f"{option} {directory}: cannot lock {lock} ({e.strerror})") from None
        try:  # a holder that was releasing may have unlinked the file we opened: lock the current one
            current = os.stat(lock)
        except FileNotFoundError:
            os.close(fd)
            continue
        if current.st_ino != os.fstat(fd).st_ino:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd


@contextmanager
def run_lock(directory: PathLike, option: str = "--out") -> Iterator[Path]:
    """Hold ``directory/.lock`` (an exclusive ``flock``, the holder's pid inside) for the block.

    A second process asking for it gets a one-line :class:`UserError`.  The kernel drops the
    lock of a process that dies, even by ``kill -9``, so a stale ``.lock`` left behind is simply
    taken over.  On exit the lock file is removed, and so is the directory when this call
    created it and nothing was written in it."""
    directory = Path(directory)
    created = []
    d = directory
    while not d.exists() and d != d.parent:
        created.append(d)
        d = d.parent
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_NAME
    fd = _take(lock, directory, option)
    try:
        yield lock
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        os.close(fd)
        for c in created:  # deepest first
            try:
                os.rmdir(c)
            except OSError:
                break
