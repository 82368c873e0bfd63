"""Sweep machinery overhead (``mdfr bench sweep``), and the entry point that adds GPU packing.

**Overhead.** N trials of known length go through the real sweep machinery,
:func:`mdfr.sweep.driver.run_sweep` (MLflow parent and child runs, the grid searcher, the
``Tuner``, checkpoints persisted by Tune, the trial wrapper in :mod:`mdfr.sweep.trainable`), with
a ``train_fn`` (:func:`timed_trial`) that stands in for the engine: per epoch it waits ``epoch_s``
seconds (the trial's "work"), then does the engine's bookkeeping (a checkpoint file, MLflow
metrics, the Tune report). The ideal wall time is ``ceil(N / concurrency) × epochs × epoch_s``;
everything above it is overhead, reported as a share of the measured wall time. Ray's own start
is timed apart (a cluster is already up when ``ray job submit`` runs a sweep) and also reported
folded in.

**Packing** (CUDA): :mod:`mdfr.bench.packing`.

Ray is reached only through :mod:`mdfr.sweep` (``run_sweep``, ``ray_session``); this module
imports no Ray itself. The overhead trials' processes import this module to run
:func:`timed_trial`, so what they would not import anyway (the driver, torch, the packing
benchmark) is imported inside the functions that need it: they must not pay for it before the
trial's clock starts.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdfr.bench.machine import envelope, load_average
from mdfr.errors import MdfrError, UsageError
from mdfr.names import EPOCH, EPOCH_TIME, TRAIN_LOSS, VAL_ACC, Tag

TIMING_FILE = "bench_timing.json"


# --------------------------------------------------------------------------- trial functions


def timed_trial(
    cfg: Any,
    report: Callable[[dict[str, Any], str | None], None] | None = None,
    tracker: Any = None,
    checkpoint: Any = None,
    *,
    epoch_s: float,
    checkpoint_kb: int = 1024,
) -> dict[str, Any]:
    """A stand-in for :func:`mdfr.engine.train_trial` whose work lasts ``epoch_s`` per epoch.

    It keeps the engine's per-trial and per-epoch bookkeeping (params and tags, a checkpoint
    file of ``checkpoint_kb``, per-epoch MLflow metrics, ``report``), which is part of the
    overhead being measured; only the training itself is replaced by a sleep. Start, end and
    work seconds go to ``<output_dir>/bench_timing.json`` for the driver side to read.
    """
    start = time.time()
    # Lazy: after the clock starts, as the engine's would be: a fresh trial process pays for
    # its imports inside the trial.
    import numpy as np

    from mdfr import checkpoints as ckpt

    out = Path(cfg.output_dir)
    process_start = _process_start()
    if tracker is not None:
        tracker.log_params(cfg.to_flat_dict())
        tracker.set_tags({Tag.MODE: cfg.mode, Tag.SEED: str(cfg.seed), Tag.BENCH: "1"})
    state_dir = out / "checkpoint"
    payload = np.zeros(checkpoint_kb * 256, dtype=np.float32)  # checkpoint_kb KiB
    epochs = cfg.train.epochs
    for epoch in range(epochs):
        t0 = time.perf_counter()
        time.sleep(epoch_s)
        ckpt.atomic_save(
            {"epoch": epoch, "cfg_hash": cfg.hash(), "payload": payload},
            state_dir / ckpt.STATE_FILE,
        )
        metrics = {
            EPOCH: epoch + 1,
            VAL_ACC: 0.5,
            TRAIN_LOSS: 1.0,
            EPOCH_TIME: time.perf_counter() - t0,
        }
        if tracker is not None:
            tracker.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch + 1)
        if report is not None:
            report(metrics, str(state_dir))
    end = time.time()
    (out / TIMING_FILE).write_text(
        json.dumps(
            {"start": start, "end": end, "work_s": epochs * epoch_s, "process_start": process_start}
        )
    )
    return {"status": "ok", "acc_original": 0.5, "checkpoint": str(state_dir), "epochs": epochs}


def _process_start() -> float | None:
    """Wall-clock start of this process (Ray may start trial processes ahead of time)."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # psutil missing or /proc unreadable: a diagnostic only
        return None


# --------------------------------------------------------------------------- plans


