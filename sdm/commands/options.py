"""Options that several commands share, as argparse parent parsers, and the two helpers
that act on them (``--threads`` and ``--device``).

Each factory returns a fresh ``parents=`` parser because the default or the help text
differs between commands (``sdm sample --batch-size`` defaults to 64, ``sdm convert``'s
to 16 ...).  The options land in a "common options" group of each command's help, after
the command's own options.  Nothing here imports torch until a command runs.
"""

from __future__ import annotations

import argparse
import math

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


def force(help: str = "replace an existing output that this command would otherwise refuse to replace "
                       "(a trained run, a file of another kind); docs/failure-behaviour.md") -> argparse.ArgumentParser:
    """``--force``: replace what the output-path rules (:mod:`sdm.paths`) protect."""
    return _parent("--force", action="store_true", help=help)


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


# ----- range checks (in the command, so that they are one-line errors like every other) ---------
def check_int(value: int | None, flag: str, low: int | None = None, high: int | None = None) -> None:
    """``low <= value <= high`` (None: that side unbounded; a None value is not checked)."""
    if value is None:
        return
    if low is not None and value < low:
        raise UserError(f"{flag} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise UserError(f"{flag} must be <= {high}, got {value}")


def check_float(value: float | None, flag: str, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """A finite ``value`` within the bounds (``low_open``: ``value > low``); None is not checked."""
    if value is None:
        return
    if not math.isfinite(value):
        raise UserError(f"{flag} must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise UserError(f"{flag} must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and (value >= high if high_open else value > high):
        raise UserError(f"{flag} must be {'<' if high_open else '<='} {high:g}, got {value:g}")


MAX_IMG_SIZE = 1024  # pixels per side: a bound on memory and run time, not a property of the model


def check_img_size(value: int | None, flag: str = "--img-size", levels: int | None = None) -> None:
    """``1 <= value <= MAX_IMG_SIZE`` and, for a UNet with ``levels`` down-samplings, a multiple of
    ``2^levels``."""
    check_int(value, flag, 1, MAX_IMG_SIZE)
    if value is not None and levels and value % 2 ** levels:
        raise UserError(f"{flag} {value}: must be a multiple of 2^{levels} = {2 ** levels} "
                        f"(the UNet halves it {levels} times)")


def check_threshold_scale(value: float | None, flag: str = "--threshold-scale") -> None:
    """Threshold guidance ``theta' = S * theta``: a finite ``S > 0``."""
    check_float(value, flag, low=0.0, low_open=True)


def check_sampler(a: argparse.Namespace) -> None:
    """``--eta`` (when the command has it): finite and >= 0."""
    check_float(getattr(a, "eta", None), "--eta", low=0.0)


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
    """``name`` unchanged if torch knows the device type (``cpu``, ``cuda``, ``cuda:1`` ...) and, for
    cuda, the machine has that device; None stays None."""
    import torch

    if name is None:
        return None
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: not a torch device (cpu, cuda, cuda:N, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device available")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UserError(f"--device {name}: no such CUDA device ({count} available: cuda:0..cuda:{count - 1})")
    return name
