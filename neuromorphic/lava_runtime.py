"""Loading Lava's multiprocessing runtime, on demand.

Lava's message infrastructure (``lava.magma.runtime.message_infrastructure.multiprocessing``,
imported by the first import of almost any Lava process, e.g. ``lava.proc.conv.process``) calls
``multiprocessing.set_start_method('fork')`` when imported.  That raises once anything has
fixed the start method (tqdm's first progress bar does, with a lock).  Every module of this
package that imports Lava calls :func:`ensure_lava_runtime` first (``lava_models/__init__.py``
for the process modules, :func:`~.builder.build`, :class:`~.simulator.LavaNetwork`,
:func:`~.netx_export.run_netx`), so that importing ``sdm.neuromorphic`` itself, or its
pure-numpy parts such as :mod:`.fixed_point`, loads no Lava module.
"""

from __future__ import annotations

import multiprocessing as _mp
import sys

LAVA_RUNTIME = "lava.magma.runtime.message_infrastructure.multiprocessing"


def ensure_lava_runtime() -> None:
    """Import Lava's multiprocessing back end even if the start method is already fixed (idempotent).

    Lava needs 'fork'; if the start method is already 'fork', Lava's call is skipped during the
    import; any other start method raises ``RuntimeError``."""
    if LAVA_RUNTIME in sys.modules:
        return
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
