"""Options that several commands share, as argparse parent parsers, and the two helpers
that act on them (``--threads`` and ``--device``).

Each factory returns a fresh ``parents=`` parser because the default or the help text
differs between commands (``sdm sample --batch-size`` defaults to 64, ``sdm convert``'s
to 16 ...).  The options land in a "common options" group of each command's help, after
the command's own options.  Nothing here imports torch until a command runs.
"""

from __future__ import annotations

import argparse

from sdm.errors import UserError

GROUP = "common options"


def _parent(*flags: str, **kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument_group(GROUP).add_argument(*flags, **kwargs)
    return p


# ----- argument types ----------------------------------------------------------------------
def floats(text: str) -> list[float]:
    """``0.997,1.0,1.003`` -> ``[0.997, 1.0, 1.003]`` (at least one number)."""
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number")
    return vals


def ints(text: str) -> list[int]:
    """``1,2,2,4`` -> ``[1, 2, 2, 4]``."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {n}")
        return n

    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


# ----- parent parsers ------------------------------------------------------------------------
def seed(default: int | None = 0, help: str | None = None) -> argparse.ArgumentParser:
    """``--seed`` (default 0; ``sdm train`` passes None: the configuration's seed)."""
    return _parent("--seed", type=int, default=default, help=help)


def threads(help: str = "CPU threads for torch") -> argparse.ArgumentParser:
    """``--threads N``; 0 or absent leaves torch's own choice.  Apply it with :func:`apply_threads`."""
    return _parent("--threads", type=_int_at_least(0), help=help)


def device(help: str | None = "cpu | cuda (default: cuda when available)") -> argparse.ArgumentParser:
    """``--device``; absent: cuda when available.  Resolve it with :func:`pick_device`."""
    return _parent("--device", default=None, help=help)


def no_ema(help: str = "use raw weights even if EMA weights exist") -> argparse.ArgumentParser:
    """``--no-ema``: the checkpoint's raw weights instead of its EMA weights."""
    return _parent("--no-ema", action="store_true", help=help)


def batch_size(default: int | None = 64, help: str | None = None) -> argparse.ArgumentParser:
    """``--batch-size`` (default 64; ``sdm train`` passes None: the configuration's)."""
    return _parent("--batch-size", type=_int_at_least(1), default=default, help=help)


# the names of sdm.train.samplers.SAMPLERS (kept here so that building the parser imports no torch;
# tests/test_cli.py checks that the two lists agree)
SAMPLERS = ("ddpm", "ddim", "dpm-solver", "dpm-solver++", "analytic-ddpm", "analytic-ddim")
SAMPLER_HELP = ("ddim | ddpm (all steps) | dpm-solver, dpm-solver++ (multistep, --order) | analytic-ddpm, "
                "analytic-ddim (Analytic-DPM: needs `sdm moments` first)")


def sampler(steps: int | None = 50, steps_flag: str = "--steps",
            steps_help: str = "sampling steps (DDPM always uses all)", eta: bool = True) -> argparse.ArgumentParser:
    """``--sampler``, its step count (``steps_flag``; None: the command defines it), ``--eta`` (DDIM;
    ``eta=False``: a command whose trajectories are deterministic) and ``--order`` (DPM-Solver)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("sampler")
    g.add_argument("--sampler", choices=SAMPLERS, default="ddim", help=SAMPLER_HELP)
    if steps is not None:
        g.add_argument(steps_flag, type=_int_at_least(1), default=steps, help=steps_help)
    if eta:
        g.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    g.add_argument("--order", type=int, choices=(1, 2, 3), default=2, help="DPM-Solver order")
    return p


# ----- helpers -------------------------------------------------------------------------------
def apply_threads(a: argparse.Namespace) -> None:
    """Apply ``--threads`` (when given and non-zero) to torch."""
    if getattr(a, "threads", None):
        import torch

        torch.set_num_threads(a.threads)


def pick_device(a: argparse.Namespace) -> str:
    """``--device`` (checked), or cuda when available, else cpu."""
    import torch

    return check_device(a.device) or ("cuda" if torch.cuda.is_available() else "cpu")


def check_device(name: str | None) -> str | None:
    """``name`` unchanged if torch knows the device type (``cpu``, ``cuda``, ``cuda:1`` ...); None stays None."""
    import torch

    if name is not None:
        try:
            torch.device(name)
        except RuntimeError:
            raise UserError(f"--device {name!r}: not a torch device (cpu, cuda, cuda:N, ...)") from None
    return name
