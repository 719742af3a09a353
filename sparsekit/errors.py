"""The two kinds of error every command reports in one sentence (no torch import here)."""
from __future__ import annotations


class SparsekitError(Exception):
    """Base class; ``exit_code`` is what the command line exits with."""

    exit_code = 1


class BadInput(SparsekitError):
    """The user asked for something invalid (exit code 2). Nothing has been written."""

    exit_code = 2


class Failure(SparsekitError):
    """A valid request that could not be carried out (exit code 1)."""

    exit_code = 1


class NotBuilt(Failure):
    """A subcommand or feature that is not implemented yet."""


def check_fraction(name: str, value: float, *, low_open: bool = False, high_open: bool = True) -> float:
    """Raise BadInput unless ``value`` lies in [0, 1) (or the interval the flags describe)."""
    lo_ok = value > 0 if low_open else value >= 0
    hi_ok = value < 1 if high_open else value <= 1
    if not (lo_ok and hi_ok):
        lo = "(0" if low_open else "[0"
        hi = "1)" if high_open else "1]"
        raise BadInput(f"{name} must be in {lo}, {hi}, got {value}.")
    return value
