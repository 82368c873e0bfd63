"""GPU packing: k trials sharing one GPU, against one trial alone (``mdfr bench sweep``).

k trials run MDFRNet training steps (paper width, the engine's default batch of 64, bf16 +
channels-last) on one GPU at once, each holding ``gpu: 1/k`` of it; after warm-up they meet at a
file barrier so their timed windows overlap, and the aggregate patches/s of k is compared with
one trial alone. Trials go through the sweep driver when Ray is installed, else through k plain
processes (the GPU sharing is the same; Ray adds no work on the GPU).
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from mdfr.bench.machine import bf16_peak_tflops
from mdfr.bench.step import VARIANTS, StepRunner, StepSetup, flops_per_patch
from mdfr.bench.sweep import TIMING_FILE, bench_plan, read_timings
from mdfr.errors import MdfrError
from mdfr.names import EPOCH, TRAIN_PATCHES_PER_S, VAL_ACC
from mdfr.sweep.driver import run_sweep


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
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out = Path(cfg.output_dir)
    r = packing_work(setup, variant, seconds, barrier, k, out.name, device)
    (out / TIMING_FILE).write_text(json.dumps(r))
    metrics = {EPOCH: 1, VAL_ACC: 0.0, TRAIN_PATCHES_PER_S: r["patches_per_s"]}
    if report is not None:
        report(metrics, None)
    return {"status": "ok", "acc_original": 0.0, "epochs": 1}


def _process_worker(args: tuple[Any, ...]) -> dict[str, Any]:
    return packing_work(*args)


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
    flops = flops_per_patch(StepSetup(**setup))["flops_train_step"]
    peak = None
    if device == "cuda":
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
    gpu = 1.0 / k if device == "cuda" else 0.0
    plan = bench_plan(f"packing-k{k}", dataset, work, k, 1, k, cpu=1, gpu=gpu)
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
    rows = [{k2: v for k2, v in t.items() if k2 != "trial"} for t in read_timings(outcome.exp_dir)]
    if len(rows) != k:
        raise MdfrError(f"packing k={k}: {len(rows)} of {k} trials reported")
    return rows


def _packing_processes(
    k: int, seconds: float, setup: dict[str, Any], variant: str, barrier: str, device: str
) -> list[dict[str, Any]]:
    # spawn: CUDA cannot be used in a forked child of a process that touched it.
    ctx = multiprocessing.get_context("spawn")
    args = [(setup, variant, seconds, barrier, k, f"p{i}", device) for i in range(k)]
    with ProcessPoolExecutor(max_workers=k, mp_context=ctx) as pool:
        return list(pool.map(_process_worker, args))
