"""The ``sdm`` command line.  Each subcommand lives in its own module under :mod:`sdm.commands`
and is a thin layer over a Python API; the project's own errors (:class:`sdm.errors.SDMError`:
bad files, bad options) become one ``sdm <command>: error: ...`` line and exit code 2, never a
traceback.  Any other exception is a bug and keeps its traceback.  ``SDM_DEBUG=1`` shows the
traceback of the one-line errors too."""

from __future__ import annotations

import argparse
import os
import sys

from sdm import __version__
from sdm.commands import command_modules
from sdm.errors import SDMError, UserError  # noqa: F401  (UserError: the commands' misuse errors)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdm", description="Spiking Diffusion Models: train, sample, deploy.")
    parser.add_argument("--version", action="version", version=f"sdm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in command_modules():
        module.add_parser(sub)
    return parser


def export_nir_main(argv: list[str] | None = None) -> int:
    """The stand-alone ``export-nir`` console script (same as ``sdm export-nir``)."""
    from sdm.commands import export_nir

    parser = argparse.ArgumentParser(prog="export-nir", parents=export_nir.parents(),
                                     description="Export MODEL.pt to a NIR graph (docs/nir-format.md).")
    export_nir.add_arguments(parser)
    a = parser.parse_args(argv)
    a.command = "export-nir"
    return _run(a)


def _known_errors() -> tuple[type[BaseException], ...]:
    """What a user's input can cause: the project's error classes (every stage's derives from
    SDMError), a missing file, and a run that diverged (NaN loss, NaN samples)."""
    return (SDMError, FileNotFoundError, FloatingPointError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return _run(parser.parse_args(argv))


def _run(a) -> int:
    try:
        a.func(a)
    except KeyboardInterrupt:
        print("sdm: interrupted", file=sys.stderr)
        return 130
    except _known_errors() as e:
        if os.environ.get("SDM_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"sdm {a.command}: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
