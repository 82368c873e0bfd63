"""mdfr.sweep.trial_run: a trial's MLflow run written from a background thread (real MLflow,
SQLite store), and mdfr.probe, the opt-in timings the sweep benchmarks read."""

from __future__ import annotations

import json
import threading
import time

import pytest

from mdfr import probe
from mdfr.errors import MdfrError
from mdfr.sweep.trial_run import BackgroundRun
from mdfr.tracking import Store, fetch_sweep_runs


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_calls_are_written_in_order_and_the_run_is_closed(uri, tmp_path):
    store = Store(uri)
    exp, parent = store.parent_run("exp-bg", "sw", str(tmp_path / "sweep"))
    opened = threading.Event()

    def open_run():
        time.sleep(0.3)  # a slow store: the trial's calls queue up meanwhile
        opened.set()
        return store, store.child_run(exp, parent, "k0", {"mdfr.setup": "proposed"})[0]

    run = BackgroundRun(open_run)
    run.log_params({"model.width": 8})
    for step in (1, 2, 3):
        run.log_metrics({"val/acc": step / 10}, step=step)
    run.set_tags({"mdfr.seed": "0"})
    assert not opened.is_set(), "the trial's calls returned before the run was opened"
    run.close("FINISHED", "ok")

    (r,) = fetch_sweep_runs("exp-bg", uri, parent_run_id=parent, histories=True)
    assert r["run_id"] == run.run_id and r["status"] == "FINISHED"
    assert r["tags"]["mdfr.status"] == "ok" and r["tags"]["mdfr.seed"] == "0"
    assert r["params"]["model.width"] == "8"
    assert r["histories"]["val/acc"] == [(1, 0.1), (2, 0.2), (3, 0.3)]


def test_a_failing_store_fails_the_trial_at_its_next_call_or_its_end():
    def broken():
        raise ConnectionError("tracking server went away")

    run = BackgroundRun(broken)
    run._thread.join(10)
    with pytest.raises(MdfrError, match="tracking server went away"):
        run.log_metrics({"val/acc": 0.5}, step=1)
    with pytest.raises(MdfrError, match="tracking server went away"):
        BackgroundRun(broken).close("FINISHED", "ok")


def test_an_exception_in_the_trial_flushes_but_leaves_the_run_open(uri, tmp_path):
    store = Store(uri)
    exp, parent = store.parent_run("exp-bg2", "sw", str(tmp_path / "sweep"))

    def open_run():
        return store, store.child_run(exp, parent, "k1")[0]

    with pytest.raises(RuntimeError, match="epoch 2"):
        with BackgroundRun(open_run) as run:
            run.log_metrics({"val/acc": 0.1}, step=1)
            raise RuntimeError("trial died at epoch 2")
    (r,) = fetch_sweep_runs("exp-bg2", uri, parent_run_id=parent, histories=True)
    assert r["status"] == "RUNNING", "left for Tune's retry or the driver's RunCloser"
    assert r["histories"]["val/acc"] == [(1, 0.1)]


def test_probe_is_off_by_default_and_times_spans_when_on(monkeypatch, tmp_path):
    monkeypatch.delenv(probe.ENV, raising=False)
    probe.take()
    with probe.span("x"):
        pass
    assert probe.take() == {}
    probe.dump(tmp_path / "off.json")
    assert not (tmp_path / "off.json").exists()

    monkeypatch.setenv(probe.ENV, "1")

    @probe.timed("f")
    def f() -> int:
        time.sleep(0.01)
        return 3

    assert f() == 3 and f() == 3
    probe.mark("here")
    probe.record("mlflow.lock_wait", 0.5)
    spans = probe.take()
    assert len(spans["f"]) == 2 and min(spans["f"]) >= 0.01
    assert abs(spans[f"{probe.MARK}here"][0] - time.time()) < 5
    s = probe.summary(spans)
    assert s["f"]["calls"] == 2 and s["mlflow.lock_wait"]["p95_ms"] == 500.0
    assert f"{probe.MARK}here" not in s, "marks are times, not durations"
    probe.record("y", 1.0)
    probe.dump(tmp_path / "on.json", start=1.0)
    assert json.loads((tmp_path / "on.json").read_text()) == {"spans": {"y": [1.0]}, "start": 1.0}
    assert probe.percentile([3, 1, 2, 4], 50) == 2 and probe.percentile([], 95) != 0


def test_queued_calls_are_merged_into_few_batches_within_mlflows_limits():
    from mdfr.sweep.trial_run import _coalesce

    items = [
        ("set_tags", ({"a": "1"},)),
        ("log_params", ({"p": 1},)),
        ("log_metrics", ({"m": 0.5}, 1)),
        ("log_artifact", ("/x", None)),
        ("log_metrics", ({"m": 0.6}, 2)),
        ("set_tags", ({"a": "2"},)),
        ("finish", ("FINISHED",)),
    ]
    assert _coalesce(items) == [
        ("log_batch", ([("m", 0.5, 1)], {"p": 1}, {"a": "1"})),
        ("log_artifact", ("/x", None)),
        ("log_batch", ([("m", 0.6, 2)], {}, {"a": "2"})),
        ("finish", ("FINISHED",)),
    ]
    # one call alone stays as it came; more params than one batch may carry are not merged
    assert _coalesce([("log_params", ({"p": 1},))]) == [("log_params", ({"p": 1},))]
    big = {f"p{i}": i for i in range(150)}
    out = _coalesce([("set_tags", ({"a": "1"},)), ("log_params", (big,))])
    assert [name for name, _ in out] == ["set_tags", "log_params"]
    # 60 + 60 params would pass MLflow's 100 per call: two batches
    halves = [("log_params", ({f"p{i}": i for i in range(j, j + 60)},)) for j in (0, 60)]
    assert [name for name, _ in _coalesce(halves)] == ["log_params", "log_params"]


def test_busy_store_errors_are_retried_and_real_errors_are_not(monkeypatch):
    """A tracking server whose connection pool is exhausted answers HTTP 400 (seen with 64
    concurrent trials); like SQLite's lock, that is retried, while a real error is raised."""
    from mdfr.tracking import store as tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda _s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError(
                "BAD_REQUEST: QueuePool limit of size 5 overflow 10 reached, connection timed out"
            )
        return "ok"

    assert tracking._retry(flaky) == "ok" and len(calls) == 3

    def wrong():
        raise ValueError("RESOURCE_DOES_NOT_EXIST: run 123")

    with pytest.raises(ValueError, match="RESOURCE_DOES_NOT_EXIST"):
        tracking._retry(wrong)


def test_background_run_speaks_the_whole_tracker_protocol():
    """The engine calls a trial's tracker like :class:`mdfr.tracking.Tracker`: a method added
    there (log_dataset came with the MLflow work) must be queued here too, or trials fail."""
    from mdfr.sweep.trial_run import BackgroundRun
    from mdfr.tracking import Tracker

    public = {n for n in vars(Tracker) if not n.startswith("_") and callable(vars(Tracker)[n])}
    missing = public - {"log_batch"} - set(vars(BackgroundRun))
    assert not missing, f"BackgroundRun lacks {sorted(missing)}"
