"""What a finished sweep leaves in MLflow beside its runs: the trial table and the champion.

Runs once the Tuner returns (and again after ``mdfr sweep resume``; both steps are
idempotent). It reads the sweep's trial runs back from MLflow, the one record every attempt
and resume writes to, so it sees the same trials whichever driver ran them.

**Champion rule** (``log_models`` ``best`` or ``all``; none with ``none``): among the trials
that finished with status ``ok``, those of Table II setup ``proposed`` (or, when the sweep has
none, of mode ``mdfr``), the one with the best value of the selection metric; ties go to the
lower trial key. The selection metric is the sweep's own search or scheduler metric when it is
a validation one (``val/...``, with its mode), else ``val/acc`` (maximised): validation, never
test, so the test accuracies stay an unbiased report of the chosen model. The champion's model
(logged now when ``best``, already there when ``all``) is registered under the sweep's
experiment name with alias ``champion``; the version's description states the rule, the
metric and its value.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mdfr import tracking, trained
from mdfr.names import EPOCH, VAL_ACC, Kind, Outcome, Tag, acc_metric
from mdfr.sweep.plan import SweepPlan
from mdfr.sweep.state import SweepState
from mdfr.tracking import models
from mdfr.tracking.sweep_run import log_summary_table

CHAMPION_ALIAS = "champion"
DEFAULT_SELECTION = (VAL_ACC, "max")
TEST_RESTORED = acc_metric("test", "restored")
_RESULT_KEYS = (
    VAL_ACC,
    *(acc_metric("test", v) for v in ("original", "compressed", "restored")),
    acc_metric("test", "restored", balanced=True),
)


def selection(plan: SweepPlan) -> tuple[str, str]:
    """(metric, mode) that chooses the champion (see the module docstring)."""
    for metric, mode in (
        (plan.search_alg.metric, plan.search_alg.mode or plan.scheduler.mode),
        (plan.scheduler.metric, plan.scheduler.mode),
    ):
        if metric and metric.startswith("val/"):
            return metric, mode or "max"
    return DEFAULT_SELECTION


def pick_champion(runs: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The champion among trial runs (dicts of :func:`mdfr.tracking.fetch_sweep_runs`)."""
    ok = [r for r in runs if r["tags"].get(Tag.STATUS) == Outcome.OK and metric in r["metrics"]]
    pool = [r for r in ok if r["tags"].get(Tag.SETUP) == "proposed"] or [
        r for r in ok if r["tags"].get(Tag.MODE) == "mdfr"
    ]
    if not pool:
        return None
    sign = -1.0 if mode == "max" else 1.0
    return min(pool, key=lambda r: (sign * r["metrics"][metric], r["tags"][Tag.TRIAL_KEY]))


def summary_rows(runs: list[dict[str, Any]], plan: SweepPlan) -> list[dict[str, Any]]:
    """One row per trial run for the parent run's table."""
    rows = []
    for r in sorted(runs, key=lambda r: r["tags"].get(Tag.TRIAL_KEY, "")):
        tags, metrics, params = r["tags"], r["metrics"], r["params"]
        row: dict[str, Any] = {
            "trial_key": tags.get(Tag.TRIAL_KEY, r["run_name"]),
            "setup": tags.get(Tag.SETUP, ""),
            "backbone": tags.get(Tag.BACKBONE, ""),
            "seed": int(tags[Tag.SEED]) if tags.get(Tag.SEED, "").isdigit() else None,
            "status": tags.get(Tag.STATUS, r["status"]),
        }
        for key in _RESULT_KEYS:
            row[key] = metrics.get(key)
        row["epochs"] = metrics.get(EPOCH)
        for axis in plan.search:
            row[axis.name] = params.get(axis.name)
        row["run_id"] = r["run_id"]
        rows.append(row)
    return rows


def log_trial_model(
    store: tracking.Store,
    run_id: str,
    out: str | Path,
    name: str,
    tags: dict[str, str],
    step: int,
    log: Callable[[str], None] = print,
) -> str | None:
    """Log the network trained in trial folder ``out`` as a model of ``run_id``.

    A failure never fails the finished trial (its weights stay in ``out``): the run gets an
    ``mdfr.model_error`` tag and the sweep goes on.

    Returns:
        The logged model id, or None when it could not be logged.
    """
    try:
        return models.log_model(store, run_id, trained.load_trial(out), name, tags, step)
    except Exception as e:  # noqa: BLE001 - whatever broke, the trial's work is kept
        store.tracker(run_id).set_tags({Tag.MODEL_ERROR: str(e)[:4000]})
        log(f"warning: {name}: its model was not logged to MLflow: {e}")
        return None


