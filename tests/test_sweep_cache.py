"""The pretraining cache under concurrent sweeps (issue 13): a sweep never resumes from, or
writes into, another sweep's stage in progress, and a published entry is never overwritten.

The real ``run_pretrain_stage`` and a real SQLite MLflow store; the training function is a
stand-in that writes ``state.pt``/``cmi.pt`` the way the engine does and can be held mid-run,
so the interleaving of two sweeps is exact (the engine itself is exercised in the e2e tests).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mdfr.sweep import cache
from mdfr.sweep.stages import run_pretrain_stage
from mdfr.sweep.state import TrackingContext
from mdfr.tracking import Store

FLAT = {
    "mode": "pretrain",
    "data.dataset": "/nonexistent/dataset",
    "model.backbone": "test_remnet",
    "seed": 0,
}


@pytest.fixture()
def sweeps(tmp_path):
    """Tracking contexts of two sweeps (two parent runs) in one real MLflow store."""
    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = []
    for name in ("a", "b"):
        exp, parent = store.parent_run("cache-test", name, str(tmp_path / name))
        out.append(TrackingContext(store.uri, exp, parent, name, "x", "d", "jpeg:50"))
    return out


class FakeTrain:
    """Writes ``checkpoint/state.pt`` then ``cmi.pt`` tagged with ``who``; optionally waits
    between the two (a stage in progress) or fails there (a killed task)."""

    def __init__(self, who: str, hold: threading.Event | None = None, fail: bool = False):
        self.who, self.hold, self.fail = who, hold, fail
        self.started = threading.Event()
        self.calls: list[dict] = []

    def __call__(self, cfg, report=None, tracker=None, checkpoint=None):
        out = Path(cfg.output_dir)
        self.calls.append({"output_dir": out, "checkpoint": checkpoint})
        (out / "checkpoint").mkdir(parents=True, exist_ok=True)
        (out / "checkpoint" / "state.pt").write_text(self.who)
        self.started.set()
        if self.hold is not None:
            assert self.hold.wait(30)
        if self.fail:
            raise RuntimeError("killed")
        (out / "cmi.pt").write_text(self.who)
        return {"status": "ok", "cmi_checkpoint": str(out / "cmi.pt"), "output_dir": str(out)}


def test_two_sweeps_one_key_never_share_a_stage_in_progress(tmp_path, sweeps):
    entry = tmp_path / "cache" / "pretrain" / "k1"
    release_a = threading.Event()
    a = FakeTrain("a", hold=release_a)
    results: dict[str, dict] = {}
    ta = threading.Thread(
        target=lambda: results.update(a=run_pretrain_stage(FLAT, str(entry), a, sweeps[0]))
    )
    ta.start()
    assert a.started.wait(30)  # sweep a holds a state.pt in progress

    b = FakeTrain("b")
    results["b"] = run_pretrain_stage(FLAT, str(entry), b, sweeps[1])
    assert b.calls[0]["checkpoint"] is None  # b did not resume from a's state
    assert b.calls[0]["output_dir"] != a.calls[0]["output_dir"]
    assert (entry / "cmi.pt").read_text() == "b"
    assert results["b"]["cmi_checkpoint"] == str(entry / "cmi.pt")

    release_a.set()
    ta.join(30)
    assert (entry / "cmi.pt").read_text() == "b"  # a did not overwrite the published entry
    assert results["a"]["cmi_checkpoint"] == str(entry / "cmi.pt")
    assert not a.calls[0]["output_dir"].exists()  # a's copy is dropped
    assert cache.finished(entry)["run_id"] == results["b"]["run_id"]


def test_a_sweep_resumes_its_own_interrupted_stage_only(tmp_path, sweeps):
    entry = tmp_path / "cache" / "pretrain" / "k2"
    with pytest.raises(RuntimeError, match="killed"):
        run_pretrain_stage(FLAT, str(entry), FakeTrain("a", fail=True), sweeps[0])
    assert not entry.exists()  # nothing half-done is published

    other = FakeTrain("b")
    run_pretrain_stage(FLAT, str(tmp_path / "elsewhere" / "k2"), other, sweeps[1])
    assert other.calls[0]["checkpoint"] is None

    retry = FakeTrain("a")
    res = run_pretrain_stage(FLAT, str(entry), retry, sweeps[0])
    own = cache.work_dir(entry, sweeps[0].parent_run_id)
    assert retry.calls[0]["checkpoint"] == str(own / "checkpoint")
    assert res["cmi_checkpoint"] == str(entry / "cmi.pt") and (entry / "cmi.pt").is_file()
    assert cache.finished(entry)["output_dir"] == str(entry)  # paths point at the entry


def test_an_unfinished_folder_of_the_old_layout_is_set_aside_not_deleted(tmp_path, sweeps):
    entry = tmp_path / "cache" / "pretrain" / "k3"
    (entry / "checkpoint").mkdir(parents=True)
    (entry / "checkpoint" / "state.pt").write_text("old")
    fresh = FakeTrain("a")
    run_pretrain_stage(FLAT, str(entry), fresh, sweeps[0])
    assert fresh.calls[0]["checkpoint"] is None
    assert (entry / "cmi.pt").read_text() == "a"
    aside = list((entry.parent / cache.WORK_DIR).glob("k3-unfinished-*"))
    assert len(aside) == 1 and (aside[0] / "checkpoint" / "state.pt").read_text() == "old"
