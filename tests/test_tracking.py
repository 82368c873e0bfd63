"""mdfr.tracking against real MLflow: the embedded SQLite store and an `mlflow server`."""

from __future__ import annotations

import http.server
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


class _Stub(http.server.BaseHTTPRequestHandler):
    """A tracking server in front of which /health answers but every API call gets ``code``."""

    code = 401
    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/health":
            self._answer(200, "OK")
        else:
            type(self).seen.append(self.headers.get("Authorization"))
            self._answer(self.code, "You are not authenticated." if self.code == 401 else "no")

    do_POST = do_GET  # noqa: N815

    def _answer(self, code: int, body: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Stub.seen = []
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("code", "user", "expect"),
    [
        (401, None, "wants a login (HTTP 401) and MLFLOW_TRACKING_USERNAME is not set"),
        (401, "sweeps", "refused user 'sweeps' (HTTP 401): check MLFLOW_TRACKING_USERNAME and"),
        (403, "sweeps", "denied user 'sweeps' a read (HTTP 403)"),
        (500, "sweeps", "answered /health but not a read"),
    ],
)
def test_credentials_are_checked_before_any_trial(stub, monkeypatch, code, user, expect):
    """/health needs no login: one authenticated read finds wrong credentials, fast, without
    MLflow's minutes of retries and without changing the retries of later calls."""
    server, url = stub
    _Stub.code = code
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    if user:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    t0 = time.monotonic()
    with pytest.raises(MdfrError) as e:
        check_reachable(url, timeout=2)
    assert time.monotonic() - t0 < 10
    assert expect in str(e.value) and url in str(e.value)
    assert "wrong" not in str(e.value), "never print the password"
    assert len(_Stub.seen) == 1, "one request, no retries"
    assert bool(_Stub.seen[0]) == bool(user), "the credentials were sent"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


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


def test_system_metrics_reach_the_run(uri):
    """The one MLflow class used beyond its documented API (mdfr.tracking.system): if an
    upgrade moves or changes SystemMetricsMonitor, this fails instead of sweeps going quiet."""
    from mdfr.tracking.system import system_metrics

    store = Store(uri)
    exp = store.ensure_experiment("sysmetrics")
    run_id, _ = store.child_run(exp, "p", "sampled")
    off, _ = store.child_run(exp, "p", "not-sampled")
    with system_metrics(off, store.uri, enabled=False):
        time.sleep(0.3)
    with system_metrics(run_id, store.uri, enabled=True, interval=0.2):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            keys = store.client.get_run(run_id).data.metrics
            if "system/cpu_utilization_percentage" in keys:
                break
            time.sleep(0.2)
    metrics = store.client.get_run(run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics, sorted(metrics)
    assert "system/system_memory_usage_megabytes" in metrics, sorted(metrics)
    assert not store.client.get_run(off).data.metrics
