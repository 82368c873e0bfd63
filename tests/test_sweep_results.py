"""The champion rule and the trial table rows of :mod:`mdfr.sweep.results` (plain data, no
Ray, no MLflow), and the sweep-file options that drive them."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdfr.sweep.results import pick_champion, selection, summary_rows
from mdfr.sweep.spec import load_sweep

SMOKE = Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml"


def _run(key, setup, status="ok", mode="mdfr", **metrics):
    tags = {"mdfr.trial_key": key, "mdfr.setup": setup, "mdfr.mode": mode, "mdfr.status": status,
            "mdfr.seed": "0"}  # fmt: skip
    return {"run_id": f"id-{key}", "run_name": key, "status": "FINISHED", "tags": tags,
            "metrics": metrics, "params": {"loss.lambda_spa": "0.5"}}  # fmt: skip


def test_champion_is_the_best_proposed_trial_by_the_validation_metric():
    runs = [
        _run("000-finetune-n0", "finetune", mode="finetune", **{"val/acc": 0.99}),
        _run("001-proposed-n0", "proposed", **{"val/acc": 0.6, "test/acc_restored": 0.9}),
        _run("001-proposed-n1", "proposed", **{"val/acc": 0.7, "test/acc_restored": 0.1}),
        _run("001-proposed-n2", "proposed", status="pruned", **{"val/acc": 0.95}),
        _run("002-wo_res-n0", "wo_res", **{"val/acc": 0.98}),
    ]
    # the finetune and wo_res runs score higher, the pruned one too: none of them counts,
    # and the test accuracy plays no part
    assert pick_champion(runs, "val/acc", "max")["run_id"] == "id-001-proposed-n1"
    assert pick_champion(runs, "val/acc", "min")["run_id"] == "id-001-proposed-n0"


def test_ties_go_to_the_lower_trial_key_and_mdfr_trials_stand_in_for_proposed():
    runs = [_run("003-wo_at-n0", "wo_at", **{"val/acc": 0.5}),
            _run("002-wo_res-n0", "wo_res", **{"val/acc": 0.5}),
            _run("000-finetune-n0", "finetune", mode="finetune", **{"val/acc": 0.9})]  # fmt: skip
    assert pick_champion(runs, "val/acc", "max")["run_id"] == "id-002-wo_res-n0"
    assert pick_champion(runs[2:], "val/acc", "max") is None  # no MDFRNet trial at all
    assert pick_champion([_run("001-proposed-n0", "proposed")], "val/acc", "max") is None


def test_selection_uses_the_sweeps_validation_metric_never_a_test_one():
    plan = load_sweep(SMOKE)  # search and scheduler metric: val/acc_restored
    assert selection(plan) == ("val/acc_restored", "max")
    plan = load_sweep(SMOKE, ["search_alg.metric=test/acc_restored", "scheduler=null"])
    assert selection(plan) == ("val/acc", "max")


def test_summary_rows_one_per_trial_with_the_search_values():
    plan = load_sweep(SMOKE)
    rows = summary_rows([_run("b", "proposed", **{"val/acc": 0.5, "epoch": 2}),
                         _run("a", "wo_at", status="pruned")], plan)  # fmt: skip
    assert [r["trial_key"] for r in rows] == ["a", "b"]
    assert rows[1]["val/acc"] == 0.5 and rows[1]["epochs"] == 2 and rows[1]["seed"] == 0
    assert rows[0]["status"] == "pruned" and rows[0]["loss.lambda_spa"] == "0.5"


@pytest.mark.parametrize(
    ("overrides", "log_models", "system_metrics"),
    [
        ([], "best", False),  # the CPU smoke sweep: champion only, no system metrics
        (["resources.gpu=0.5"], "best", True),  # auto: on when trials take GPUs
        (["log_models=all", "system_metrics=true"], "all", True),
        (["log_models=none", "resources.gpu=1", "system_metrics=false"], "none", False),
    ],
)
def test_model_and_system_metric_options(overrides, log_models, system_metrics):
    plan = load_sweep(SMOKE, overrides)
    assert (plan.log_models, plan.system_metrics) == (log_models, system_metrics)
