"""The trial wrapper's bookkeeping (mdfr.sweep.trainable) without a sweep around it: what goes
to Tune with each report, where a retry resumes, how attempts are counted. The sweeps of
test_sweep_e2e.py exercise the same code under real Tune."""

from __future__ import annotations

import json

from mdfr.sweep.trainable import RESUME_FILE, _count_attempt, _Reporter, _resume_point


def _report_epochs(tmp_path, tune_every):
    sent = []
    state = tmp_path / "checkpoint"
    state.mkdir()
    rep = _Reporter(3, "k", tmp_path, "", tune_every, send=lambda m, checkpoint: sent.append(
        (m["epoch"], checkpoint)))  # fmt: skip
    for epoch in (1, 2, 3):
        rep({"epoch": epoch, "val/acc": 0.5}, str(state))
    return sent, rep


def test_epochs_reach_tune_without_a_copy_of_the_state_by_default(tmp_path):
    sent, rep = _report_epochs(tmp_path, tune_every=0)
    assert sent == [(1, None), (2, None)]  # the last epoch waits for the test metrics
    final, ckpt = rep.final(_ok())
    assert final["epoch"] == 3 and ckpt is not None  # the final result carries the only copy
    assert json.loads((tmp_path / RESUME_FILE).read_text()) == {
        "dir": str(tmp_path / "checkpoint"), "epoch": 3}  # fmt: skip


def test_tune_every_hands_tune_a_copy_every_k_epochs(tmp_path):
    sent, _ = _report_epochs(tmp_path, tune_every=2)
    assert [e for e, c in sent if c is not None] == [2]
    assert sent[1][1].get_metadata() == {"epoch": 2}


def test_a_retry_resumes_from_the_latest_reported_state(tmp_path):
    import contextlib

    _report_epochs(tmp_path, tune_every=0)
    with contextlib.ExitStack() as stack:
        assert _resume_point(tmp_path, stack) == (str(tmp_path / "checkpoint"), 3)


def test_attempts_count_up_and_an_unreadable_count_is_never_a_first_attempt(tmp_path):
    assert [_count_attempt(tmp_path) for _ in range(3)] == [1, 2, 3]
    (tmp_path / "mdfr_attempts").write_text("")  # a crash while writing it
    assert _count_attempt(tmp_path) == 2  # so the trial's run is looked for, not created


def _ok():
    from mdfr.results import TrialResult

    return TrialResult.coerce({"status": "ok", "acc_original": 0.5, "checkpoint": "c"})
