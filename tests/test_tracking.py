"""mdfr.tracking against real MLflow: the embedded SQLite store and an `mlflow server`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mdfr.errors import MdfrError
from mdfr.tracking import (
    Store,
    check_reachable,
    download_artifacts,
    fetch_sweep_runs,
    resolve_uri,
)


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_relative_sqlite_uri_is_made_absolute(tmp_path):
    assert resolve_uri("sqlite:///results/mlflow.db", tmp_path) == (
        f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    )
    assert resolve_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    assert resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_unreachable_server_is_detected_fast_and_named():
    dead = f"http://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    with pytest.raises(MdfrError, match=f"MLflow tracking server {dead} is unreachable"):
        check_reachable(dead, timeout=2)
    assert time.monotonic() - t0 < 5


def test_parent_and_one_child_per_trial_key(uri, tmp_path):
    store = Store(uri)
    exp, parent = store.parent_run("exp-a", "sw", str(tmp_path / "sweep-1"))
    assert store.parent_run("exp-a", "sw", str(tmp_path / "sweep-1")) == (exp, parent)
    child, created = store.child_run(
        exp, parent, "000-proposed-seed0-n0", {"mdfr.setup": "proposed"}
    )
    assert created
    # a retry or a resumed driver looks the run up again instead of opening a second one
    again, created = store.child_run(exp, parent, "000-proposed-seed0-n0")
    assert (again, created) == (child, False)
    # same key under another sweep's parent: another run
    _, other_parent = store.parent_run("exp-a", "sw", str(tmp_path / "sweep-2"))
    other, created = store.child_run(exp, other_parent, "000-proposed-seed0-n0")
    assert created and other != child

    tracker = store.tracker(child)
    tracker.log_params({"model.width": 8, "model.cmi_checkpoint": ""})
    tracker.log_params({"model.width": 8})  # identical re-log on retry is fine
    for epoch in (1, 2, 3):
        tracker.log_metrics({"val/acc": 0.1 * epoch, "bad": float("nan")}, step=epoch)
    tracker.set_tags({"mdfr.seed": "0"})
    art = tmp_path / "config.yaml"
    art.write_text("mode: mdfr\n")
    tracker.log_artifact(str(art))
    store.finish(child, "FINISHED", "ok")

    runs = fetch_sweep_runs("exp-a", uri, parent_run_id=parent, histories=True)
    assert len(runs) == 1
    r = runs[0]
    assert r["run_id"] == child and r["status"] == "FINISHED" and r["parent_run_id"] == parent
    assert r["params"]["model.width"] == "8"
    assert r["tags"]["mdfr.status"] == "ok" and r["tags"]["mdfr.setup"] == "proposed"
    assert [s for s, _ in r["histories"]["val/acc"]] == [1, 2, 3]
    assert "bad" not in r["metrics"]
    got = download_artifacts(child, uri, "config.yaml", tmp_path / "dl")
    assert Path(got).read_text() == "mode: mdfr\n"
    assert fetch_sweep_runs("no-such-experiment", uri) == []


def test_concurrent_writers_on_sqlite(uri, tmp_path):
    """Trials write at the same time; 'database is locked' is retried, nothing is lost."""
    store = Store(uri)
    exp, parent = store.parent_run("exp-b", "sw", str(tmp_path / "sweep"))
    errors: list[BaseException] = []

    def trial(i: int) -> None:
        try:
            own = Store(uri)  # one client per trial, as in separate Ray workers
            run, _ = own.child_run(exp, parent, f"k{i}")
            tr = own.tracker(run)
            for step in range(1, 6):
                tr.log_metrics({"val/acc": step / 10, "train/loss": 1 / step}, step=step)
            own.finish(run, "FINISHED", "ok")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=trial, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    runs = fetch_sweep_runs("exp-b", uri, parent_run_id=parent, histories=True)
    assert sorted(r["run_name"] for r in runs) == [f"k{i}" for i in range(6)]
    assert all(len(r["histories"]["val/acc"]) == 5 for r in runs)


@pytest.mark.slow
def test_against_an_mlflow_server_over_http(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                check_reachable(url, timeout=2)
                break
            except MdfrError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        store = Store(url)
        exp, parent = store.parent_run("exp-http", "sw", str(tmp_path / "s"))
        child, _ = store.child_run(exp, parent, "k0")
        assert store.child_run(exp, parent, "k0") == (child, False)
        tr = store.tracker(child)
        tr.log_metrics({"val/acc": 0.5}, step=1)
        f = tmp_path / "cm.txt"
        f.write_text("1 0\n0 1\n")
        tr.log_artifact(str(f))
        store.finish(child, "FINISHED", "ok")
        runs = fetch_sweep_runs("exp-http", url, parent_run_id=parent)
        assert [r["metrics"]["val/acc"] for r in runs] == [0.5]
        assert Path(download_artifacts(child, url, "cm.txt", tmp_path / "dl")).is_file()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
