"""Driver checks that must fail before Ray or any trial starts, and sweep-folder lookup."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest

from mdfr.cli import main
from mdfr.errors import UsageError
from mdfr.sweep.driver import STATE_FILE, find_sweep, list_sweeps, run_sweep
from mdfr.sweep.spec import build_plan


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _ray_started() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def test_unreachable_tracking_server_fails_before_ray_starts(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\nbase: {{data: {{dataset: {tmp_path}}}}}\n")
    dead = _dead_url()
    t0 = time.monotonic()
    code = main(
        ["sweep", "run", str(sweep), "--tracking-uri", dead, "--storage", str(tmp_path / "r")]
    )
    assert code == 1 and time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert f"MLflow tracking server {dead} is unreachable" in err and "Traceback" not in err
    assert not _ray_started() and not (tmp_path / "r").exists()


def test_unprepared_dataset_fails_before_ray_starts(tmp_path):
    plan = build_plan({"name": "s", "base": {"data": {"dataset": str(tmp_path / "none")}}})
    with pytest.raises(UsageError, match="is not prepared"):
        run_sweep(plan, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", storage=str(tmp_path))
    assert not _ray_started()


def test_find_sweep_by_path_or_newest_name(tmp_path):
    for stamp in ("20260101-000000", "20260102-000000"):
        d = tmp_path / f"demo-{stamp}"
        d.mkdir()
        plan = build_plan({"name": "demo", "grid": {"seed": [0, 1]}})
        (d / STATE_FILE).write_text(json.dumps({"plan": plan.to_dict(), "phase": "tune"}))
    newest = tmp_path / "demo-20260102-000000"
    assert find_sweep("demo", str(tmp_path)) == newest
    assert find_sweep(str(tmp_path / "demo-20260101-000000")) == tmp_path / "demo-20260101-000000"
    with pytest.raises(UsageError, match="no sweep 'other'"):
        find_sweep("other", str(tmp_path))
    rows = list_sweeps(str(tmp_path))
    assert [r["trials"] for r in rows] == [2, 2] and rows[-1]["path"] == str(newest)


def test_resume_of_unknown_sweep_exits_2(tmp_path, capsys):
    assert main(["sweep", "resume", "nope", "--storage", str(tmp_path)]) == 2
    assert "no sweep 'nope'" in capsys.readouterr().err


def test_sweep_without_action_is_usage_error(capsys):
    assert main(["sweep"]) == 2


@pytest.mark.slow
def test_trials_that_cannot_be_placed_fail_fast_on_a_local_instance(tmp_path):
    """table2 asks for half a GPU per trial; a CPU-only local Ray would wait forever."""
    from mdfr.sweep.spec import load_sweep

    plan = load_sweep(Path(__file__).parents[1] / "sweeps" / "table2.yaml", [f"storage={tmp_path}"])
    with pytest.raises(UsageError, match=r"asks for .*0\.5 GPU"):
        run_sweep(plan, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", num_cpus=2, verbose=0)
    assert not _ray_started()
