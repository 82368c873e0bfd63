"""Sweep machinery overhead (``mdfr bench sweep``), and the entry point that adds GPU packing.

**Overhead** (:mod:`mdfr.bench.overhead`). N trials of known length go through the real sweep
machinery, :func:`mdfr.sweep.driver.run_sweep` (MLflow parent and child runs, the grid
searcher, the ``Tuner``, checkpoints persisted by Tune, the trial wrapper in
:mod:`mdfr.sweep.trainable`), with a ``train_fn`` (:func:`timed_trial`) that stands in for the
engine: per epoch it waits ``epoch_s`` seconds (the trial's "work"), then does the engine's
bookkeeping (a checkpoint file, MLflow metrics, the Tune report); then the same trials through
a bare Ray Tune ``Tuner`` (:mod:`mdfr.sweep.bare`), in the same run. The ideal wall time is
``ceil(N / concurrency) × epochs × epoch_s``; everything above it is overhead, reported as a
share of the measured wall time, for both. Ray's own start is timed apart (a cluster is already
up when ``ray job submit`` runs a sweep) and also reported folded in.

**Packing** (CUDA): :mod:`mdfr.bench.packing`.

Ray is reached only through :mod:`mdfr.sweep` (``run_sweep``, ``ray_session``); this module
imports no Ray itself. The overhead trials' processes import this module to run
:func:`timed_trial`, so what they would not import anyway (the driver, torch, the packing
benchmark) is imported inside the functions that need it: they must not pay for it before the
trial's clock starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdfr import probe
from mdfr.bench.machine import envelope, load_average
from mdfr.errors import UsageError
from mdfr.names import EPOCH, EPOCH_TIME, TRAIN_LOSS, VAL_ACC, Tag

TIMING_FILE = "bench_timing.json"
STATE_FILE = "state.pt"  # the engine's checkpoint name (mdfr.checkpoints.STATE_FILE)


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

    The checkpoint is written as :func:`mdfr.checkpoints.atomic_save` writes one (temp file,
    fsync, rename) but without torch: importing torch is the training code's cost, the same
    under bare Tune, not the sweep machinery's.
    """
    start = time.time()
    out = Path(cfg.output_dir)
    process_start = _process_start()
    if tracker is not None:
        tracker.log_params(cfg.to_flat_dict())
        tracker.set_tags({Tag.MODE: cfg.mode, Tag.SEED: str(cfg.seed), Tag.BENCH: "1"})
    state_dir = out / "checkpoint"
    payload = bytes(checkpoint_kb * 1024)
    epochs = cfg.train.epochs
    for epoch in range(epochs):
        t0 = time.perf_counter()
        time.sleep(epoch_s)
        with probe.span("trial.checkpoint_save"):
            _atomic_write(state_dir / STATE_FILE, payload)
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
            {
                "start": start,
                "end": end,
                "work_s": epochs * epoch_s,
                "process_start": process_start,
                "pid": os.getpid(),
            }
        )
    )
    return {"status": "ok", "acc_original": 0.5, "checkpoint": str(state_dir), "epochs": epochs}


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        # Trial processes started by the local Ray instance inherit the variable: they time
        # their parts (mdfr.probe) for the breakdown.
        stack.enter_context(_env(probe.ENV, "1"))
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


@contextlib.contextmanager
def _env(key: str, value: str) -> Any:
    saved = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def _overhead(
    over: _Overhead, dataset: Path, work: Path, ray_start: float, log: Callable[[str], None]
) -> dict[str, Any]:
    # Lazy: see the module docstring (the trial processes import this module).
    from mdfr.bench.overhead import measure_overhead

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
        f"sweep: overhead mdfr {r['overhead_pct']:.1f}% vs bare Tune {r['bare_overhead_pct']:.1f}%:"
        f" mdfr adds {r['mdfr_minus_bare_pp']:.1f} pp ({r['overhead_pct_with_ray_start']:.1f}% "
        f"with Ray's {r['ray_start_s']:.1f} s start)"
    )
    return r


def _targets(results: dict[str, Any], trial_s: float) -> dict[str, Any]:
    over = results.get("overhead")
    packing = results["packing"]
    rows = packing.get("rows", []) if isinstance(packing, dict) else []
    k4 = next((r for r in rows if r["k"] == 4), None)
    return {
        "mdfr_minus_bare_pp_max": 2.0,
        "overhead_applies_to": "30-second trials on CPU",
        "overhead_met": (over["mdfr_minus_bare_pp"] <= 2.0) if over and trial_s >= 30 else None,
        "packing_k4_over_k1_min": 2.0,
        "packing_applies_to": "H100",
        "packing_met": (k4["speedup_vs_k1"] >= 2.0) if k4 and "speedup_vs_k1" in k4 else None,
    }
