"""What mdfr adds over bare Ray Tune (``mdfr bench sweep``): both measured in one run.

N trials of known length (``epochs`` × ``epoch_s`` of sleep) run twice on the same Ray
instance, first through the real sweep driver (:func:`mdfr.sweep.driver.run_sweep`: sweep
state, MLflow parent and child runs, grid x Optuna searcher, checkpoints persisted by Tune,
callbacks) and then through a bare ``Tuner`` of the same shape (:mod:`mdfr.sweep.bare`). mdfr
runs first, so it never profits from anything the bare run warmed.

For each: wall = call to the last trial's end; ideal = ``ceil(N / concurrency) × trial_s``;
``overhead_pct`` = (wall − ideal) / wall. The difference of the two is what mdfr adds. mdfr's
part is broken down from :mod:`mdfr.probe` spans measured inside the driver and the trials.
The MLflow store (a new SQLite file) is created before mdfr's clock starts, as a sweep finds
it after the first one, and its creation is reported apart.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from mdfr import probe, tracking
from mdfr.bench.sweep import bench_plan, read_timings, timed_trial
from mdfr.errors import MdfrError
from mdfr.sweep.bare import run_bare
from mdfr.sweep.driver import run_sweep


def slot_stats(
    t_call: float, timings: list[dict[str, Any]], concurrency: int, trial_s: float
) -> dict[str, Any]:
    """Wall time to the last trial's end against the ideal, and where the slots sat idle."""
    rounds = math.ceil(len(timings) / concurrency)
    ideal = rounds * trial_s
    starts = [t["start"] for t in timings]
    ends = [t["end"] for t in timings]
    durations = [e - s for s, e in zip(starts, ends, strict=True)]
    wall = max(ends) - t_call
    span = max(ends) - min(starts)
    return {
        "ideal_s": round(ideal, 3),
        "wall_s": round(wall, 3),
        "overhead_s": round(wall - ideal, 3),
        "overhead_pct": round(100 * (wall - ideal) / wall, 2),
        "to_first_trial_s": round(min(starts) - t_call, 3),
        # Between the first start and the last end, anything beyond `rounds` trial durations
        # is time a slot sat empty: the hand-over from one trial to the next.
        "slot_idle_s": round(span - rounds * statistics.mean(durations), 3),
        "in_trial_overhead_s_mean": round(
            statistics.mean(d - t["work_s"] for d, t in zip(durations, timings, strict=True)), 3
        ),
        "process_to_first_trial_s_mean": _process_to_first_trial(timings),
    }


