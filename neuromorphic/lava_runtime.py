"""Loading Lava's multiprocessing runtime, on demand, and keeping its OS processes on a leash.

Lava's message infrastructure (``lava.magma.runtime.message_infrastructure.multiprocessing``,
imported by the first import of almost any Lava process, e.g. ``lava.proc.conv.process``) calls
``multiprocessing.set_start_method('fork')`` when imported.  That raises once anything has
fixed the start method (tqdm's first progress bar does, with a lock).  Every module of this
package that imports Lava calls :func:`ensure_lava_runtime` first (``lava_models/__init__.py``
for the process modules, :func:`~.builder.build`, :class:`~.simulator.LavaNetwork`,
:func:`~.netx_export.run_netx`), so that importing ``sdm.neuromorphic`` itself, or its
pure-numpy parts such as :mod:`.fixed_point`, loads no Lava module.

Lava runs every process (and its runtime service, and the shared-memory manager) as a forked
OS process and knows nothing of its parent dying.  :func:`ensure_lava_runtime` also installs,
once, the hooks that make a run leave nothing behind (docs/lava-mapping.md, "Faults and
clean-up"), without touching the installed Lava package:

* **children follow their parent** (:func:`_guard_child`, a ``multiprocessing`` after-fork hook,
  so it runs in every ``multiprocessing`` child and in nothing else): Linux's
  ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` when forked by the main thread, a SIGTERM handler, and a
  daemon thread polling ``os.getppid()`` every :data:`PARENT_POLL_S` seconds.  A child whose
  parent is gone (or that gets SIGTERM) exits at once; the shared-memory manager first removes
  the segments it manages and the ``pymp-*`` folder of its socket;
* **segment log** (:func:`recording_segments`): the name of every shared-memory segment Lava
  creates, and the manager's ``pymp-*`` folder, are appended to the run folder's logs, so that a
  later run can remove them when the run's processes were all killed at once (:mod:`.rundir`);
* **SIGTERM in the parent** (:func:`hold_sigterm`): while a Lava runtime exists, SIGTERM raises
  :class:`Terminated` (a ``SystemExit``, exit code 143) in the main thread, which shuts Lava down
  through the same paths as Ctrl-C;
* **watchdog** (:func:`watchdog`): a bounded wait for one exchange with the runtime; past the
  bound the main thread is interrupted (:data:`WATCHDOG_SIGNAL`) and :class:`LavaTimeoutError`
  raised, after which the caller stops Lava by force.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as _mp
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from sdm.errors import SDMError

LAVA_RUNTIME = "lava.magma.runtime.message_infrastructure.multiprocessing"
LAVA_SMM = "lava.magma.runtime.message_infrastructure.shared_memory_manager"
PARENT_POLL_S = 0.5  # how often a Lava child checks that its parent is alive
CHILD_EXIT_CODE = 128 + signal.SIGTERM  # what a child that outlived its parent exits with
WATCHDOG_SIGNAL = signal.SIGUSR2  # interrupts the main thread's wait on the runtime
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class LavaTimeoutError(SDMError):
    """An exchange with the Lava runtime did not finish within its bound; Lava was stopped."""


class Terminated(SystemExit):
    """SIGTERM arrived while a Lava runtime was up (exit code 143, as the signal's default)."""

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)


def ensure_lava_runtime() -> None:
    """Import Lava's multiprocessing back end even if the start method is already fixed, and install
    the process hooks of the module docstring (idempotent).

    Lava needs 'fork'; if the start method is already 'fork', Lava's call is skipped during the
    import; any other start method raises ``RuntimeError``."""
    if LAVA_RUNTIME not in sys.modules:
        _import_lava_runtime()
    install_process_hooks()


def _import_lava_runtime() -> None:
    try:
        import lava.magma.runtime.message_infrastructure.multiprocessing  # noqa: F401
        return
    except RuntimeError as e:
        if "context has already been set" not in str(e):
            raise
    if _mp.get_start_method() != "fork":
        raise RuntimeError(f"Lava needs the 'fork' multiprocessing start method; it is {_mp.get_start_method()!r}")
    original = _mp.set_start_method
    _mp.set_start_method = lambda method, force=False: None if method == "fork" else original(method, force)
    try:
        import lava.magma.runtime.message_infrastructure.multiprocessing  # noqa: F401,F811
    finally:
        _mp.set_start_method = original


# ----- the hooks ------------------------------------------------------------------------------
class _Token:
    """What multiprocessing's after-fork registry keys the hook by (it holds it weakly)."""


