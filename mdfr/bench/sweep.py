"""Sweep machinery overhead, and GPU packing (k trials sharing one GPU against one alone).

**Overhead.** N trials of known length go through the real sweep machinery,
:func:`mdfr.sweep.driver.run_sweep` (MLflow parent and child runs, the grid searcher, the
``Tuner``, checkpoints persisted by Tune, the trial wrapper in :mod:`mdfr.sweep.trainable`), with
a ``train_fn`` (:func:`timed_trial`) that stands in for the engine: per epoch it waits ``epoch_s``
seconds (the trial's "work"), then does the engine's bookkeeping (a checkpoint file, MLflow
metrics, the Tune report). The ideal wall time is ``ceil(N / concurrency) × epochs × epoch_s``;
everything above it is overhead, reported as a share of the measured wall time. Ray's own start
is timed apart (a cluster is already up when ``ray job submit`` runs a sweep) and also reported
folded in.

**Packing** (CUDA). k trials run MDFRNet training steps (paper width, the engine's default batch
of 64, bf16 + channels-last) on one GPU at once, each holding ``gpu: 1/k`` of it; after warm-up
they meet at a file barrier so their timed windows overlap, and the aggregate patches/s of k is
compared with one trial alone. Trials go through the sweep driver when Ray is installed, else
through k plain processes (the GPU sharing is the same; Ray adds no work on the GPU).

Ray is reached only through :mod:`mdfr.sweep` (``run_sweep``, ``ray_session``); this module
imports no Ray itself.
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
from pathlib import Path
from typing import Any

from mdfr.bench.machine import envelope, load_average
from mdfr.errors import MdfrError, UsageError

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
    start = time.time()  # before the imports: a fresh trial process pays for them here
    import numpy as np

    from mdfr import checkpoints as ckpt

    out = Path(cfg.output_dir)
    process_start = _process_start()
    if tracker is not None:
        tracker.log_params(cfg.to_flat_dict())
        tracker.set_tags({"mdfr.mode": cfg.mode, "mdfr.seed": str(cfg.seed), "mdfr.bench": "1"})
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
            "epoch": epoch + 1,
            "val/acc": 0.5,
            "train/loss": 1.0,
            "time/epoch_s": time.perf_counter() - t0,
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


def packing_work(
    setup: dict[str, Any],
    variant: str,
    seconds: float,
    barrier: str,
    k: int,
    tag: str,
    device: str = "cuda",
) -> dict[str, Any]:
    """Warm up MDFRNet training on the GPU, wait for the other ``k - 1``, train ``seconds``.

    Returns the patches trained in the timed window and its wall-clock bounds. (``device``
    ``cpu`` only exercises the mechanics, in tests.)
    """
    import torch

    from mdfr.bench.step import VARIANTS, StepRunner, StepSetup

    st = StepSetup(**setup)
    torch.backends.cudnn.benchmark = True
    runner = StepRunner(st, device, VARIANTS[variant])
    for _ in range(max(st.warmup, 1)):
        runner.step()
    runner.sync()
    gate = Path(barrier)
    (gate / f"ready-{tag}").touch()
    deadline = time.time() + 600
    # The barrier makes the k timed windows overlap: a trial still warming up (cuDNN autotuning
    # is heavy) would otherwise slow the early starters and flatter the late ones.
    while len(list(gate.glob("ready-*"))) < k:
        if time.time() > deadline:
            raise MdfrError(f"packing barrier: not all {k} trials became ready within 600 s")
        time.sleep(0.02)
    steps = 0
    t_start = time.time()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        runner.step()
        steps += 1
    runner.sync()
    elapsed = time.perf_counter() - t0
    return {
        "tag": tag,
        "patches": steps * st.batch,
        "steps": steps,
        "seconds": round(elapsed, 3),
        "patches_per_s": round(steps * st.batch / elapsed, 2),
        "t_start": t_start,
        "t_end": t_start + elapsed,
        "max_memory_gib": (
            round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None
        ),
    }


def packing_trial(
    cfg: Any,
    report: Callable[[dict[str, Any], str | None], None] | None = None,
    tracker: Any = None,
    checkpoint: Any = None,
    *,
    setup: dict[str, Any],
    variant: str,
    seconds: float,
    barrier: str,
    k: int,
    device: str = "cuda",
) -> dict[str, Any]:
    """:func:`packing_work` as a sweep ``train_fn`` (one epoch, one report)."""
    import torch

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out = Path(cfg.output_dir)
    r = packing_work(setup, variant, seconds, barrier, k, out.name, device)
    (out / TIMING_FILE).write_text(json.dumps(r))
    metrics = {"epoch": 1, "val/acc": 0.0, "train/patches_per_s": r["patches_per_s"]}
    if report is not None:
        report(metrics, None)
    return {"status": "ok", "acc_original": 0.0, "epochs": 1}


def _process_worker(args: tuple[Any, ...]) -> dict[str, Any]:
    return packing_work(*args)


# --------------------------------------------------------------------------- plans


def _plan(
    name: str,
    dataset: Path,
    work: Path,
    trials: int,
    epochs: int,
    concurrency: int,
    cpu: int,
    gpu: float,
) -> Any:
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


def _read_timings(exp_dir: Path) -> list[dict[str, Any]]:
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
    from mdfr.sweep.driver import run_sweep

    epoch_s = trial_s / epochs
    plan = _plan("overhead", dataset, work, trials, epochs, concurrency, cpu=1, gpu=0.0)
    train_fn = functools.partial(timed_trial, epoch_s=epoch_s, checkpoint_kb=checkpoint_kb)
    t_call = time.time()
    outcome = run_sweep(plan, root=work, train_fn=train_fn, verbose=0, log=_prefixed(log))
    t_done = time.time()
    if outcome.failed or len(outcome.trials) != trials:
        raise MdfrError(f"sweep bench: trials failed or went missing: {outcome.counts}")
    timings = _read_timings(outcome.exp_dir)
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


# --------------------------------------------------------------------------- packing


def measure_packing(
    *,
    ks: Sequence[int],
    seconds: float,
    setup: dict[str, Any],
    variant: str,
    dataset: Path | None,
    work: Path,
    use_ray: bool,
    device: str = "cuda",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Aggregate training throughput of k trials per GPU for each k in ``ks``.

    Args:
        use_ray: run the trials through the sweep driver (Ray must be up, and ``dataset`` a
            prepared dataset for it), else as plain processes.
        device: ``cuda``; ``cpu`` only exercises the mechanics (tests).
    """
    from mdfr.bench.machine import bf16_peak_tflops
    from mdfr.bench.step import StepSetup, flops_per_patch

    flops = flops_per_patch(StepSetup(**setup))["flops_train_step"]
    peak = None
    if device == "cuda":
        import torch

        peak = bf16_peak_tflops(torch.cuda.get_device_name(0))
    rows = []
    for k in ks:
        barrier = work / f"barrier-{k}"
        shutil.rmtree(barrier, ignore_errors=True)
        barrier.mkdir(parents=True)
        t0 = time.time()
        if use_ray:
            assert dataset is not None
            per_trial = _packing_ray(
                k, seconds, setup, variant, str(barrier), dataset, work, device
            )
        else:
            per_trial = _packing_processes(k, seconds, setup, variant, str(barrier), device)
        total = sum(r["patches_per_s"] for r in per_trial)
        span = max(r["t_end"] for r in per_trial) - min(r["t_start"] for r in per_trial)
        rows.append(
            {
                "k": k,
                "gpu_per_trial": round(1 / k, 4),
                "aggregate_patches_per_s": round(total, 1),
                "aggregate_tflops": round(total * flops / 1e12, 3),
                "mfu": round(total * flops / 1e12 / peak, 4) if peak else None,
                "aggregate_over_span_patches_per_s": round(
                    sum(r["patches"] for r in per_trial) / span, 1
                ),
                "per_trial": per_trial,
                "wall_s": round(time.time() - t0, 1),
            }
        )
        each = ", ".join(f"{r['patches_per_s']:.0f}" for r in per_trial)
        log(f"sweep: packing k={k}: {total:10.1f} patches/s aggregate ({each})")
    base = next((r for r in rows if r["k"] == 1), None)
    if base:
        for r in rows:
            r["speedup_vs_k1"] = round(
                r["aggregate_patches_per_s"] / base["aggregate_patches_per_s"], 3
            )
    return {
        "runner": "ray-tune (mdfr.sweep.driver.run_sweep)" if use_ray else "processes",
        "variant": variant,
        "setup": setup,
        "seconds": seconds,
        "flops_per_patch": flops,
        "peak_tflops": peak,
        "rows": rows,
    }


