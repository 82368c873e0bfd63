"""Fractional GPUs, verified without CUDA: a sweep whose trials ask for ``gpu: 0.25`` on a Ray
instance declaring two logical GPUs runs four trials at once on each GPU, and every trial sees
in ``CUDA_VISIBLE_DEVICES`` exactly the GPU Ray gave it.

Real Ray, Tune, the sweep driver and MLflow (SQLite); the only stand-in is the trial function,
which records what Ray told it instead of training (no CUDA here). Ray sets
``CUDA_VISIBLE_DEVICES`` for logical GPUs as for real ones, which is what a trial's torch would
read on a GPU machine.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

GPUS = 2
PER_GPU = 4  # gpu: 0.25
TRIALS = GPUS * PER_GPU


def record_gpu(cfg: Any, report: Any = None, tracker: Any = None, checkpoint: Any = None) -> dict:
    """The sweep's train_fn: note the GPU, wait until every trial runs, hold on, report."""
    import ray

    out = Path(cfg.output_dir)
    gate = out.parents[1] / "gate"  # <sweep folder>/gate: shared by the sweep's trials
    gate.mkdir(exist_ok=True)
    (gate / out.name).touch()
    start = time.time()
    deadline = start + 240
    while len(list(gate.iterdir())) < TRIALS and time.time() < deadline:
        time.sleep(0.05)
    met = len(list(gate.iterdir()))
    time.sleep(1.0)  # all of them hold their share at the same time
    rec = {
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "met": met,
        "start": start,
        "end": time.time(),
    }
    (out / "gpu.json").write_text(json.dumps(rec))
    if report is not None:
        report({"epoch": 1, "val/acc": 0.5}, None)
    return {"status": "ok", "acc_original": 0.5, "epochs": 1}


@pytest.fixture(scope="module")
def packed(tiny_dataset, tmp_path_factory):
    import ray

    from mdfr.bench.sweep import bench_plan
    from mdfr.sweep.driver import run_sweep

    if ray.is_initialized():  # left by another module: this test declares its own GPUs
        ray.shutdown()
    # The train_fn lives in this test module, which Ray's workers cannot import: ship it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    work = tmp_path_factory.mktemp("packing")
    plan = bench_plan("pack", tiny_dataset, work, TRIALS, 1, TRIALS, cpu=1, gpu=1 / PER_GPU)
    try:
        outcome = run_sweep(
            plan, root=work, train_fn=record_gpu, num_cpus=TRIALS, num_gpus=GPUS, verbose=0,
            log=lambda _m: None,
        )  # fmt: skip
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    recs = [json.loads(p.read_text()) for p in sorted(outcome.exp_dir.glob("trials/*/gpu.json"))]
    return outcome, recs


def test_quarter_gpu_trials_pack_four_per_logical_gpu(packed):
    outcome, recs = packed
    assert outcome.counts == {"ok": TRIALS} and len(recs) == TRIALS
    assert all(len(r["gpu_ids"]) == 1 for r in recs), [r["gpu_ids"] for r in recs]
    by_gpu = {g: [r for r in recs if r["gpu_ids"] == [g]] for g in map(str, range(GPUS))}
    assert {g: len(rs) for g, rs in by_gpu.items()} == {str(g): PER_GPU for g in range(GPUS)}
    # all trials were running at once: each saw the others arrive, and their windows overlap
    assert all(r["met"] == TRIALS for r in recs)
    assert max(r["start"] for r in recs) < min(r["end"] for r in recs)
    for a, b in itertools.combinations(recs, 2):
        assert max(a["start"], b["start"]) < min(a["end"], b["end"])


def test_each_trial_sees_the_gpu_ray_gave_it_in_cuda_visible_devices(packed):
    _, recs = packed
    for r in recs:
        assert r["cuda_visible_devices"] == ",".join(r["gpu_ids"]), r
