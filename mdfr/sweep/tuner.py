"""The only Ray Tune ``Tuner`` code: build it for a sweep (or restore it), run it, summarise.

One ``Tuner``: the grid x Optuna searcher, ASHA within each grid cell when asked,
``with_resources``, ``FailureConfig``, checkpoints kept by Tune, live progress on the console,
and a callback that closes the child runs of trials that were pruned or failed for good.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from mdfr import probe
from mdfr.environ import scoped_env
from mdfr.names import FINAL_KEY, STATUS, Outcome
from mdfr.sweep.callbacks import RunCloser
from mdfr.sweep.plan import SweepPlan
from mdfr.sweep.progress import ProgressPrinter
from mdfr.sweep.schedulers import make_scheduler
from mdfr.sweep.searcher import GridOptunaSearcher
from mdfr.sweep.state import OPTUNA_FILE, SweepState
from mdfr.sweep.trainable import make_trainable

TrainFn = Callable[..., Any]


@dataclass(frozen=True)
class TrialSummary:
    """One trial of a finished sweep, as the driver saw it."""

    trial_key: str
    status: str  # ok | diverged | pruned | error
    metric: float | None
    path: str


@dataclass
class SweepOutcome:
    """What a finished (or interrupted-and-resumed) sweep produced."""

    exp_dir: Path
    experiment: str
    tracking_uri: str
    parent_run_id: str
    trials: list[TrialSummary] = field(default_factory=list)
    planned: int = 0  # trials the plan asked for (some may never have started)
    champion: dict[str, Any] | None = None  # see mdfr.sweep.results.finish

    @property
    def unfinished(self) -> int:
        """Trials neither finished nor failed: the driver was stopped before the sweep ended."""
        done = sum(1 for t in self.trials if t.status != Outcome.UNFINISHED)
        return max(self.planned - done, 0)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    @property
    def failed(self) -> int:
        return sum(1 for t in self.trials if t.status == Outcome.ERROR)


# Tune settings read from the environment while a sweep runs (a user's own value wins).
TUNE_ENV = {
    # Snapshot the experiment often: fewer trials to hand out again after a driver crash.
    "TUNE_GLOBAL_CHECKPOINT_S": "5",
    # num_to_keep forces extra snapshots; harmless at our sizes, so no warning about it.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Tune's own per-trial loggers run in the driver on every result and repeat what MLflow
    # records; the TensorBoard one opens a writer and its thread per trial. Only the JSON one
    # stays (_new_tuner: Tune reads its result.json back when the sweep ends); a user who sets
    # the variable to 0 gets all three back.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


def fit(
    state: SweepState, train_fn: TrainFn | None, *, restore: bool, retry_errored: bool, verbose: int
) -> SweepOutcome:
    """Run (or continue, ``restore``) the sweep's Tune experiment to the end."""
    plan = state.plan
    resources = {"cpu": plan.resources.cpu, "gpu": plan.resources.gpu}
    with probe.span("driver.tuner_build"):
        trainable = tune.with_resources(make_trainable(train_fn), resources)
        exp_dir = Path(state.exp_dir)
        if restore:
            tuner = tune.Tuner.restore(
                str(exp_dir), trainable=trainable, resume_errored=retry_errored
            )
        else:
            tuner = _new_tuner(state, trainable, verbose)
    probe.mark("driver.fit_start")
    # Only while the Tuner runs: a bare Tuner later in the process (mdfr bench sweep) is bare.
    pending = {"TUNE_MAX_PENDING_TRIALS_PG": str(max_pending(plan))}
    with scoped_env({**TUNE_ENV, **pending}, user_wins=True):
        results = tuner.fit()
    return summarise(state, results)


def max_pending(plan: SweepPlan) -> int:
    """How many trials Tune may have waiting for resources (and an actor) at once.

    For a custom searcher Tune's default is one: without ``max_concurrent`` trials then start
    one after another, each waiting for its actor to start (seconds), so filling a 32-GPU
    cluster of half-GPU trials took minutes (``mdfr bench scale``). As many as fit the cluster
    (or ``max_concurrent``) may wait instead; a user's ``TUNE_MAX_PENDING_TRIALS_PG`` wins.
    """
    have = ray.cluster_resources()
    need = {"CPU": plan.resources.cpu, "GPU": plan.resources.gpu}
    fit = min((int(have.get(k, 0) // v) for k, v in need.items() if v > 0), default=1)
    return max(1, min(plan.num_trials, plan.max_concurrent or fit))


def _new_tuner(state: SweepState, trainable: Any, verbose: int) -> tune.Tuner:
    plan = state.plan
    exp_dir = Path(state.exp_dir)
    callbacks: list[Any] = [
        RunCloser(state.tracking_uri, state.experiment_id, state.parent_run_id),
        JsonLoggerCallback(),
    ]
    if verbose:
        callbacks.append(ProgressPrinter(plan.metric, plan.num_trials, verbose))
    return tune.Tuner(
        trainable,
        param_space={"mdfr_state": str(state.state_file)},
        tune_config=tune.TuneConfig(
            search_alg=GridOptunaSearcher(plan, f"sqlite:///{exp_dir / OPTUNA_FILE}"),
            scheduler=make_scheduler(plan.scheduler),
            num_samples=plan.num_trials,
            max_concurrent_trials=plan.max_concurrent,
            # Every trial of a sweep asks for the same resources, so a finished trial's
            # process can take the next one: without this each trial pays a fresh
            # interpreter plus torch/MLflow imports (8-14 s a round on 2 CPUs; see
            # results/bench/sweep-ab-reuse-actors-cpu-2026-11-26.json).
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=exp_dir.name,
            storage_path=str(exp_dir.parent),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=plan.num_to_keep),
            callbacks=callbacks,
            # Tune's own console output is off: ProgressPrinter shows what a sweep user needs.
            verbose=0,
        ),
    )


def summarise(state: SweepState, results: Any) -> SweepOutcome:
    """The Tune results as one :class:`TrialSummary` per trial, sorted by trial key."""
    plan: SweepPlan = state.plan
    # Tune returns normally after a Ctrl-C (it saved its state for a restore). Its public
    # counts tell a stopped sweep from a finished one: every planned trial is then terminated
    # (finished, or pruned by the scheduler) or errored.
    stopped = results.num_terminated + results.num_errors < plan.num_trials
    trials = []
    for r in results:
        cfg = r.config or {}
        m = r.metrics or {}
        if r.error is not None:
            status = Outcome.ERROR
        elif m.get(FINAL_KEY):
            status = str(m.get(STATUS, Outcome.OK))
        else:  # an interrupted sweep cannot tell a pruned trial from a stopped one
            status = Outcome.UNFINISHED if stopped else Outcome.PRUNED
        trials.append(
            TrialSummary(str(cfg.get("trial_key")), status, m.get(plan.metric), str(r.path))
        )
    trials.sort(key=lambda t: t.trial_key)
    return SweepOutcome(
        Path(state.exp_dir),
        plan.experiment,
        state.tracking_uri,
        state.parent_run_id,
        trials,
        planned=plan.num_trials,
    )


def _trial_name(trial: Any) -> str:
    # Our stable key first (folders sort by cell), Tune's id last (unique per Tune trial).
    return f"{trial.config.get('trial_key', 'trial')}_{trial.trial_id}"
