"""Early stopping that never drops a grid cell: one ASHA per cell (:class:`PerCellASHA`).

A single ASHA over the whole sweep compares every trial with every other: the trials of a
weak setup (Table II #2, "backbone") all fall below the rung cut-off set by the strong ones
and are stopped, and that setup's row vanishes from Table II. A cell is one thing being
measured (a setup, a seed, a backbone), so its trials may only compete with each other: the
samples Optuna proposes for it. This scheduler keeps one ASHA per grid cell (by the ``cell``
index the searcher puts in every trial's config) and hands each trial's events to its cell's.
A cell with one trial is never stopped (ASHA keeps the best of a rung, and it is the best).
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from mdfr.names import EPOCH
from mdfr.sweep.schema import SchedulerSpec


class PerCellASHA(FIFOScheduler):
    """ASHA applied within each grid cell separately (see the module docstring).

    Args:
        spec: the sweep's scheduler section (``name: asha``).
    """

    def __init__(self, spec: SchedulerSpec):
        super().__init__()
        self.spec = spec
        self._metric = spec.metric
        self._by_cell: dict[Any, ASHAScheduler] = {}
        self._stopped = 0

    def _asha(self, trial: Any) -> ASHAScheduler:
        cell = (trial.config or {}).get("cell")
        if cell not in self._by_cell:
            s = self.spec
            # time_attr "epoch" (reported by the engine) survives a trial's resume from its own
            # state, where Tune's training_iteration would restart at 1.
            self._by_cell[cell] = ASHAScheduler(
                time_attr=EPOCH,
                metric=s.metric,
                mode=s.mode,
                max_t=s.max_t,
                grace_period=s.grace_period,
                reduction_factor=s.reduction_factor,
                brackets=s.brackets,
            )
        return self._by_cell[cell]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # The metric and mode come from the sweep file; Tune's (unset) ones do not override.
        return True

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = self._asha(trial).on_trial_result(tune_controller, trial, result)
        self._stopped += action == TrialScheduler.STOP
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._asha(trial).on_trial_error(tune_controller, trial)

    def debug_string(self) -> str:
        return f"ASHA per grid cell ({len(self._by_cell)} cells): {self._stopped} stopped"


def make_scheduler(spec: SchedulerSpec) -> TrialScheduler | None:
    """The Tune scheduler of a sweep's ``scheduler:`` section (None: Tune's FIFO)."""
    return PerCellASHA(spec) if spec.name == "asha" else None