@dataclass
class _Hooks:
    installed: bool = False
    fork_pid: int = 0  # the process that last forked (read in the child: the parent)
    fork_from_main: bool = True  # whether it forked from its main thread (PR_SET_PDEATHSIG's meaning)
    inherited_tempdir: str | None = None  # in a child: multiprocessing's temporary folder of its parent
    token: _Token = field(default_factory=_Token)


_HOOKS = _Hooks()


def install_process_hooks() -> None:
    """Install the fork hooks and the segment log (idempotent; needs Lava's runtime imported)."""
    if _HOOKS.installed:
        return
    import importlib
    import multiprocessing.util as mp_util

    cls = importlib.import_module(LAVA_SMM).SharedMemoryManager
    if not getattr(cls.create_shared_memory, "_sdm_logged", False):
        cls.create_shared_memory = _logged(cls.create_shared_memory)
    os.register_at_fork(before=_note_fork)
    mp_util.register_after_fork(_HOOKS.token, _guard_child)
    _HOOKS.installed = True


def _note_fork() -> None:
    """In the forking process, just before a fork: who forks, and from which thread."""
    _HOOKS.fork_pid = os.getpid()
    _HOOKS.fork_from_main = threading.current_thread() is threading.main_thread()


def set_parent_death_signal(sig: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, sig)``: the kernel sends ``sig`` to this process when the thread that
    forked it ends (Linux only; False where it is not available)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _guard_child(_token) -> None:
    """In every ``multiprocessing`` child (before its target runs): exit when the parent goes."""
    parent = _HOOKS.fork_pid
    _HOOKS.inherited_tempdir = _mp_tempdir()
    try:
        signal.signal(signal.SIGTERM, _on_child_sigterm)
        signal.signal(WATCHDOG_SIGNAL, signal.SIG_DFL)  # the parent's handler means nothing here
    except ValueError:  # not this interpreter's main thread: the poller below still watches
        pass
    if _HOOKS.fork_from_main:  # PDEATHSIG follows the forking *thread*: only the main thread lives as long
        set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # died before the hook was in place
        _exit_child()
    threading.Thread(target=_watch_parent, args=(parent,), name="sdm-parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            _exit_child()


def _on_child_sigterm(signum, frame) -> None:
    _exit_child()


def _mp_tempdir() -> str | None:
    """multiprocessing's temporary folder of this process (``pymp-*``: the manager's socket), if it has one."""
    return _mp.current_process()._config.get("tempdir")


def _exit_child() -> None:
    """Leave now: a shared-memory manager first removes the segments it manages (its normal shutdown
    would, but nobody is left to ask for it), and a child the ``pymp-*`` folder it made (its socket);
    then the process exits without Python's clean-up."""
    server = getattr(_mp.current_process(), "_manager_server", None)
    context = getattr(server, "shared_memory_context", None)
    if context is not None:
        names = list(context.segment_names)
        unlink_segments(names)
        _forget_segments(names)
    tempdir = _mp_tempdir()
    if tempdir and tempdir != _HOOKS.inherited_tempdir:
        import shutil

        shutil.rmtree(tempdir, ignore_errors=True)
    os._exit(CHILD_EXIT_CODE)


def _forget_segments(names) -> None:
    """Tell multiprocessing's resource tracker that ``names`` are gone, so that it does not report them as
    leaked when the run's last process exits.  The manager server shares the parent's tracker (it
    inherited its pipe; it registered nothing of its own); without that pipe nothing is sent, since
    sending would start a tracker of its own."""
    from multiprocessing import resource_tracker

    if getattr(resource_tracker._resource_tracker, "_fd", None) is None:
        return
    for name in names:
        try:
            resource_tracker.unregister("/" + name.lstrip("/"), "shared_memory")
        except Exception:
            return


def unlink_segments(names) -> int:
    """Remove the POSIX shared-memory segments ``names`` (``psm_...``) that still exist; returns how many."""
    from _posixshmem import shm_unlink

    removed = 0
    for name in names:
        try:
            shm_unlink("/" + name.lstrip("/"))
            removed += 1
        except (FileNotFoundError, OSError):
            pass
    return removed


# ----- the segment log ------------------------------------------------------------------------
@dataclass
class _Log:
    segments: object  # the open segment log
    folders: str  # the file that gets the shared-memory manager's pymp-* folder
    seen: set = field(default_factory=set)


_SEGMENT_LOG: list[_Log] = []  # the logs of the run whose runtime is being built (at most one)


def _manager_folder(lava_smm) -> str | None:
    """The ``pymp-*`` folder of the socket of Lava's shared-memory manager (made by the manager's process)."""
    address = getattr(getattr(lava_smm, "_manager", None), "address", None)
    if isinstance(address, str) and os.path.basename(os.path.dirname(address)).startswith("pymp-"):
        return os.path.dirname(address)
    return None


def _logged(create):
    def create_shared_memory(self, size: int):
        handle = create(self, size)
        for log in _SEGMENT_LOG:
            folder = _manager_folder(self)
            if folder is not None and folder not in log.seen:
                log.seen.add(folder)
                with open(log.folders, "a") as f:
                    f.write(folder + "\n")
            log.segments.write(handle.name.lstrip("/") + "\n")
            log.segments.flush()
        return handle

    create_shared_memory._sdm_logged = True
    create_shared_memory.__wrapped__ = create
    return create_shared_memory


@contextlib.contextmanager
def recording_segments(path: str, folders_path: str):
    """Append the name of every shared-memory segment Lava creates meanwhile to the file ``path``, and the
    ``pymp-*`` folder of its shared-memory manager to ``folders_path``."""
    with open(path, "a", buffering=1) as segments:
        log = _Log(segments, folders_path)
        _SEGMENT_LOG.append(log)
        try:
            yield
        finally:
            _SEGMENT_LOG.remove(log)


# ----- SIGTERM in the parent ------------------------------------------------------------------
@dataclass
class _SigtermGuard:
    holders: int = 0
    previous: object = None
    installed: bool = False
    fired: bool = False


_SIGTERM = _SigtermGuard()


def _on_sigterm(signum, frame) -> None:
    if _SIGTERM.fired:  # already shutting down: let the clean-up finish
        return
    _SIGTERM.fired = True
    os.write(2, b"\nsdm: terminated (SIGTERM): stopping Lava\n")
    raise Terminated()


def hold_sigterm() -> None:
    """While held (counted), SIGTERM raises :class:`Terminated` in the main thread.  Only installed from
    the main thread and over the default action: a program's own SIGTERM handler is left alone."""
    _SIGTERM.holders += 1
    if _SIGTERM.installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        _SIGTERM.previous = signal.signal(signal.SIGTERM, _on_sigterm)
        _SIGTERM.installed = True
        _SIGTERM.fired = False


def release_sigterm() -> None:
    """Undo one :func:`hold_sigterm`; the last one restores the default action.  Between a SIGTERM turned
    into :class:`Terminated` and that moment further SIGTERMs are ignored: they cannot cut the clean-up short."""
    _SIGTERM.holders = max(0, _SIGTERM.holders - 1)
    if _SIGTERM.holders or not _SIGTERM.installed:
        return
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, _SIGTERM.previous)
        _SIGTERM.installed = False


