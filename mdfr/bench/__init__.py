"""Throughput benchmarks: training step, data loading, sweep machinery (``mdfr bench``).

- :mod:`mdfr.bench.step`: MDFRNet training-step patches/s, FLOPs per patch, TFLOP/s and MFU
  for fp32, bf16 autocast, channels-last and ``torch.compile`` variants;
- :mod:`mdfr.bench.loader`: patches/s from the memory-mapped shards against per-sample JPEG
  decoding with PIL, measured in the same run;
- :mod:`mdfr.bench.sweep`: Ray Tune overhead of trials of known length through the real sweep
  driver, and on a GPU the aggregate throughput of k trials sharing it against one;
- :mod:`mdfr.bench.overhead`: what the sweep driver adds over a bare Ray Tune ``Tuner``;
- :mod:`mdfr.bench.scale`: a sweep of many short trials on a simulated multi-node GPU cluster
  (driver CPU and memory per trial, MLflow calls and latency, GPU packing);
- :mod:`mdfr.bench.memory`: peak memory of ``make demo`` (or any command) over all its
  processes, Ray workers included;
- :mod:`mdfr.bench.machine`: the machine description every result file carries.

Each ``run_*`` function returns a JSON-able document (``kind``, ``machine``, ``config``,
``results``, ``targets``); :func:`run_all` bundles the three. Importing this package imports
neither torch nor Ray.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from mdfr.bench.machine import envelope, load_average

KINDS = ("step", "loader", "sweep")  # what `mdfr bench all` runs
ALL_KINDS = (*KINDS, "scale", "memory")


def run_kind(kind: str, device: str, quick: bool, opts: dict[str, Any], log: Callable) -> dict:
    """Run one benchmark ``kind`` with the options that concern it (others are ignored)."""
    # Lazy: each benchmark imports what it measures (torch, the data stack, Ray); this
    # package is imported by `mdfr bench --help` and must stay light.
    if kind == "step":
        from mdfr.bench.step import run_step_bench

        keys = ("variants", "peak_tflops", "cudnn_benchmark", "backbone", "width", "depth",
                "batch", "steps", "warmup")  # fmt: skip
        return run_step_bench(device, quick, log=log, **_pick(opts, keys))
    if kind == "loader":
        from mdfr.bench.loader import run_loader_bench

        return run_loader_bench(quick=quick, log=log, **_pick(opts, ("dataset", "cache",
                                "batch_sizes", "seconds")))  # fmt: skip
    if kind == "sweep":
        from mdfr.bench.sweep import run_sweep_bench

        keys = ("trials", "trial_s", "epochs", "concurrency", "overhead", "packing",
                "packing_seconds", "packing_variant", "packing_batch", "packing_runner",
                "checkpoint_mb", "address", "cache", "keep")  # fmt: skip
        return run_sweep_bench(device, quick, log=log, **_pick(opts, keys))
    if kind == "scale":
        from mdfr.bench.scale import run_scale_bench

        keys = ("trials", "nodes", "gpus_per_node", "tracking_mode", "epochs", "trial_s",
                "max_concurrent", "timeout_s", "profile", "cache", "keep")  # fmt: skip
        return run_scale_bench(log=log, **_scale_defaults(quick, _pick(opts, keys)))
    if kind == "memory":
        from mdfr.bench.memory import run_memory_bench

        return run_memory_bench(
            opts.get("run_command"), quick=quick, log=log, **_pick(opts, ("every_s",))
        )
    raise ValueError(f"unknown benchmark {kind!r}")


def _scale_defaults(quick: bool, opts: dict[str, Any]) -> dict[str, Any]:
    """``--quick``: 4 trials of 0.4 s on 1 node x 2 GPUs, SQLite; else 100 on 4 x 8."""
    sizes = (4, 1, 2, 0.4, "sqlite") if quick else (100, 4, 8, 2.0, "server")
    defaults = dict(
        zip(("trials", "nodes", "gpus_per_node", "trial_s", "tracking_mode"), sizes, strict=True)
    )
    return {**defaults, **opts}


def _pick(opts: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: opts[k] for k in keys if opts.get(k) is not None}


def run_all(device: str, quick: bool, opts: dict[str, Any], log: Callable = print) -> dict:
    """Every benchmark in turn; a failing one is recorded (with its error) and the rest run."""
    doc = envelope("all", device, {"quick": quick, "kinds": list(KINDS)})
    for kind in KINDS:
        try:
            doc[kind] = run_kind(kind, device, quick, opts, log)
        except Exception as e:  # keep the other figures; the error is part of the result
            log(f"{kind}: FAILED: {type(e).__name__}: {e}")
            doc[kind] = {
                "kind": kind,
                "status": "failed",
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=8),
            }
    doc["machine"]["load_average_end"] = load_average()
    return doc


def failures(doc: dict[str, Any]) -> list[str]:
    """What failed in a result document (a benchmark, or a step variant); empty when all ran."""
    out: list[str] = []
    parts = (
        [doc[k] for k in KINDS if isinstance(doc.get(k), dict)] if doc["kind"] == "all" else [doc]
    )
    for part in parts:
        if part.get("status") == "failed":
            out.append(f"{part['kind']}: {part.get('error')}")
            continue
        if part["kind"] == "memory" and part.get("results", {}).get("exit_code") != 0:
            out.append(f"memory: the command exited with {part['results'].get('exit_code')}")
        if part["kind"] == "scale":
            r = part.get("results", {})
            if r.get("finished") != r.get("trials") or r.get("mlflow_trial_runs") != r.get(
                "trials"
            ):
                out.append(
                    f"scale: {r.get('finished')} of {r.get('trials')} trials finished, "
                    f"{r.get('mlflow_trial_runs')} MLflow trial runs"
                )
        for v in part.get("results", {}).get("variants", []) if part["kind"] == "step" else []:
            if v.get("status") == "failed":
                out.append(f"step {v['name']}: {v.get('reason')}")
    return out


__all__ = ["ALL_KINDS", "KINDS", "failures", "run_all", "run_kind"]
