"""ASHA within each grid cell: a weak Table II setup is never pruned away by a strong one.

Drives the real Ray Tune ASHA scheduler (no Tune run needed: a scheduler only sees trials and
their results), once as one global ASHA and once per cell, on the same results.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from mdfr.sweep.schedulers import PerCellASHA, make_scheduler
from mdfr.sweep.schema import SchedulerSpec

SPEC = SchedulerSpec(
    name="asha", metric="val/acc_restored", mode="max", max_t=4, grace_period=1,
    reduction_factor=2,
)  # fmt: skip


class _Trial:
    """What a scheduler reads of a Tune trial: its id and config (the searcher's ``cell``)."""

    def __init__(self, trial_id: str, cell: int):
        self.trial_id = trial_id
        self.config = {"cell": cell, "trial_key": trial_id}


def _epoch_one(scheduler, trials_and_values):
    actions = {}
    for trial, _ in trials_and_values:
        scheduler.on_trial_add(None, trial)
    for trial, value in trials_and_values:
        result = {"epoch": 1, "val/acc_restored": value}
        actions[trial.trial_id] = scheduler.on_trial_result(None, trial, result)
    return actions


def _sweep():
    # Cell 0: a strong setup, four samples; cell 1: a weak setup (Table II #2), two samples.
    strong = [(_Trial(f"000-proposed-n{i}", 0), 0.90 + i / 100) for i in range(4)]
    weak = [(_Trial("001-backbone-n0", 1), 0.10), (_Trial("001-backbone-n1", 1), 0.05)]
    return strong + weak


def test_one_global_asha_drops_the_weak_cell():
    """The failure this module exists for: every trial of the weak cell is stopped."""
    global_asha = ASHAScheduler(
        time_attr="epoch", metric=SPEC.metric, mode="max", max_t=4, grace_period=1,
        reduction_factor=2,
    )  # fmt: skip
    actions = _epoch_one(global_asha, _sweep())
    weak = [a for k, a in actions.items() if "-backbone-" in k]
    assert weak == [TrialScheduler.STOP, TrialScheduler.STOP]


def test_per_cell_asha_keeps_every_cell_and_still_prunes_within_one():
    actions = _epoch_one(PerCellASHA(SPEC), _sweep())
    # The weak cell's best sample goes on: it is compared with its own cell only...
    assert actions["001-backbone-n0"] == TrialScheduler.CONTINUE
    # ...and pruning still works inside a cell: its worse sample is stopped.
    assert actions["001-backbone-n1"] == TrialScheduler.STOP
    assert actions["000-proposed-n3"] == TrialScheduler.CONTINUE


def test_a_cell_with_one_trial_is_never_stopped():
    sched = PerCellASHA(SPEC)
    trials = [(_Trial(f"{i:03d}-setup-n0", i), v) for i, v in enumerate([0.9, 0.5, 0.1])]
    for trial, _ in trials:
        sched.on_trial_add(None, trial)
    for epoch in (1, 2, 3):
        for trial, value in trials:
            result = {"epoch": epoch, "val/acc_restored": value}
            assert sched.on_trial_result(None, trial, result) == TrialScheduler.CONTINUE
    for trial, value in trials:
        sched.on_trial_complete(None, trial, {"epoch": 4, "val/acc_restored": value})


def test_fifo_is_tunes_default():
    assert make_scheduler(SchedulerSpec()) is None
    assert isinstance(make_scheduler(SPEC), PerCellASHA)


def test_progress_lines_name_each_trials_outcome(capsys):
    """The console progress (a Tune Callback): outcomes as trials end, a status line."""
    from mdfr.sweep.progress import ProgressPrinter

    class T(_Trial):
        def __init__(self, trial_id, cell, status, last_result, error_file=None):
            super().__init__(trial_id, cell)
            self.status, self.last_result, self.error_file = status, last_result, error_file

    done = T("000-proposed-n0", 0, "TERMINATED", {"epoch": 2, "val/acc": 0.5, "mdfr/final": True})
    cut = T("001-backbone-n0", 1, "TERMINATED", {"epoch": 1, "val/acc": 0.2})
    bad = T("002-wo_at-n0", 2, "ERROR", {}, error_file="/x/error.txt")
    running = T("003-wo_res-n0", 3, "RUNNING", {})
    p = ProgressPrinter("val/acc", total=4, verbose=1, every_s=0)
    trials = [done, cut, bad, running]
    p.on_trial_result(0, trials, running, {"epoch": 1, "val/acc": 0.3})
    p.on_trial_complete(0, trials, done)
    p.on_trial_complete(0, trials, cut)
    p.on_trial_error(0, trials, bad)
    p.on_experiment_end(trials)
    out = capsys.readouterr().out
    assert "000-proposed-n0: ok at epoch 2 val/acc=0.5000" in out
    assert "001-backbone-n0: pruned at epoch 1 val/acc=0.2000" in out
    assert "002-wo_at-n0: failed (/x/error.txt)" in out
    assert "3/4 trials done (1 failed, 1 ok, 1 pruned); 1 running; 003-wo_res-n0 epoch 1" in out
