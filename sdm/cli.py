"""The ``sdm`` command line.  Each subcommand lives in its own module under :mod:`sdm.commands`
and is a thin layer over a Python API; the project's own errors (:class:`sdm.errors.SDMError`:
bad files, bad options) become one ``sdm <command>: error: ...`` line and exit code 2, never a
traceback, and so do argparse's own errors (unknown option, bad choice, bad type: :class:`Parser`).
Any other exception is a bug and keeps its traceback.  ``SDM_DEBUG=1`` shows the traceback of the
one-line errors too.  Standard output carries a command's data or its report, never progress bars
or notes (docs/failure-behaviour.md)."""

from __future__ import annotations

import argparse
import errno
import os
import sys

from sdm import __version__
from sdm.commands import command_modules
from sdm.errors import SDMError, UserError  # noqa: F401  (UserError: the commands' misuse errors)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``<prog>: error: <message>`` (exit code 2),
    instead of the usage followed by the message; subparsers made from it are of this class too, and
    an unrecognised option is reported by the subcommand it was given to."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())}\n")

    def parse_args(self, args=None, namespace=None):
        a, extras = self.parse_known_args(args, namespace)
        if extras:
            self._parser_of(a).error(f"unrecognized arguments: {' '.join(extras)}")
        return a

    def _parser_of(self, a: argparse.Namespace) -> argparse.ArgumentParser:
        """The subcommand's parser that took ``a`` (this parser when there is none)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices.get(getattr(a, action.dest, None), self)
        return self


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sdm", description="Spiking Diffusion Models: train, sample, deploy.")
    parser.add_argument("--version", action="version", version=f"sdm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in command_modules():
        module.add_parser(sub)
    return parser


def export_nir_main(argv: list[str] | None = None) -> int:
    """The stand-alone ``export-nir`` console script (same as ``sdm export-nir``)."""
    from sdm.commands import export_nir

    parser = Parser(prog="export-nir", parents=export_nir.parents(),
                    description="Export MODEL.pt to a NIR graph (docs/nir-format.md).")
    export_nir.add_arguments(parser)
    a = parser.parse_args(argv)
    a.command = "export-nir"
    return _run(a)


def _known_errors() -> tuple[type[BaseException], ...]:
    """What a user's input can cause: the project's error classes (every stage's derives from
    SDMError), a missing file, and a run that diverged (NaN loss, NaN samples)."""
    return (SDMError, FileNotFoundError, FloatingPointError)


# file-system failures that the user's paths or machine cause (no permission, disk full, ...):
# one line naming the file, like the project's own errors
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG,
                errno.EISDIR, errno.ENOTDIR}


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return _run(parser.parse_args(argv))


def _run(a) -> int:
    try:
        a.func(a)
    except KeyboardInterrupt:
        print("sdm: interrupted", file=sys.stderr)
        return 130
    except (*_known_errors(), OSError) as e:
        if os.environ.get("SDM_DEBUG") or (isinstance(e, OSError) and not isinstance(e, _known_errors())
                                           and e.errno not in _USER_ERRNOS):
            raise
        print(f"sdm {a.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
