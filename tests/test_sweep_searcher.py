"""The grid x Optuna searcher, driven directly (real Optuna on SQLite; no Ray cluster needed):
exact grid coverage, results told to Optuna, and save/restore continuing the same studies."""

from __future__ import annotations

import pickle
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from mdfr.sweep.searcher import FINAL_KEY, GridOptunaSearcher, study_name
from mdfr.sweep.spec import build_plan


@pytest.fixture()
def plan():
    return build_plan(
        {
            "name": "cov",
            "grid": {"setup": ["finetune", "proposed"], "seed": [0, 1]},
            "search": {
                "loss.lambda_spa": {"float": [0.1, 1.0]},
                "optim.name": {"choice": ["rmsprop", "adam"]},
            },
            "search_alg": {"num_samples": 3, "metric": "val/acc_restored", "seed": 7},
        }
    )


def _drain(searcher, prefix="t"):
    out = {}
    while True:
        tid = f"{prefix}{len(out)}"
        cfg = searcher.suggest(tid)
        if cfg == Searcher.FINISHED:
            return out
        out[tid] = cfg


def test_every_cell_gets_exactly_num_samples_trials(plan, tmp_path):
    s = GridOptunaSearcher(plan, f"sqlite:///{tmp_path / 'o.db'}")
    got = _drain(s)
    assert len(got) == plan.num_trials == 12
    assert sorted(c["trial_key"] for c in got.values()) == sorted(plan.trial_keys())
    assert Counter(c["cell"] for c in got.values()) == {i: 3 for i in range(4)}
    for cfg in got.values():
        if cfg["setup"] == "finetune":  # λ does not apply to fine-tuning: not sampled
            assert "loss.lambda_spa" not in cfg and cfg["optim.name"] in ("rmsprop", "adam")
        else:
            assert 0.1 <= cfg["loss.lambda_spa"] <= 1.0
    assert s.suggest("extra") == Searcher.FINISHED


def test_cell_without_search_axes_is_handed_out_once(tmp_path):
    plan = build_plan(
        {
            "name": "once",
            "grid": {"setup": ["finetune", "proposed"]},
            "search": {"loss.lambda_freq": {"float": [0.1, 1.0]}},
            "search_alg": {"num_samples": 3, "metric": "val/acc"},
        }
    )
    got = _drain(GridOptunaSearcher(plan, f"sqlite:///{tmp_path / 'o.db'}"))
    assert Counter(c["setup"] for c in got.values()) == {"finetune": 1, "proposed": 3}


def test_no_search_walks_the_grid_without_optuna(tmp_path):
    plan = build_plan({"name": "g", "grid": {"seed": [0, 1, 2]}})
    s = GridOptunaSearcher(plan, f"sqlite:///{tmp_path / 'o.db'}")
    got = _drain(s)
    assert [c["seed"] for c in got.values()] == [0, 1, 2]
    assert not (tmp_path / "o.db").exists()


def test_results_are_told_to_the_cells_study(plan, tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = GridOptunaSearcher(plan, url)
    ids = [tid for tid, c in _drain(s).items() if c["cell"] == 2]  # (proposed, seed 0)
    assert len(ids) == 3
    s.on_trial_result(ids[0], {"val/acc_restored": 0.4, "training_iteration": 1})
    s.on_trial_complete(ids[0], {"val/acc_restored": 0.7, FINAL_KEY: True, "status": "ok"})
    s.on_trial_result(ids[1], {"val/acc_restored": 0.2, "training_iteration": 1})
    s.on_trial_complete(ids[1], {"val/acc_restored": 0.2})  # stopped by ASHA
    s.on_trial_complete(ids[2], None, error=True)
    study = optuna.load_study(study_name=study_name(plan, plan.cells[2]), storage=url)
    trials = sorted(study.trials, key=lambda t: t.user_attrs["sample"])
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert trials[0].value == 0.7 and trials[0].intermediate_values == {1: 0.4}
    assert trials[1].value == 0.2  # a pruned trial keeps its last value for TPE
    assert trials[0].user_attrs["cell"] == {"setup": "proposed", "seed": 0}
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE


def test_save_restore_continues_without_repeating_or_losing_a_slot(plan, tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = GridOptunaSearcher(plan, url)
    first = {f"a{i}": s.suggest(f"a{i}") for i in range(5)}
    s.on_trial_complete("a2", {"val/acc_restored": 0.5, FINAL_KEY: True})
    s.save(str(tmp_path / "state.json"))
    # Tune pickles the searcher into tuner.pkl and restores its saved state on resume.
    again = pickle.loads(pickle.dumps(s))
    again.restore(str(tmp_path / "state.json"))
    rest = _drain(again, prefix="b")
    keys = [c["trial_key"] for c in [*first.values(), *rest.values()]]
    assert sorted(keys) == sorted(plan.trial_keys())
    again.on_trial_complete("a3", {"val/acc_restored": 0.6, FINAL_KEY: True})  # live before save
    study = optuna.load_study(study_name=study_name(plan, plan.cells[3]), storage=url)
    assert [t.state for t in study.trials][0] == TrialState.COMPLETE
    assert len(study.trials) == 3  # the same study grew; nothing was asked twice


def test_slot_handed_out_after_the_last_snapshot_reuses_its_optuna_trial(plan, tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = GridOptunaSearcher(plan, url)
    snapshot = s.get_state()  # Tune's last experiment snapshot
    lost = s.suggest("x0")  # handed out, then the driver died before the next snapshot
    restored = GridOptunaSearcher(plan, url)
    restored.set_state(snapshot)
    again = restored.suggest("y0")
    assert again == lost  # same slot, same sampled values (MLflow params stay consistent)
    study = optuna.load_study(study_name=study_name(plan, plan.cells[0]), storage=url)
    assert len(study.trials) == 1
