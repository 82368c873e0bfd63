"""Argument types shared by the subcommands: numbers checked against their allowed range.

argparse turns an :class:`argparse.ArgumentTypeError` into ``mdfr X: error: argument
--opt: <message>`` and exit 2, so each message says what was given and what is allowed.
Non-finite floats (``nan``, ``inf``) are refused everywhere: no option means them.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"from {lo} to {hi}"
    if lo is not None:
        return f">= {lo}"
    return f"<= {hi}"


def int_in(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[lo, hi]`` (either bound may be open-ended)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer {_range(lo, hi)}, got {text!r}"
            ) from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected an integer {_range(lo, hi)}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(
    lo: float | None = None, hi: float | None = None, *, above: bool = False, below: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite float in ``[lo, hi]``; ``above``/``below`` exclude the bound."""
    lo_s = "" if lo is None else (f"> {lo:g}" if above else f">= {lo:g}")
    hi_s = "" if hi is None else (f"< {hi:g}" if below else f"<= {hi:g}")
    allowed = " and ".join(s for s in (lo_s, hi_s) if s) or "finite"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {allowed}, got {text!r}") from None
        bad = not math.isfinite(value)
        if lo is not None:
            bad = bad or (value <= lo if above else value < lo)
        if hi is not None:
            bad = bad or (value >= hi if below else value > hi)
        if bad:
            raise argparse.ArgumentTypeError(f"expected a number {allowed}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


POSITIVE = int_in(1)
NON_NEGATIVE = int_in(0)
POSITIVE_FLOAT = float_in(0, above=True)
NON_NEGATIVE_FLOAT = float_in(0)
# numpy's and torch's generators take seeds in [0, 2**32) / [0, 2**63); one range for all.
SEED = int_in(0, 2**32 - 1)
PORT = int_in(1, 65535)


def name(text: str) -> str:
    """An argparse type: a non-empty name without control characters (an MLflow experiment)."""
    if not text.strip() or any(ord(c) < 32 for c in text):
        raise argparse.ArgumentTypeError(f"expected a non-empty name, got {text!r}")
    return text
