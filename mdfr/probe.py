"""Opt-in timings of the sweep machinery, for ``mdfr bench`` (off unless ``MDFR_PROBE=1``).

The sweep benchmarks must say where a sweep's time goes (driver start, MLflow calls, the
searcher, a trial's start, checkpoint writes, result handling), measured inside the real code
paths rather than guessed from outside. Those code paths mark their parts with :func:`span`;
each process collects its own spans (the driver, every trial process) and the benchmark gathers
them: the driver's with :func:`take`, a trial's from the file the trial writes with
:func:`dump` when it ends.

Off (the default) a span costs one environment lookup. The variable is read on every call, so
trial processes started by a driver that has it set (a local Ray instance, or simulated nodes
started from the driver) inherit it. Imports nothing from mdfr and no third-party package.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

ENV = "MDFR_PROBE"
# What a trial process writes into its output folder when it ends (when probing is on).
TRIAL_FILE = "mdfr_probe.json"

MARK = "at:"
CPU_MARK = "cpu:"
# What the sweep driver writes into the sweep folder when it ends (when probing is on).
DRIVER_FILE = "mdfr_probe_driver.json"

_spans: dict[str, list[float]] = {}


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


@contextlib.contextmanager
def span(name: str) -> Iterator[None]:
    """Time the block under ``name`` (seconds, appended to this process's record)."""
    if not enabled():
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _spans.setdefault(name, []).append(time.perf_counter() - t0)


def timed(name: str) -> Callable[[F], F]:
    """Decorator: every call of the function is a :func:`span` ``name``."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with span(name):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def record(name: str, seconds: float) -> None:
    """Add one duration measured elsewhere."""
    if enabled():
        _spans.setdefault(name, []).append(seconds)


def mark(name: str) -> None:
    """Record when a point was reached: wall clock (``time.time()``) as ``at:<name>`` and this
    process's CPU seconds so far (``time.process_time()``) as ``cpu:<name>``."""
    if enabled():
        _spans.setdefault(f"{MARK}{name}", []).append(time.time())
        _spans.setdefault(f"{CPU_MARK}{name}", []).append(time.process_time())


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB (``getrusage``; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def take() -> dict[str, list[float]]:
    """This process's spans since the last ``take``; the record starts over."""
    out = {k: list(v) for k, v in _spans.items()}
    _spans.clear()
    return out


def dump(path: Path, **extra: Any) -> None:
    """Write (and clear) this process's spans to ``path``, with ``extra`` fields; no-op when off."""
    if not enabled():
        return
    path.write_text(json.dumps({"spans": take(), **extra}))


def merge(parts: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """The spans of several processes as one record."""
    out: dict[str, list[float]] = {}
    for part in parts:
        for k, v in part.items():
            out.setdefault(k, []).extend(v)
    return out


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(spans: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per span name: calls, total seconds, mean and 95th-percentile milliseconds."""
    return {
        name: {
            "calls": len(v),
            "total_s": round(sum(v), 4),
            "mean_ms": round(1000 * sum(v) / len(v), 3),
            "p95_ms": round(1000 * percentile(v, 95), 3),
        }
        for name, v in sorted(spans.items())
        if v and not name.startswith((MARK, CPU_MARK))
    }
