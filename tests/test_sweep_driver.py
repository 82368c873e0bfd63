"""Driver checks that must fail before Ray or any trial starts, and sweep-folder lookup."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest

from mdfr.cli import main
from mdfr.errors import ConfigError, UsageError
from mdfr.sweep import preflight
from mdfr.sweep.driver import STATE_FILE, _shared_paths, find_sweep, list_sweeps, run_sweep
from mdfr.sweep.spec import build_plan, load_sweep

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("os:system", "expected <mdfr module>:<function>"),
        ("mdfr.bench.scale", "expected <mdfr module>:<function>"),
        ("mdfr.bench.sweep:no_such_fn", "no_such_fn"),
        ("mdfr.bench.sweep:TIMING_FILE", "is not a function"),
    ],
)
def test_test_only_train_fn_hook_refuses_what_it_cannot_run(
    tmp_path, capsys, monkeypatch, value, expect
):
    """MDFR_TEST_TRAIN_FN (mdfr bench scale's hook) names an mdfr function, or the run stops."""
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\nbase: {{data: {{dataset: {tmp_path}}}}}\n")
    monkeypatch.setenv("MDFR_TEST_TRAIN_FN", value)
    code = main(["sweep", "run", str(sweep), "--storage", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "MDFR_TEST_TRAIN_FN" in err and expect in err, err
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
    plan = load_sweep(ROOT / "sweeps" / "table2.yaml", [f"storage={tmp_path}"])
    with pytest.raises(UsageError, match=r"asks for .*0\.5 GPU"):
        run_sweep(plan, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", num_cpus=2, verbose=0)
    assert not _ray_started()


# --------------------------------------------------------------------------- CLI overrides


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--storage", "s3://bucket/ray"], "--storage: got 's3://bucket/ray': object-store"),
        (["--storage", ""], "--storage: expected a directory path"),
        (["--tracking-uri", "htp://host:5000"], "--tracking-uri: unsupported scheme 'htp'"),
        (["--tracking-uri", "sqlite://rel.db"], "--tracking-uri: expected sqlite:///"),
    ],
)
def test_cli_storage_and_tracking_uri_follow_the_sweep_files_rules(tmp_path, capsys, args, expect):
    """`--storage s3://b` used to become a local folder named `s3:`; now it is refused."""
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\nbase: {{data: {{dataset: {tmp_path}}}}}\n")
    code = main(["sweep", "run", str(sweep), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expect in err and "Traceback" not in err
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()
    assert not _ray_started()


@pytest.mark.parametrize("action", ["resume", "list", "status"])
def test_storage_of_resume_list_and_status_is_checked_too(capsys, action):
    args = ["sweep", action] + (["x"] if action != "list" else []) + ["--storage", "s3://b"]
    assert main(args) == 2
    assert "--storage: got 's3://b'" in capsys.readouterr().err


def test_file_uri_storage_is_a_plain_path(tmp_path):
    d = tmp_path / "demo-20260101-000000"
    d.mkdir()
    plan = build_plan({"name": "demo"})
    (d / STATE_FILE).write_text(json.dumps({"plan": plan.to_dict(), "phase": "tune"}))
    assert find_sweep("demo", f"file://{tmp_path}") == d


def test_run_sweep_checks_its_overrides_as_the_cli_does(tmp_path):
    plan = build_plan({"name": "s", "base": {"data": {"dataset": str(tmp_path)}}})
    with pytest.raises(ConfigError, match="--storage"):
        run_sweep(plan, storage="gs://b", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(ConfigError, match="--tracking-uri"):
        run_sweep(plan, storage=str(tmp_path), tracking_uri="ftp://h/x")
    assert not _ray_started()


# --------------------------------------------------------------------------- preflight parts


def test_shared_paths_name_storage_then_what_trials_read(tmp_path):
    """What a multi-node cluster must share, as the driver hands it to the preflight check."""
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "manifest.json").write_text("{}")
    ckpt = tmp_path / "cmi.pt"
    ckpt.write_bytes(b"x" * 10)
    plan = build_plan(
        {
            "name": "s",
            "base": {"data": {"dataset": "ds"}, "model": {"cmi_checkpoint": str(ckpt)}},
            "grid": {"seed": [0, 1]},
        }
    )
    shared = _shared_paths(plan, tmp_path / "ray", tmp_path)
    assert [(s.what, s.path, s.file) for s in shared] == [
        ("storage", tmp_path / "ray", None),
        ("base.data.dataset", ds, ds / "manifest.json"),
        ("base.model.cmi_checkpoint", ckpt, ckpt),
    ]
    assert shared[1].example == "--set base.data.dataset=/mnt/mdfr/data/prepared/NAME"
    # With a prepare section the dataset is made under prepare.out; a checkpoint the sweep
    # file names but the driver lacks is left to the check that reports it missing.
    plan = load_sweep(ROOT / "sweeps" / "smoke.yaml")
    shared = _shared_paths(plan, tmp_path / "ray", tmp_path)
    assert [(s.what, s.path) for s in shared] == [
        ("storage", tmp_path / "ray"),
        ("prepare.out", tmp_path / "results" / "data" / "smoke"),
    ]


def test_probe_files_are_read_back_and_removed(tmp_path):
    """The node side of the check (stdlib only), run here on the driver's own filesystem."""
    manifest = tmp_path / "ds" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text('{"hash": "a"}')
    items = [
        preflight.SharedPath("storage", tmp_path / "new" / "ray", "read and write", "-"),
        preflight.SharedPath("base.data.dataset", manifest.parent, "read it", "-", manifest),
    ]
    with preflight._probes(items) as checks:
        assert (tmp_path / "new" / "ray").is_dir(), "directories trials need are created"
        assert preflight.look(checks) == ["", ""]
        probe = Path(checks[0][0])
        assert probe.parent == tmp_path / "new" / "ray" and probe.is_file()
        manifest.write_text('{"hash": "b"}')  # what a node with another copy would see
        probe.unlink()  # what a node without the shared mount would see
        assert preflight.look(checks) == ["not there", "a different file"]
        probe.write_text("token")
    assert not list((tmp_path / "new" / "ray").iterdir()), "the probe is removed"
