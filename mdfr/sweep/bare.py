"""A bare Ray Tune ``Tuner``: the baseline ``mdfr bench sweep`` measures the driver against.

Trials of the same shape as the benchmark's mdfr trials (``epochs`` reports, ``epoch_s`` of
sleep before each) through Tune alone: a function trainable, reused actors, the same
concurrency and per-trial CPU, local storage, no searcher, no MLflow, no checkpoints. What mdfr
adds on top (the sweep state, MLflow runs, grid x Optuna, checkpoints, callbacks) is the gap
between the two. It lives here because Ray is imported only under ``mdfr/sweep/``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ray import tune


def _bare_trial(config: dict[str, Any]) -> None:
    start = time.time()
    epochs = int(config["epochs"])
    for epoch in range(epochs):
        time.sleep(float(config["epoch_s"]))
        tune.report({"epoch": epoch + 1, "val/acc": 0.5, "train/loss": 1.0})
    end = time.time()
    out = Path(config["timing_dir"]) / f"{config['index']}.json"
    timing = {"start": start, "end": end, "work_s": epochs * config["epoch_s"], "pid": os.getpid()}
    out.write_text(json.dumps({**timing, "process_start": _process_start()}))


def _process_start() -> float | None:
    """Wall-clock start of this process (as mdfr.bench.sweep records it for mdfr's trials)."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - psutil missing or /proc unreadable: a diagnostic only
        return None


def run_bare(
    *, trials: int, epochs: int, epoch_s: float, concurrency: int, work: Path
) -> tuple[float, float, list[dict[str, Any]]]:
    """Run the bare sweep (Ray must be up); (call time, return time, per-trial timings)."""
    timing_dir = work / "bare-timings"
    timing_dir.mkdir(parents=True, exist_ok=True)
    t_call = time.time()
    tuner = tune.Tuner(
        tune.with_resources(_bare_trial, {"cpu": 1}),
        param_space={
            "index": tune.grid_search(list(range(trials))),
            "epochs": epochs,
            "epoch_s": epoch_s,
            "timing_dir": str(timing_dir),
        },
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
        run_config=tune.RunConfig(name="bare", storage_path=str(work / "bare-ray"), verbose=0),
    )
    results = tuner.fit()
    t_done = time.time()
    errors = [r.error for r in results if r.error is not None]
    if errors:
        raise RuntimeError(f"bare Tune sweep: {len(errors)} trials failed: {errors[0]}")
    timings = [json.loads(p.read_text()) for p in sorted(timing_dir.glob("*.json"))]
    return t_call, t_done, timings