def _side(
    name: str,
    t_call: float,
    t_done: float,
    timings: list[dict[str, Any]],
    concurrency: int,
    trial_s: float,
    driver_cpu: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One side's figures (mdfr's or bare Tune's), logged in one line."""
    stats = slot_stats(t_call, timings, concurrency, trial_s)
    stats["after_last_trial_s"] = round(t_done - max(t["end"] for t in timings), 3)
    stats["driver_cpu_s"] = round(driver_cpu, 3)
    log(f"sweep: {name}: wall {stats['wall_s']:.1f} s, overhead {stats['overhead_pct']:.1f}%")
    return stats


def _process_to_first_trial(timings: list[dict[str, Any]]) -> float | None:
    """From a trial process's start to its first trial's start: Ray worker start, imports."""
    first: dict[Any, tuple[float, float]] = {}
    for t in timings:
        if t.get("process_start") is None:
            continue
        pid = t.get("pid", t["process_start"])
        if pid not in first or t["start"] < first[pid][0]:
            first[pid] = (t["start"], t["process_start"])
    return _mean([s - p for s, p in first.values()])


def measure_overhead(
    *,
    trials: int,
    trial_s: float,
    epochs: int,
    concurrency: int,
    dataset: Path,
    work: Path,
    ray_start_s: float,
    checkpoint_kb: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """mdfr's and bare Tune's overhead for the same trials; Ray must be up already.

    ``ray_start_s`` (how long Ray took to start) is reported beside, not inside, either figure:
    a cluster is already up when a sweep is submitted to it.
    """
    epoch_s = trial_s / epochs
    plan = bench_plan("overhead", dataset, work, trials, epochs, concurrency, cpu=1, gpu=0.0)
    train_fn = functools.partial(timed_trial, epoch_s=epoch_s, checkpoint_kb=checkpoint_kb)
    # A sweep normally logs to a store that exists (results/mlflow.db after the first sweep, or
    # a server): its creation (MLflow's schema migrations, seconds) is timed apart.
    t0 = time.time()
    tracking.Store(plan.tracking_uri).ensure_experiment(plan.experiment)
    store_ready_s = time.time() - t0
    probe.take()  # start the driver's record clean
    cpu0 = driver_cpu_s()
    t_call = time.time()
    outcome = run_sweep(plan, root=work, train_fn=train_fn, verbose=0, log=lambda m: None)
    t_done = time.time()
    cpu_mdfr = driver_cpu_s() - cpu0
    if outcome.failed or len(outcome.trials) != trials:
        raise MdfrError(f"sweep bench: trials failed or went missing: {outcome.counts}")
    driver = json.loads((outcome.exp_dir / probe.DRIVER_FILE).read_text())["spans"]
    timings = read_timings(outcome.exp_dir)
    if len(timings) != trials:
        raise MdfrError(f"sweep bench: {len(timings)} of {trials} trials left their timing file")
    mdfr = _side("mdfr", t_call, t_done, timings, concurrency, trial_s, cpu_mdfr, log)

    cpu0 = driver_cpu_s()
    b_call, b_done, b_timings = run_bare(
        trials=trials, epochs=epochs, epoch_s=epoch_s, concurrency=concurrency, work=work
    )
    cpu_bare = driver_cpu_s() - cpu0
    if len(b_timings) != trials:
        raise MdfrError(f"sweep bench: bare Tune: {len(b_timings)} of {trials} trials timed")
    bare = _side("bare Tune", b_call, b_done, b_timings, concurrency, trial_s, cpu_bare, log)

    trial_probes = _trial_probes(outcome.exp_dir)
    return {
        "trials": trials,
        "trial_s": trial_s,
        "epochs": epochs,
        "concurrency": concurrency,
        "checkpoint_kb": checkpoint_kb,
        "ideal_s": mdfr["ideal_s"],
        "wall_s": mdfr["wall_s"],
        "overhead_pct": mdfr["overhead_pct"],
        "bare_overhead_pct": bare["overhead_pct"],
        "mdfr_minus_bare_pp": round(mdfr["overhead_pct"] - bare["overhead_pct"], 2),
        "ray_start_s": round(ray_start_s, 3),
        "tracking_store_create_s": round(store_ready_s, 3),
        "overhead_pct_with_ray_start": round(
            100 * (mdfr["wall_s"] + ray_start_s - mdfr["ideal_s"]) / (mdfr["wall_s"] + ray_start_s),
            2,
        ),
        "mdfr": mdfr,
        "bare": bare,
        "breakdown": breakdown(t_call, driver, trial_probes, epochs),
        "spans": probe.summary(probe.merge([driver, *(p["spans"] for p in trial_probes)])),
    }


def driver_cpu_s() -> float:
    """CPU seconds (user + system) this process has used: the driver's own work."""
    t = psutil.Process().cpu_times()
    return t.user + t.system


def _trial_probes(exp_dir: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted((exp_dir / "trials").glob(f"*/{probe.TRIAL_FILE}")):
        out.append(json.loads(f.read_text()))
    return out


def _total(spans: dict[str, list[float]], *prefixes: str) -> float:
    return sum(sum(v) for k, v in spans.items() if k.startswith(prefixes))


def breakdown(
    t_call: float, driver: dict[str, list[float]], trials: list[dict[str, Any]], epochs: int
) -> dict[str, Any]:
    """mdfr's part, in seconds, from the driver's spans and each trial's probe file.

    Trial-side figures are totals over all trials (divide by the concurrency for their share
    of the wall time) and per-trial means; reports include Tune persisting the checkpoint.
    """
    in_trials = probe.merge([t["spans"] for t in trials])
    spans = probe.merge([driver, in_trials])
    fit_start = (driver.get(f"{probe.MARK}driver.fit_start") or [math.nan])[0]
    first = min((t["start"] for t in trials), default=math.nan)
    per_trial_start = [_total(t["spans"], "trial.setup", "trial.attempt") for t in trials]
    reports = spans.get("trial.report", [])
    return {
        "trial_probes": len(trials),
        "driver_start_s": round(fit_start - t_call, 3),
        "driver_start_parts_s": {
            k.removeprefix("driver."): round(sum(v), 3)
            for k, v in driver.items()
            if k.startswith("driver.")
        },
        "tune_to_first_trial_s": round(first - fit_start, 3),
        "mlflow_setup_s": round(_total(driver, "driver.mlflow_setup"), 3),
        "mlflow_driver_calls": sum(len(v) for k, v in driver.items() if k.startswith("mlflow.")),
        "mlflow_trial_calls_per_trial": round(
            sum(len(v) for k, v in in_trials.items() if k.startswith("mlflow."))
            / max(len(trials), 1),
            2,
        ),
        "mlflow_trial_s_total": round(_total(in_trials, "mlflow."), 3),
        "per_trial_start_s_mean": _mean(per_trial_start),
        "per_trial_start_parts_s_total": {
            k: round(_total(spans, f"trial.{k}"), 3) for k in ("setup", "attempt")
        },
        # In each trial's background thread (mdfr.sweep.trial_run): off the critical path
        # unless the trial's end has to wait for it (trial_finish).
        "open_run_background_s_total": round(_total(spans, "trial.open_run"), 3),
        "searcher_s_total": round(_total(driver, "searcher."), 4),
        "checkpoint_save_s_total": round(_total(spans, "trial.checkpoint_save"), 3),
        "report_s_total": round(sum(reports), 3),
        "report_s_mean": _mean(reports),
        "reports_per_trial": round(len(reports) / max(len(trials), 1), 2),
        "callbacks_s_total": round(_total(driver, "callback."), 4),
        "trial_finish_s_total": round(_total(spans, "trial.finish"), 3),
        "epochs": epochs,
    }


def _mean(values: list[float]) -> float | None:
    return round(statistics.mean(values), 4) if values else None
