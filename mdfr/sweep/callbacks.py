"""Driver-side Tune callback that closes the MLflow child runs trials cannot close themselves.

A trial closes its own child run when training finishes. It cannot when ASHA stops it early
(the trial's actor is stopped mid-report) or when it fails for good after ``max_failures``
retries; the driver sees both, and records ``mdfr.status`` = ``pruned`` / ``failed``.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback

from mdfr import probe
from mdfr.names import FINAL_KEY, Outcome, Tag
from mdfr.tracking import Store

log = logging.getLogger(__name__)


class RunCloser(Callback):
    """Closes child runs of pruned and failed trials (found by their ``mdfr.trial_key``)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self._store: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}  # Tune pickles callbacks into tuner.pkl

    def _close(self, trial: Any, status: str, mdfr_status: str) -> None:
        key = (trial.config or {}).get("trial_key")
        if not key:
            return
        try:
            self._store = self._store or Store(self.tracking_uri)
            # Created here when the trial died before it could open its run: still one run.
            run_id, _ = self._store.child_run(
                self.experiment_id, self.parent_run_id, key, {Tag.SWEEP_TRIAL: trial.trial_id}
            )
            self._store.finish(run_id, status, mdfr_status)
        except Exception as e:  # noqa: BLE001 - tracking trouble must not kill the sweep
            log.warning("could not close MLflow run of trial %s: %s", key, e)

    @probe.timed("callback.run_closer")
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not (trial.last_result or {}).get(FINAL_KEY):
            self._close(trial, "FINISHED", Outcome.PRUNED)

    @probe.timed("callback.run_closer")
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FAILED", Outcome.FAILED)