def finish(state: SweepState, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Log the trial table on the parent run and register the champion.

    Returns:
        ``{"trial_key", "run_id", "metric", "value", "model_uri", "version"}`` of the
        champion, or None when there is none (``log_models: none``, or no finished trial).
    """
    plan = state.plan
    store = tracking.Store(state.tracking_uri)
    runs = tracking.fetch_sweep_runs(
        plan.experiment, store.uri, parent_run_id=state.parent_run_id, kind=Kind.TRIAL
    )
    log_summary_table(store, state.parent_run_id, summary_rows(runs, plan))
    if plan.log_models == "none":
        return None
    metric, mode = selection(plan)
    champ = pick_champion(runs, metric, mode)
    if champ is None:
        log("no MDFRNet trial finished ok with a validation metric: no champion to register")
        return None
    return _register(store, state, champ, metric, mode, log)


def _register(
    store: tracking.Store,
    state: SweepState,
    champ: dict[str, Any],
    metric: str,
    mode: str,
    log: Callable[[str], None],
) -> dict[str, Any] | None:
    plan, tags, run_id = state.plan, champ["tags"], champ["run_id"]
    key = tags[Tag.TRIAL_KEY]
    have = models.logged_models_of(store, run_id)
    model_id = have[-1].model_id if have else None
    if model_id is None:
        out = tags.get(Tag.OUTPUT_DIR) or str(Path(state.exp_dir) / "trials" / key)
        step = int(champ["metrics"].get(EPOCH, 0))
        model_id = log_trial_model(store, run_id, out, key, model_tags(tags), step, log)
    if model_id is None:
        return None
    value = champ["metrics"][metric]
    version = models.register(
        store,
        model_id,
        plan.experiment,
        CHAMPION_ALIAS,
        _description(state, champ, metric, mode),
        {Tag.SWEEP: plan.name, Tag.TRIAL_KEY: key, metric: f"{value:.6g}"},
    )
    uri = f"models:/{plan.experiment}@{CHAMPION_ALIAS}"
    models.add_output(store, state.parent_run_id, model_id)
    store.tracker(run_id).set_tags({Tag.CHAMPION: "true"})
    store.tracker(state.parent_run_id).set_tags(
        {Tag.CHAMPION_RUN: run_id, Tag.CHAMPION_MODEL: f"{uri} (version {version})"}
    )
    log(f"champion: {key} ({metric} = {value:.4f}) -> {uri} (version {version})")
    return {
        "trial_key": key,
        "run_id": run_id,
        "metric": metric,
        "value": value,
        "model_uri": uri,
        "version": version,
    }


def _description(state: SweepState, champ: dict[str, Any], metric: str, mode: str) -> str:
    """The registered version's description: which trial, its value, and the rule."""
    tags, value = champ["tags"], champ["metrics"][metric]
    test = champ["metrics"].get(TEST_RESTORED)
    return (
        f"Champion of sweep {state.plan.name} (parent run {state.parent_run_id}): trial "
        f"{tags[Tag.TRIAL_KEY]}, setup {tags.get(Tag.SETUP) or tags.get(Tag.MODE)}, "
        f"{metric} = {value:.4f}. Rule: among the sweep's trials that finished ok with Table II "
        f"setup 'proposed' (else mode 'mdfr'), the {'highest' if mode == 'max' else 'lowest'} "
        f"{metric} on the validation split; ties go to the lower trial key; the test split "
        "takes no part."
        + (f" Test accuracy after restoration (reported only): {test:.4f}." if test else "")
    )


def model_tags(run_tags: dict[str, str]) -> dict[str, str]:
    """The run tags a logged model repeats (searchable in the Models tab)."""
    keys = (Tag.SWEEP, Tag.TRIAL_KEY, Tag.SETUP, Tag.BACKBONE, Tag.SEED, Tag.DATASET_HASH)
    return {k: run_tags[k] for k in (*keys, Tag.CODEC) if run_tags.get(k)}
