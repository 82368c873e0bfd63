"""Grid x Optuna: a Tune searcher that runs every grid cell exactly ``num_samples`` times.

Ray's ``OptunaSearch`` refuses ``tune.grid_search``, and a Table II sweep must run every
(setup, seed) cell while Optuna proposes λ and lr. This searcher walks a fixed list of
(cell, sample) slots — sample-major, so every cell advances together and each cell's sampler
learns from that cell's earlier samples; a cell with no search axis runs once — and asks Optuna (ask/tell API) only for the search
values of the slot's cell.

Design choice: **one Optuna study per grid cell** (``<sweep>/<cell key>``), all in one SQLite
file next to the sweep's Tune storage. A cell is one fixed objective (a setup, a seed, a
backbone), so its sampler models one landscape, and axes that do not apply to a cell's mode
(λ for finetune) simply are not in that cell's study; a shared study with
``PartialFixedSampler`` would mix setups whose best λ differ and whose parameter sets differ.
Cells without search axes never touch Optuna.

Exact coverage across crashes: the slot pointer and the live-trial table are part of the
searcher state Tune snapshots together with its trial list, so after ``Tuner.restore`` every
slot is either in the restored trial list or still ahead of the pointer. A slot handed out
after the last snapshot is handed out again; its Optuna trial (found by the ``sample`` user
attribute) is reused with the same values, so the trial's MLflow params stay consistent and
the study gets no orphans.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState
from ray.tune.search import Searcher

from mdfr import probe
from mdfr.names import FINAL_KEY, STATUS, Outcome
from mdfr.sweep.plan import Cell, SearchAxis, SweepPlan

log = logging.getLogger(__name__)


def distribution(axis: SearchAxis) -> BaseDistribution:
    if axis.kind == "float":
        return FloatDistribution(float(axis.low), float(axis.high), log=axis.log)
    if axis.kind == "int":
        return IntDistribution(int(axis.low), int(axis.high), log=axis.log)
    return CategoricalDistribution(list(axis.choices))


def make_sampler(name: str, seed: int, n_startup_trials: int | None) -> optuna.samplers.BaseSampler:
    startup = {} if n_startup_trials is None else {"n_startup_trials": n_startup_trials}
    if name == "tpe":
        # constant_liar: concurrent trials of one cell do not all get the same suggestion.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, **startup)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, **startup)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def study_name(plan: SweepPlan, cell: Cell) -> str:
    return f"{plan.name}/{cell.key}"


class GridOptunaSearcher(Searcher):
    """Hands out every (grid cell, sample) slot of ``plan`` once, with Optuna's values.

    Args:
        plan: the validated sweep.
        study_storage: Optuna RDB URL (``sqlite:////abs/optuna.db``) holding one study per cell.

    Suggestions are Tune configs with ``cell``, ``sample``, ``trial_key``, the cell's grid
    values and the sampled values (dotted TrialConfig keys), flat so the progress table can
    show them.
    """

    def __init__(self, plan: SweepPlan, study_storage: str):
        super().__init__(metric=plan.search_alg.metric, mode=plan.search_alg.mode)
        self.plan = plan
        self.study_storage = study_storage
        self._next = 0  # index of the next slot to hand out
        self._live: dict[str, tuple[int, int, int | None]] = {}  # tune id -> cell, sample, number
        self._studies: dict[int, optuna.Study] = {}  # not saved: reopened from storage
        self._study_ids: dict[int, int] = {}
        self._optuna_storage: optuna.storages.RDBStorage | None = None
        self._slots: list[tuple[Cell, int]] | None = None

    # ----- slots

    @property
    def total(self) -> int:
        return self.plan.num_trials

    def slot(self, position: int) -> tuple[Cell, int]:
        """Slot ``position`` in hand-out order (:meth:`SweepPlan.slots`)."""
        if self._slots is None:
            self._slots = self.plan.slots()
        return self._slots[position]

    # ----- Tune's searcher interface

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        # The metric and mode come from the sweep file; Tune's (unset) ones do not override.
        return True

    @probe.timed("searcher.suggest")
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._next >= self.total:
            return Searcher.FINISHED
        cell, sample = self.slot(self._next)
        values, number = self._ask(cell, sample)
        self._next += 1
        self._live[trial_id] = (cell.index, sample, number)
        return {
            "trial_key": cell.trial_key(sample),
            "cell": cell.index,
            "sample": sample,
            **cell.values,
            **values,
        }

    @probe.timed("searcher.on_result")
    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        entry = self._live.get(trial_id)
        value = result.get(self.metric) if self.metric else None
        if entry is None or entry[2] is None or not _finite(value):
            return
        cell = self.plan.cells[entry[0]]
        self._study(cell)  # opens the storage and learns the study's id
        step = int(result.get("training_iteration", 0))
        storage = self._rdb()
        try:
            # Optuna's public storage API: a study trial's number -> its id, then the value.
            trial = storage.get_trial_id_from_study_id_trial_number(
                self._study_ids[cell.index], entry[2]
            )
            storage.set_trial_intermediate_value(trial, step, float(value))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # told already: a trial replayed after resume

    @probe.timed("searcher.on_complete")
    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        entry = self._live.pop(trial_id, None)
        if entry is None or entry[2] is None:
            return
        study = self._study(self.plan.cells[entry[0]])
        result = result or {}
        value = result.get(self.metric)
        if error or result.get(STATUS) == Outcome.DIVERGED:
            state, values = TrialState.FAIL, None
        elif result.get(FINAL_KEY) and _finite(value):
            state, values = TrialState.COMPLETE, float(value)
        elif result.get(FINAL_KEY):
            state, values = TrialState.FAIL, None  # finished without the metric
        else:
            state, values = TrialState.PRUNED, None  # stopped early by the scheduler
        study.tell(entry[2], values, state=state, skip_if_finished=True)

    # ----- persistence (Tune saves this with every experiment snapshot)

    def get_state(self) -> dict[str, Any]:
        return {"next": self._next, "live": dict(self._live)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._next = int(state["next"])
        self._live = {k: tuple(v) for k, v in state["live"].items()}  # type: ignore[misc]

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the searcher into tuner.pkl; open studies hold database connections.
        state = dict(self.__dict__)
        state.update(_studies={}, _study_ids={}, _optuna_storage=None)
        return state

    # ----- Optuna

    def _rdb(self) -> optuna.storages.RDBStorage:
        if self._optuna_storage is None:
            self._optuna_storage = optuna.storages.RDBStorage(self.study_storage)
        return self._optuna_storage

    def _study(self, cell: Cell) -> optuna.Study:
        if cell.index not in self._studies:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            name = study_name(self.plan, cell)
            alg = self.plan.search_alg
            study = optuna.create_study(
                study_name=name,
                storage=self._rdb(),
                direction="maximize" if alg.mode == "max" else "minimize",
                load_if_exists=True,
            )
            self._study_ids[cell.index] = self._rdb().get_study_id_from_name(name)
            # Seeded per cell and per study size, so a resumed sampler does not replay the
            # random start-up values it proposed before the crash.
            seed_src = f"{alg.seed}/{cell.index}/{len(study.trials)}".encode()
            seed = int(hashlib.sha256(seed_src).hexdigest()[:8], 16)
            study.sampler = make_sampler(alg.sampler, seed, alg.n_startup_trials)
            self._studies[cell.index] = study
        return self._studies[cell.index]

    def _ask(self, cell: Cell, sample: int) -> tuple[dict[str, Any], int | None]:
        if not cell.search:
            return {}, None
        study = self._study(cell)
        for t in study.get_trials(deepcopy=False):
            if t.user_attrs.get("sample") == sample:
                return dict(t.params), t.number  # handed out before a crash: same values
        dists = {name: distribution(self.plan.axis(name)) for name in cell.search}
        trial = study.ask(dists)
        trial.set_user_attr("sample", sample)
        trial.set_user_attr("trial_key", cell.trial_key(sample))
        trial.set_user_attr("cell", dict(cell.values))
        return {name: trial.params[name] for name in cell.search}, trial.number


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
