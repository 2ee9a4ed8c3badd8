"""Lava simulation of the spiking UNet: NIR graph -> Lava processes -> denoising steps.

Imports Lava (Python 3.10 only); nothing in ``sdm.train`` depends on this package.
"""

import multiprocessing as _mp


def _import_lava_runtime() -> None:
    """Import Lava's multiprocessing back end even if the start method is already fixed.

    That module calls ``multiprocessing.set_start_method('fork')`` when imported, which raises
    once anything has fixed the start method (tqdm's first progress bar does, with a lock).
    Lava needs 'fork'; if it is already 'fork', the call is skipped during the import."""
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


_import_lava_runtime()