def _packing_ray(
    k: int,
    seconds: float,
    setup: dict[str, Any],
    variant: str,
    barrier: str,
    dataset: Path,
    work: Path,
    device: str,
) -> list[dict[str, Any]]:
    from mdfr.sweep.driver import run_sweep

    gpu = 1.0 / k if device == "cuda" else 0.0
    plan = _plan(f"packing-k{k}", dataset, work, k, 1, k, cpu=1, gpu=gpu)
    fn = functools.partial(
        packing_trial,
        setup=setup,
        variant=variant,
        seconds=seconds,
        barrier=barrier,
        k=k,
        device=device,
    )
    outcome = run_sweep(plan, root=work, train_fn=fn, verbose=0, log=lambda _m: None)
    if outcome.failed:
        raise MdfrError(f"packing k={k}: trials failed: {outcome.counts}")
    rows = [{k2: v for k2, v in t.items() if k2 != "trial"} for t in _read_timings(outcome.exp_dir)]
    if len(rows) != k:
        raise MdfrError(f"packing k={k}: {len(rows)} of {k} trials reported")
    return rows


def _packing_processes(
    k: int, seconds: float, setup: dict[str, Any], variant: str, barrier: str, device: str
) -> list[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: CUDA cannot be used in a forked child of a process that touched it.
    ctx = multiprocessing.get_context("spawn")
    args = [(setup, variant, seconds, barrier, k, f"p{i}", device) for i in range(k)]
    with ProcessPoolExecutor(max_workers=k, mp_context=ctx) as pool:
        return list(pool.map(_process_worker, args))


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
    import torch

    from mdfr.bench.loader import DEFAULT_CACHE, ensure_dataset
    from mdfr.bench.step import VARIANTS

    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    if packing_variant not in VARIANTS:
        raise UsageError(
            f"unknown --packing-variant {packing_variant!r}; known: {', '.join(VARIANTS)}"
        )
    if quick:
        trials, trial_s, epochs, concurrency = (
            trials or 2,
            trial_s or 1.0,
            epochs or 2,
            concurrency or 2,
        )
    else:
        trials, trial_s, epochs, concurrency = (
            trials or 4,
            trial_s or 30.0,
            epochs or 5,
            concurrency or 2,
        )
    ks = list(packing or (1, 4))
    packing_seconds = packing_seconds or (5.0 if quick else 20.0)
    setup = {
        "width": 8 if quick else 64,
        "depth": 2 if quick else 4,
        "backbone": "test_dpec_convnext" if quick else "dpec_convnext",
        "batch": packing_batch,
        "warmup": 3,
        "steps": 0,
    }
    doc = envelope(
        "sweep",
        device,
        {
            "trials": trials,
            "trial_s": trial_s,
            "epochs": epochs,
            "concurrency": concurrency,
            "quick": quick,
            "overhead": overhead,
            "packing": ks if device == "cuda" else None,
            "packing_seconds": packing_seconds,
            "checkpoint_mb": checkpoint_mb,
            "address": address,
        },
    )
    work = Path(tempfile.mkdtemp(prefix="mdfr-bench-sweep-"))
    results: dict[str, Any] = {}
    try:
        dataset: Path | None
        try:
            dataset = ensure_dataset("quick", Path(cache or DEFAULT_CACHE), log)
        except ImportError as e:
            if overhead:
                raise
            dataset = None  # packing can still run as plain processes
            log(f"sweep: no bench dataset ({e}); packing runs as plain processes")
        have_ray = importlib.util.find_spec("ray") is not None
        use_ray_packing = (
            device == "cuda"
            and packing_runner != "processes"
            and (packing_runner == "ray" or (have_ray and dataset is not None))
        )
        with contextlib.ExitStack() as stack:
            t0 = time.time()
            if overhead or use_ray_packing:
                from mdfr.sweep.session import ray_session

                # Sleeping trials need no cores: let Ray run `concurrency` of them on 2 cores.
                stack.enter_context(
                    ray_session(address, num_cpus=max(os.cpu_count() or 1, concurrency))
                )
            ray_start = time.time() - t0
            if overhead:
                assert dataset is not None
                log(
                    f"sweep: overhead: {trials} trials × {trial_s:g} s ({epochs} epochs) at "
                    f"concurrency {concurrency}; ideal {math.ceil(trials / concurrency) * trial_s:g} s"
                    f" (Ray up in {ray_start:.1f} s)"
                )
                r = measure_overhead(
                    trials=trials,
                    trial_s=trial_s,
                    epochs=epochs,
                    concurrency=concurrency,
                    dataset=dataset,
                    work=work,
                    ray_start_s=ray_start,
                    checkpoint_kb=int(checkpoint_mb * 1024),
                    log=log,
                )
                results["overhead"] = r
                log(
                    f"sweep: wall {r['wall_s']:.1f} s vs ideal {r['ideal_s']:.1f} s: overhead "
                    f"{r['overhead_pct']:.1f}% ({r['overhead_pct_with_ray_start']:.1f}% with "
                    f"Ray's {r['ray_start_s']:.1f} s start)"
                )
            if device == "cuda":
                results["packing"] = measure_packing(
                    ks=ks,
                    seconds=packing_seconds,
                    setup=setup,
                    variant=packing_variant,
                    dataset=dataset,
                    work=work,
                    use_ray=use_ray_packing,
                    log=log,
                )
            else:
                results["packing"] = {
                    "status": "skipped",
                    "reason": "GPU packing needs --device cuda",
                }
            t_stop = time.time()
        results["ray_stop_s"] = round(time.time() - t_stop, 3)
    finally:
        if keep:
            log(f"sweep: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    doc["results"] = results
    over = results.get("overhead")
    rows = results["packing"].get("rows", []) if isinstance(results["packing"], dict) else []
    k4 = next((r for r in rows if r["k"] == 4), None)
    doc["targets"] = {
        "overhead_pct_max": 5.0,
        "overhead_applies_to": "30-second trials on CPU",
        "overhead_met": (over["overhead_pct"] <= 5.0) if over and trial_s >= 30 else None,
        "packing_k4_over_k1_min": 2.0,
        "packing_applies_to": "H100",
        "packing_met": (k4["speedup_vs_k1"] >= 2.0) if k4 and "speedup_vs_k1" in k4 else None,
    }
    doc["machine"]["load_average_end"] = load_average()
    return doc
