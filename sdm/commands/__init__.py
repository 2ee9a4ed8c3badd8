"""One module per ``sdm`` subcommand, as diffusers-cli has one class per command.

Every module ``sdm.commands.<name>`` has

* ``add_parser(subparsers) -> argparse.ArgumentParser``: registers the command, its options
  (the shared ones come from :mod:`sdm.commands.options` as ``parents=``) and ``func=run``;
* ``run(args) -> None``: the command itself, a thin layer over a Python API.

Modules import only the standard library at import time; torch, the stages and Lava load
inside ``run``, so that ``sdm --help`` is fast and Lava loads only for ``sdm simulate``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# in the order of `sdm --help`
COMMANDS = ("train", "sample", "export_nir", "import_nir", "simulate", "convert", "import_checkpoint", "moments",
            "train_classifier", "eval", "energy", "demo")


def command_modules() -> list[ModuleType]:
    """The command modules, in the order of :data:`COMMANDS`."""
    return [importlib.import_module(f"{__name__}.{name}") for name in COMMANDS]
