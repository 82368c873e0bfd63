"""scripts/gpu_check.sh without a GPU: it stops at once, clearly, with exit 2; and its summary
(one table, one JSON) assembled from real parts measured on the CPU at tiny size. The GPU
figures themselves (MFU, GPU memory) need CUDA and are checked to be reported as missing."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mdfr.bench import gpucheck
from mdfr.bench.machine import write_json
from mdfr.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    "CUDA_VISIBLE_DEVICES" not in os.environ and Path("/dev/nvidia0").exists(),
    reason="a GPU machine: the script would measure",
)
def test_gpu_check_without_cuda_exits_2_at_once_saying_why(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path),
           "MDFR_PYTHON": sys.executable}  # fmt: skip
    before = set((ROOT / "results" / "bench").glob("*"))
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "sees no CUDA device: nothing to measure here" in out
    assert "== step" not in out, "nothing is measured without CUDA"
    assert set((ROOT / "results" / "bench").glob("*")) == before
    assert "no CUDA device" in (tmp_path / "gpu_check.log").read_text()


def test_summary_table_and_json_from_tiny_cpu_parts(tmp_path, tiny_dataset):
    from mdfr.bench.packing import measure_packing

    day = dt.date.today().isoformat()
    cache = str(tmp_path / "cache")
    assert main(["bench", "step", "--quick", "--device", "cpu", "--variants", "fp32,bf16",
                 "--json", str(tmp_path / f"step-cpu-{day}.json")]) == 0  # fmt: skip
    # fp32 at batch 64 only: bf16 on a CPU, and batch 256, cost minutes without telling more
    assert gpucheck.main(["memory", "--device", "cpu", "--quick", "--batch-sizes", "64",
                          "--variant", "fp32",
                          "--json", str(tmp_path / f"gpu-memory-cpu-{day}.json")]) == 0  # fmt: skip
    assert main(["bench", "loader", "--quick", "--cache", cache, "--dataset", str(tiny_dataset),
                 "--json", str(tmp_path / f"loader-gpuhost-{day}.json")]) == 0  # fmt: skip
    setup = {"width": 4, "depth": 1, "backbone": "test_remnet", "batch": 2, "warmup": 1,
             "steps": 0}  # fmt: skip
    packing = measure_packing(ks=(1, 4), seconds=0.3, setup=setup, variant="fp32",
                              dataset=None, work=tmp_path, use_ray=False, device="cpu",
                              log=lambda _m: None)  # fmt: skip
    write_json({"kind": "sweep", "results": {"packing": packing}},
               tmp_path / f"packing-cpu-{day}.json")  # fmt: skip

    out = tmp_path / "gpu-check.json"
    code = gpucheck.main(["summary", "--dir", str(tmp_path), "--day", day, "--device", "cpu",
                          "--json", str(out)])  # fmt: skip
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["missing_parts"] == [] and doc["gpu"] is None
    rows = {r["what"]: r for r in doc["rows"]}
    # measured on the CPU too
    assert rows["bf16 step throughput (patches/s)"]["value"] > 0
    packing_row = rows["4 trials per GPU vs 1 (aggregate throughput)"]
    assert (
        packing_row["value"] > 0
        and packing_row["goal"] == 2.0
        and packing_row["met"]
        in (
            True,
            False,
        )
    )
    assert rows["loader feed rate / step rate (one trial, batch 64)"]["value"] > 0
    assert rows["loader feed rate / step rate (each of 4 trials per GPU)"]["value"] > 0
    # CUDA-only figures are there, empty, and not counted as met
    assert rows["bf16 MFU of the MDFR step, paper width"]["value"] is None
    mem256 = rows["peak GPU memory per trial, batch 256 (GiB)"]
    assert mem256["value"] is None and mem256["goal"] == 18.0 and mem256["met"] is None
    text = gpucheck.table(doc)
    for what in rows:
        assert what in text
    assert "n/a" in text


def test_summary_says_which_parts_are_missing(tmp_path):
    summary = gpucheck.assemble(gpucheck.load_parts(tmp_path, "2000-01-01"))
    assert summary["missing_parts"] == ["step", "memory", "packing", "loader"]
    assert all(r["value"] is None for r in summary["rows"])
    assert "missing parts (failed or skipped): step, memory, packing, loader" in gpucheck.table(
        summary
    )


def test_memory_part_refuses_an_unknown_variant_before_measuring(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert gpucheck.main(["memory", "--device", "cpu", "--variant", "fp8", "--json",
                          str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--variant 'fp8' is not one of" in err and "bf16_channels_last" in err
    assert not out.exists()


def test_memory_goal_is_judged_on_what_the_allocator_reserved():
    rows = [{"batch": 256, "status": "ok", "max_memory_gib": 16.0,
             "max_memory_reserved_gib": 19.5, "patches_per_s": 900.0}]  # fmt: skip
    summary = gpucheck.assemble({"memory": {"results": {"rows": rows}}})
    row = {r["what"]: r for r in summary["rows"]}["peak GPU memory per trial, batch 256 (GiB)"]
    assert row["value"] == 19.5 and row["met"] is False and "tensors 16.0" in row["note"]