# ----- the watchdog ---------------------------------------------------------------------------
class _Expired(BaseException):
    """Raised in the main thread by the watchdog signal (a BaseException: no ``except Exception`` eats it)."""


@dataclass
class _Watch:
    lock: threading.Lock = field(default_factory=threading.Lock)
    expired: bool = False
    done: bool = False
    raised: bool = False


_ACTIVE: list[_Watch] = []


def _on_watchdog_signal(signum, frame) -> None:
    watch = _ACTIVE[-1] if _ACTIVE else None
    if watch is not None and watch.expired and not watch.done and not watch.raised:
        watch.raised = True
        raise _Expired()


def _watchdog_signal_ready() -> bool:
    current = signal.getsignal(WATCHDOG_SIGNAL)
    if current is _on_watchdog_signal:
        return True
    if current is not signal.SIG_DFL:  # somebody else's: leave it alone (and run unguarded)
        return False
    signal.signal(WATCHDOG_SIGNAL, _on_watchdog_signal)
    return True


@contextlib.contextmanager
def watchdog(seconds: float | None, what: str):
    """Run the block with a bound of ``seconds``: past it the main thread's wait is interrupted and
    :class:`LavaTimeoutError` raised (the caller stops Lava).  Only in the main thread (signals reach no
    other); ``None`` or ``<= 0``, another thread, or a nested block: no bound."""
    main = threading.main_thread()
    if not seconds or seconds <= 0 or _ACTIVE or threading.current_thread() is not main \
            or not _watchdog_signal_ready():
        yield
        return
    watch = _Watch()

    def fire():
        with watch.lock:
            if watch.done:
                return
            watch.expired = True
        signal.pthread_kill(main.ident, WATCHDOG_SIGNAL)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    _ACTIVE.append(watch)
    timer.start()
    try:
        try:
            yield
        finally:
            with watch.lock:  # from here on the timer sends nothing, and a late signal raises nothing
                watch.done = True
            timer.cancel()
    except _Expired:
        raise LavaTimeoutError(f"{what} did not finish within {seconds:.0f} s; Lava was stopped "
                               f"(the bound is set by SDM_LAVA_TIMEOUT, seconds)") from None
    finally:
        _ACTIVE.remove(watch)
