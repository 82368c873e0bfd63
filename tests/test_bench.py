"""``mdfr bench``: each benchmark writes a valid result file with the machine described.

Quick sizes only, and no timing assertions: speed is measured by the benchmarks themselves
(``results/bench/``), not by tests on a shared machine.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from mdfr.cli import main

MACHINE_KEYS = {
    "cpu_model",
    "cpu_count",
    "load_average",
    "load_average_end",
    "torch",
    "cuda_build",
    "gpu_name",
    "git",
    "device",
}


def _load(path: Path) -> dict:
    doc = json.loads(path.read_text())
    assert MACHINE_KEYS <= set(doc["machine"]), set(doc["machine"])
    assert doc["machine"]["cpu_count"] >= 1
    assert isinstance(doc["config"], dict) and "targets" in doc
    return doc


def test_step_quick_cpu_writes_variants_with_throughput(tmp_path, capsys):
    out = tmp_path / "step.json"
    assert main(["bench", "step", "--quick", "--device", "cpu", "--json", str(out)]) == 0
    doc = _load(out)
    assert doc["kind"] == "step" and doc["machine"]["device"] == "cpu"
    res = doc["results"]
    assert res["flops_per_patch"] > res["flops_forward_per_patch"] > 0
    assert res["peak_tflops"] is None  # no MFU on a CPU
    by_name = {v["name"]: v for v in res["variants"]}
    for name in ("fp32", "bf16", "bf16_channels_last"):
        v = by_name[name]
        assert v["status"] == "ok", v
        assert v["patches_per_s"] > 0 and v["tflops"] > 0 and v["step_s"] > 0
        assert v["mfu"] is None and v["batch"] == doc["config"]["batch"]
    # what cannot (or should not by default) run on a CPU is recorded with the reason
    for name in ("bf16_channels_last_compile", "bf16_channels_last_nosync"):
        assert by_name[name]["status"] == "skipped" and by_name[name]["reason"]
    assert "patches/s" in capsys.readouterr().out


def test_loader_quick_compares_shards_with_pil_in_default_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default paths are relative: results/bench, results/cache
    assert main(["bench", "loader", "--quick"]) == 0
    out = tmp_path / "results" / "bench" / f"loader-cpu-{dt.date.today().isoformat()}.json"
    doc = _load(out)
    res = doc["results"]
    assert [r["batch"] for r in res["shards"]] == [64, 256]
    assert all(r["patches_per_s"] > 0 and r["patches"] > 0 for r in res["shards"])
    assert res["pil"] and all(r["patches_per_s"] > 0 for r in res["pil"])
    assert res["ratio"] > 0 and res["pil_skipped"] is None
    assert doc["config"]["train_patches"] > 0 and doc["config"]["codec"] == "jpeg:50"
    assert (tmp_path / "results" / "cache" / "bench" / "data-quick" / "manifest.json").is_file()


def test_loader_on_a_given_dataset(tiny_dataset, tmp_path):
    out = tmp_path / "loader.json"
    args = ["bench", "loader", "--quick", "--dataset", str(tiny_dataset), "--json", str(out),
            "--cache", str(tmp_path / "cache"), "--batch-sizes", "32"]  # fmt: skip
    assert main(args) == 0
    doc = _load(out)
    assert (
        doc["config"]["dataset"] == str(tiny_dataset) and doc["config"]["synthetic_preset"] is None
    )
    assert doc["results"]["shards"][0]["batch"] == 32 and doc["results"]["ratio"] > 0


def test_sweep_quick_measures_overhead_through_the_driver(tmp_path):
    out = tmp_path / "sweep.json"
    args = ["bench", "sweep", "--quick", "--device", "cpu", "--json", str(out),
            "--cache", str(tmp_path / "cache")]  # fmt: skip
    assert main(args) == 0
    doc = _load(out)
    over = doc["results"]["overhead"]
    assert over["trials"] == 2 and over["concurrency"] == 2
    assert over["wall_s"] >= over["ideal_s"] > 0 and over["ray_start_s"] > 0
    assert 0 <= over["overhead_pct"] < 100
    assert 0 <= over["bare_overhead_pct"] < 100  # bare Tune measured in the same run
    assert set(over["breakdown"]) >= {
        "driver_start_s", "tune_to_first_trial_s", "searcher_s_total", "report_s_total",
        "per_trial_start_s_mean",
    }  # fmt: skip
    assert doc["results"]["packing"]["status"] == "skipped"  # no GPU here


def test_bad_options_are_usage_errors(capsys):
    assert main(["bench", "step", "--quick", "--device", "cpu", "--variants", "fp33"]) == 2
    assert "fp33" in capsys.readouterr().err
    # argparse's own usage errors come back as the exit code, not as SystemExit
    assert main(["bench", "loader", "--batch-sizes", "0"]) == 2


def test_all_records_a_failing_benchmark_and_exits_1(tmp_path, monkeypatch):
    import mdfr.bench as bench

    def fake(kind, device, quick, opts, log):
        if kind == "loader":
            raise RuntimeError("disk on fire")
        return {"kind": kind, "results": {"variants": []}}

    monkeypatch.setattr(bench, "run_kind", fake)
    out = tmp_path / "all.json"
    assert main(["bench", "all", "--quick", "--device", "cpu", "--json", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert doc["loader"]["status"] == "failed" and "disk on fire" in doc["loader"]["error"]
    assert doc["step"]["kind"] == "step" and doc["sweep"]["kind"] == "sweep"


def test_packing_mechanics_with_plain_processes(tmp_path):
    """The k-trials-per-GPU measurement (barrier, overlap, aggregation), exercised on the CPU."""
    from mdfr.bench.packing import measure_packing

    setup = {"width": 4, "depth": 1, "backbone": "test_remnet", "batch": 2, "warmup": 1,
             "steps": 0}  # fmt: skip
    r = measure_packing(ks=(1, 2), seconds=0.3, setup=setup, variant="fp32", dataset=None,
                        work=tmp_path, use_ray=False, device="cpu", log=lambda _m: None)  # fmt: skip
    assert r["runner"] == "processes"
    rows = {row["k"]: row for row in r["rows"]}
    assert len(rows[1]["per_trial"]) == 1 and len(rows[2]["per_trial"]) == 2
    assert all(t["patches"] > 0 for row in rows.values() for t in row["per_trial"])
    assert rows[2]["aggregate_patches_per_s"] > 0 and rows[2]["speedup_vs_k1"] > 0
    # the timed windows of concurrent trials overlap (they met at the barrier first)
    a, b = rows[2]["per_trial"]
    assert max(a["t_start"], b["t_start"]) < min(a["t_end"], b["t_end"])


@pytest.mark.slow
def test_scale_quick_runs_a_sweep_file_on_logical_gpus(tmp_path):
    """`mdfr bench scale --quick`: a real `mdfr sweep run` of a table2-derived file on logical
    GPUs (SQLite), every trial finished with one MLflow run, the driver's figures present."""
    out = tmp_path / "scale.json"
    args = ["bench", "scale", "--quick", "--json", str(out), "--cache", str(tmp_path / "cache")]
    assert main(args) == 0
    doc = _load(out)
    r = doc["results"]
    assert r["trials"] == r["finished"] == r["mlflow_trial_runs"] == 4
    assert r["driver_exit_code"] == 0 and r["tracking_backend"] == "sqlite"
    # table2.yaml's half-GPU trials: never more than two on a GPU (whether two overlapped
    # depends on timing; tests/test_sweep_gpu_packing.py proves the packing with a barrier)
    assert doc["sweep_file"]["resources"]["gpu"] == 0.5
    assert 1 <= r["max_concurrent_per_gpu"] <= 2 and 1 <= r["gpus_used"] <= 2
    assert r["driver_ms_per_trial"] > 0 and r["driver_peak_rss_mb"] > 0
    assert r["mlflow_calls_per_trial"] > 0 and r["mlflow_p95_ms"] > 0
    assert "searcher.suggest" in r["driver_spans"] and "trial.open_run" in r["trial_spans"]
    assert set(doc["targets"]) >= {"driver_ms_per_trial_met", "driver_rss_met", "applies"}
    # the temporary work folder is named by a placeholder, not by this machine's path (the
    # --cache folder given above is the user's own path and may appear)
    assert "$WORK/" in doc["sweep_file"]["storage"]
    assert "mdfr-bench-scale-" not in out.read_text()


def test_memory_counts_every_process_of_the_command(tmp_path):
    """`mdfr bench memory --quick`: a parent and the child it starts each hold 64 MiB; the peak
    counts both (the demo's Ray workers are such children), in a file without local paths."""
    out = tmp_path / "memory.json"
    assert main(["bench", "memory", "--quick", "--every", "0.2", "--json", str(out)]) == 0
    doc = _load(out)
    r = doc["results"]
    assert r["exit_code"] == 0 and r["samples"] >= 3
    assert r["peak_processes"] >= 2
    assert r["peak_pss_mb"] >= 2 * 64, r  # one process alone holds 64 MiB and its interpreter
    assert r["peak_rss_sum_mb"] >= r["peak_pss_mb"]
    assert doc["targets"]["peak_pss_mb_max"] == 8192 and doc["targets"]["met"] is True
    assert doc["config"]["command"] == "the quick stand-in"


def test_memory_of_a_failing_command_is_still_written_and_exits_1(tmp_path):
    out = tmp_path / "memory.json"
    assert main(["bench", "memory", "--command", "false", "--json", str(out)]) == 1
    assert json.loads(out.read_text())["results"]["exit_code"] == 1
