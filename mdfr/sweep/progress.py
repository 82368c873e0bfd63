"""Live progress of a sweep on the driver's console, through Tune's public ``Callback`` API.

Tune's own console output either lists every config key of every trial (its current output) or
needs the legacy reporter switched back on by an environment variable; a callback prints what
a sweep user wants instead: each trial's outcome as it ends, and a status line at most every
``every_s`` seconds (verbose 1), or every epoch of every trial (verbose 2).
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from mdfr import probe
from mdfr.names import EPOCH, FINAL_KEY, STATUS, Outcome


def _key(trial: Any) -> str:
    return str((trial.config or {}).get("trial_key") or trial.trial_id)


class ProgressPrinter(Callback):
    """Prints trial outcomes and a periodic status line.

    Args:
        metric: the sweep's metric, shown with each trial.
        total: trials the sweep runs.
        verbose: 1 outcomes and a status line every ``every_s``; 2 also every epoch.
        every_s: seconds between status lines.
    """

    def __init__(self, metric: str, total: int, verbose: int = 1, every_s: float = 30.0):
        self.metric = metric
        self.total = total
        self.verbose = verbose
        self.every_s = every_s
        self._last: dict[str, dict[str, Any]] = {}
        self._done: dict[str, str] = {}
        self._printed = 0.0

    def _say(self, line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    def _value(self, result: dict[str, Any]) -> str:
        v = result.get(self.metric)
        return f"{self.metric}={v:.4f}" if isinstance(v, int | float) else f"{self.metric}=-"

    @probe.timed("callback.progress")
    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._last[_key(trial)] = result
        if self.verbose >= 2:
            self._say(f"{_key(trial)}: epoch {result.get(EPOCH)} {self._value(result)}")
        elif time.monotonic() - self._printed >= self.every_s:
            self._status(trials)

    @probe.timed("callback.progress")
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        outcome = str(result.get(STATUS, Outcome.OK)) if result.get(FINAL_KEY) else Outcome.PRUNED
        self._done[_key(trial)] = outcome
        self._say(f"{_key(trial)}: {outcome} at epoch {result.get(EPOCH)} {self._value(result)}")

    @probe.timed("callback.progress")
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done[_key(trial)] = Outcome.FAILED
        self._say(f"{_key(trial)}: failed ({trial.error_file or 'see the Tune log'})")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._status(trials)

    def _status(self, trials: list) -> None:
        self._printed = time.monotonic()
        counts: dict[str, int] = {}
        for outcome in self._done.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        running = [t for t in trials if t.status == "RUNNING"]
        done = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet"
        self._say(
            f"{len(self._done)}/{self.total} trials done ({done}); {len(running)} running"
            + "".join(
                f"; {_key(t)} epoch {self._last.get(_key(t), {}).get(EPOCH, 0)}"
                for t in running[:4]
            )
        )