def bench_plan(
    name: str,
    dataset: Path,
    work: Path,
    trials: int,
    epochs: int,
    concurrency: int,
    cpu: int,
    gpu: float,
) -> Any:
    # Lazy: see the module docstring (the trial processes import this module).
    from mdfr.sweep.spec import build_plan

    raw = {
        "name": name,
        "experiment": f"mdfr-bench-{name}",
        "description": "mdfr bench: trials of known length through the sweep machinery",
        # Mode pretrain needs no pretrained CMI net; the train_fn ignores the model anyway.
        "base": {
            "mode": "pretrain",
            "data": {"dataset": str(dataset)},
            "model": {"backbone": "test_remnet"},
            "train": {"epochs": epochs, "device": "cpu" if gpu == 0 else "cuda"},
        },
        "grid": {"seed": list(range(trials))},
        "resources": {"cpu": cpu, "gpu": gpu},
        "max_concurrent": concurrency,
        "failure": {"max_failures": 0},
        "checkpoint": {"num_to_keep": 1},
        "storage": str(work / "ray"),
        "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "pretrain": False,
    }
    return build_plan(raw, source="mdfr bench sweep")


def read_timings(exp_dir: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted((exp_dir / "trials").glob(f"*/{TIMING_FILE}")):
        out.append({"trial": f.parent.name, **json.loads(f.read_text())})
    return out


# --------------------------------------------------------------------------- overhead


def measure_overhead(
    *,
    trials: int,
    trial_s: float,
    epochs: int,
    concurrency: int,
    dataset: Path,
    work: Path,
    ray_start_s: float,
    checkpoint_kb: int = 1024,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``trials`` sleeping trials through :func:`mdfr.sweep.driver.run_sweep`; time it.

    Ray must be up already (:func:`mdfr.sweep.driver.ray_session`); ``ray_start_s`` is how
    long that took, reported beside the sweep's own overhead.
    """
    # Lazy: see the module docstring (the trial processes import this module).
    from mdfr.sweep.driver import run_sweep

    epoch_s = trial_s / epochs
    plan = bench_plan("overhead", dataset, work, trials, epochs, concurrency, cpu=1, gpu=0.0)
    train_fn = functools.partial(timed_trial, epoch_s=epoch_s, checkpoint_kb=checkpoint_kb)
    t_call = time.time()
    outcome = run_sweep(plan, root=work, train_fn=train_fn, verbose=0, log=_prefixed(log))
    t_done = time.time()
    if outcome.failed or len(outcome.trials) != trials:
        raise MdfrError(f"sweep bench: trials failed or went missing: {outcome.counts}")
    timings = read_timings(outcome.exp_dir)
    if len(timings) != trials:
        raise MdfrError(f"sweep bench: {len(timings)} of {trials} trials left their timing file")
    rounds = math.ceil(trials / concurrency)
    ideal = rounds * trial_s
    wall = t_done - t_call
    starts = [t["start"] for t in timings]
    ends = [t["end"] for t in timings]
    in_trial = [t["end"] - t["start"] - t["work_s"] for t in timings]
    durations = [t["end"] - t["start"] for t in timings]
    # Between the first trial starting and the last one ending, anything beyond `rounds` trial
    # durations is time a slot sat empty: trial hand-over (actor start, MLflow child run).
    span = max(ends) - min(starts)
    return {
        "trials": trials,
        "trial_s": trial_s,
        "epochs": epochs,
        "concurrency": concurrency,
        "checkpoint_kb": checkpoint_kb,
        "ideal_s": round(ideal, 3),
        "wall_s": round(wall, 3),
        "overhead_s": round(wall - ideal, 3),
        "overhead_pct": round(100 * (wall - ideal) / wall, 2),
        "ray_start_s": round(ray_start_s, 3),
        "overhead_pct_with_ray_start": round(
            100 * (wall + ray_start_s - ideal) / (wall + ray_start_s), 2
        ),
        "breakdown": {
            "to_first_trial_s": round(min(starts) - t_call, 3),
            "trial_span_s": round(span, 3),
            "slot_idle_s": round(span - rounds * statistics.mean(durations), 3),
            "after_last_trial_s": round(t_done - max(ends), 3),
            "in_trial_bookkeeping_s_mean": round(statistics.mean(in_trial), 3),
            "per_epoch_bookkeeping_s_mean": round(statistics.mean(in_trial) / epochs, 4),
        },
    }


def _prefixed(log: Callable[[str], None]) -> Callable[[str], None]:
    return lambda msg: log(f"sweep: {msg}")


# --------------------------------------------------------------------------- entry point


def run_sweep_bench(
    device: str = "cpu",
    quick: bool = False,
    trials: int | None = None,
    trial_s: float | None = None,
    epochs: int | None = None,
    concurrency: int | None = None,
    overhead: bool = True,
    packing: Sequence[int] | None = None,
    packing_seconds: float | None = None,
    packing_variant: str = "bf16_channels_last",
    packing_batch: int = 64,
    packing_runner: str = "auto",
    checkpoint_mb: float = 1.0,
    address: str | None = None,
    cache: str | Path | None = None,
    keep: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Sweep overhead (and GPU packing on CUDA); returns the result document.

    Args:
        device: ``cpu`` or ``cuda`` (packing runs only on CUDA).
        quick: 2 trials × 2 epochs × 0.5 s at concurrency 2 (tests).
        trials, trial_s, epochs, concurrency: the overhead sweep (default 4 × 30 s in 5 epochs
            at concurrency 2).
        overhead: run the overhead sweep.
        packing: trials per GPU to compare (default 1 and 4).
        packing_seconds: timed window of each packing trial (default 20).
        packing_variant, packing_batch: what each packing trial trains (a
            :data:`mdfr.bench.step.VARIANTS` name; 64 = the engine's default batch).
        packing_runner: ``auto``, ``ray`` or ``processes``.
        checkpoint_mb: size of the checkpoint each overhead trial writes and reports per epoch
            (MDFRNet at paper width with dpec_convnext and RMSprop state: about 360 MB).
        address: an existing Ray cluster (default: start one locally).
        cache: where the bench dataset is cached (the sweep driver needs a prepared one).
        keep: keep the sweep's storage and MLflow folder (default: deleted afterwards).
        log: receives progress lines.
    """
    # Lazy: torch and the step benchmark (see the module docstring).
    import torch

    from mdfr.bench.step import VARIANTS

    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    if packing_variant not in VARIANTS:
        raise UsageError(
            f"unknown --packing-variant {packing_variant!r}; known: {', '.join(VARIANTS)}"
        )
    if quick:
        sizes = (trials or 2, trial_s or 1.0, epochs or 2, concurrency or 2)
    else:
        sizes = (trials or 4, trial_s or 30.0, epochs or 5, concurrency or 2)
    over = _Overhead(*sizes, checkpoint_kb=int(checkpoint_mb * 1024))
    pack = _packing(quick, packing, packing_seconds, packing_variant, packing_batch, packing_runner)
    doc = envelope(
        "sweep", device, _config(over, pack, device, quick, overhead, address, checkpoint_mb)
    )
    work = Path(tempfile.mkdtemp(prefix="mdfr-bench-sweep-"))
    try:
        doc["results"] = _measure(
            device, over if overhead else None, pack, address, cache, work, log
        )
    finally:
        if keep:
            log(f"sweep: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    doc["targets"] = _targets(doc["results"], over.trial_s)
    doc["machine"]["load_average_end"] = load_average()
    return doc


@dataclass(frozen=True)
class _Overhead:
    trials: int
    trial_s: float
    epochs: int
    concurrency: int
    checkpoint_kb: int


@dataclass(frozen=True)
class _Packing:
    ks: list[int]
    seconds: float
    variant: str
    runner: str
    setup: dict[str, Any]


def _packing(
    quick: bool,
    ks: Sequence[int] | None,
    seconds: float | None,
    variant: str,
    batch: int,
    runner: str,
) -> _Packing:
    """What each packing trial trains: paper width (a tiny network when ``quick``)."""
    return _Packing(
        ks=list(ks or (1, 4)),
        seconds=seconds or (5.0 if quick else 20.0),
        variant=variant,
        runner=runner,
        setup={
            "width": 8 if quick else 64,
            "depth": 2 if quick else 4,
            "backbone": "test_dpec_convnext" if quick else "dpec_convnext",
            "batch": batch,
            "warmup": 3,
            "steps": 0,
        },
    )


def _config(
    over: _Overhead,
    pack: _Packing,
    device: str,
    quick: bool,
    overhead: bool,
    address: str | None,
    checkpoint_mb: float,
) -> dict[str, Any]:
    return {
        "trials": over.trials,
        "trial_s": over.trial_s,
        "epochs": over.epochs,
        "concurrency": over.concurrency,
        "quick": quick,
        "overhead": overhead,
        "packing": pack.ks if device == "cuda" else None,
        "packing_seconds": pack.seconds,
        "checkpoint_mb": checkpoint_mb,
        "address": address,
    }


def _measure(
    device: str,
    over: _Overhead | None,
    pack: _Packing,
    address: str | None,
    cache: str | Path | None,
    work: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The overhead sweep (``over``, unless None) and, on CUDA, the packing runs."""
    # Lazy: see the module docstring (the trial processes import this module).
    from mdfr.bench.loader import DEFAULT_CACHE, ensure_dataset
    from mdfr.bench.packing import measure_packing
    from mdfr.sweep.session import ray_session

    results: dict[str, Any] = {}
    dataset: Path | None
    try:
        dataset = ensure_dataset("quick", Path(cache or DEFAULT_CACHE), log)
    except ImportError as e:
        if over is not None:
            raise
        dataset = None  # packing can still run as plain processes
        log(f"sweep: no bench dataset ({e}); packing runs as plain processes")
    have_ray = importlib.util.find_spec("ray") is not None
    use_ray_packing = (
        device == "cuda"
        and pack.runner != "processes"
        and (pack.runner == "ray" or (have_ray and dataset is not None))
    )
    with contextlib.ExitStack() as stack:
        t0 = time.time()
        if over is not None or use_ray_packing:
            # Sleeping trials need no cores: let Ray run `concurrency` of them on 2 cores.
            cpus = max(os.cpu_count() or 1, over.concurrency if over else 1)
            stack.enter_context(ray_session(address, num_cpus=cpus))
        ray_start = time.time() - t0
        if over is not None:
            assert dataset is not None
            results["overhead"] = _overhead(over, dataset, work, ray_start, log)
        if device == "cuda":
            results["packing"] = measure_packing(
                ks=pack.ks,
                seconds=pack.seconds,
                setup=pack.setup,
                variant=pack.variant,
                dataset=dataset,
                work=work,
                use_ray=use_ray_packing,
                log=log,
            )
        else:
            results["packing"] = {"status": "skipped", "reason": "GPU packing needs --device cuda"}
        t_stop = time.time()
    results["ray_stop_s"] = round(time.time() - t_stop, 3)
    return results


def _overhead(
    over: _Overhead, dataset: Path, work: Path, ray_start: float, log: Callable[[str], None]
) -> dict[str, Any]:
    ideal = math.ceil(over.trials / over.concurrency) * over.trial_s
    log(
        f"sweep: overhead: {over.trials} trials × {over.trial_s:g} s ({over.epochs} epochs) at "
        f"concurrency {over.concurrency}; ideal {ideal:g} s (Ray up in {ray_start:.1f} s)"
    )
    r = measure_overhead(
        trials=over.trials,
        trial_s=over.trial_s,
        epochs=over.epochs,
        concurrency=over.concurrency,
        dataset=dataset,
        work=work,
        ray_start_s=ray_start,
        checkpoint_kb=over.checkpoint_kb,
        log=log,
    )
    log(
        f"sweep: wall {r['wall_s']:.1f} s vs ideal {r['ideal_s']:.1f} s: overhead "
        f"{r['overhead_pct']:.1f}% ({r['overhead_pct_with_ray_start']:.1f}% with "
        f"Ray's {r['ray_start_s']:.1f} s start)"
    )
    return r


def _targets(results: dict[str, Any], trial_s: float) -> dict[str, Any]:
    over = results.get("overhead")
    packing = results["packing"]
    rows = packing.get("rows", []) if isinstance(packing, dict) else []
    k4 = next((r for r in rows if r["k"] == 4), None)
    return {
        "overhead_pct_max": 5.0,
        "overhead_applies_to": "30-second trials on CPU",
        "overhead_met": (over["overhead_pct"] <= 5.0) if over and trial_s >= 30 else None,
        "packing_k4_over_k1_min": 2.0,
        "packing_applies_to": "H100",
        "packing_met": (k4["speedup_vs_k1"] >= 2.0) if k4 and "speedup_vs_k1" in k4 else None,
    }
