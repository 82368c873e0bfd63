"""Search-sweep analysis: Optuna parameter importances and the data for a parallel plot.

Source of truth, in order:

1. the sweep's own Optuna storage, ``<sweep dir>/optuna.db`` (one study per grid cell, see
   :mod:`mdfr.sweep.searcher`): the values Optuna was told, with the cell recorded in each
   trial's ``cell`` user attribute;
2. when that file is gone (another machine, cleaned storage): the MLflow runs themselves,
   search values from their params and the objective from their metrics.

Either way the completed trials of all cells are merged into one in-memory study whose
parameters are the search axes plus the grid axes that vary (as categories), so the
importances also say how much the setup or seed mattered next to λ or the learning rate.
Only trials that sampled *every* search axis enter (a fine-tuning cell has no λ), so the
evaluator compares like with like.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from mdfr.names import VAL_ACC
from mdfr.report.runs import SweepRuns, metric, outcome
from mdfr.sweep.plan import is_mdfr_only
from mdfr.sweep.state import OPTUNA_FILE, STATE_FILE


@dataclass
class SearchData:
    """Completed search trials, merged over cells."""

    source: str
    objective: str
    direction: str  # "maximize" | "minimize"
    params: list[str]  # search axes, then the varying grid axes
    logs: set[str]
    trials: list[dict[str, Any]]  # {"key", "params": {name: value}, "value"}
    skipped: int = 0  # completed trials without every search axis
    notes: list[str] = field(default_factory=list)


def _plan(sweep: SweepRuns) -> dict[str, Any] | None:
    d = sweep.sweep_dir
    if d is None:
        return None
    try:
        return json.loads((d / STATE_FILE).read_text())["plan"]
    except (OSError, ValueError, KeyError):
        return None


def _objective(plan: dict[str, Any] | None) -> tuple[str, str]:
    alg = (plan or {}).get("search_alg") or {}
    metric_name = alg.get("metric") or VAL_ACC
    return metric_name, "minimize" if alg.get("mode") == "min" else "maximize"


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _add_grid(trials: list[dict[str, Any]], cells: list[dict[str, Any]]) -> list[str]:
    """Add the grid axes whose values differ between trials as string parameters."""
    axes = sorted({a for c in cells for a in c})
    varying = [a for a in axes if len({str(c.get(a)) for c in cells}) > 1]
    for t, c in zip(trials, cells, strict=True):
        for a in varying:
            t["params"][a] = str(c.get(a))
    return varying


def from_optuna(sweep: SweepRuns) -> SearchData | None:
    """Read ``optuna.db`` next to the sweep's Tune storage, if it is still there."""
    if sweep.sweep_dir is None or not (sweep.sweep_dir / OPTUNA_FILE).is_file():
        return None
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{sweep.sweep_dir / OPTUNA_FILE}"
    objective, direction = _objective(_plan(sweep))
    trials: list[dict[str, Any]] = []
    cells: list[dict[str, Any]] = []
    logs: set[str] = set()
    search: list[str] = []
    for name in optuna.study.get_all_study_names(storage=storage):
        study = optuna.load_study(study_name=name, storage=storage)
        direction = study.direction.name.lower()
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if not _finite(t.value):
                continue
            for p, dist in t.distributions.items():
                if p not in search:
                    search.append(p)
                if isinstance(dist, FloatDistribution | IntDistribution) and dist.log:
                    logs.add(p)
            key = str(t.user_attrs.get("trial_key", f"{name}#{t.number}"))
            trials.append({"key": key, "params": dict(t.params), "value": float(t.value)})
            cells.append(dict(t.user_attrs.get("cell") or {}))
    full = [i for i, t in enumerate(trials) if set(search) <= set(t["params"])]
    data = SearchData(
        f"Optuna storage {sweep.sweep_dir / OPTUNA_FILE}",
        objective,
        direction,
        list(search),
        logs,
        [trials[i] for i in full],
        skipped=len(trials) - len(full),
    )
    data.params += _add_grid(data.trials, [cells[i] for i in full])
    return data


def _parse(v: str) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def from_mlflow(sweep: SweepRuns) -> SearchData | None:
    """Rebuild the search data from the runs' params (search axes) and metrics."""
    plan = _plan(sweep)
    axes = sweep.search_axes
    if not axes:
        return None
    objective, direction = _objective(plan)
    logs = {a["name"] for a in (plan or {}).get("search", []) if a.get("log")}
    grid = sweep.grid_axes
    trials: list[dict[str, Any]] = []
    cells: list[dict[str, Any]] = []
    skipped = 0
    for run in sweep.trials:
        value = metric(run, objective)
        if outcome(run) != "ok" or value is None:
            continue
        mode = run["params"].get("mode", "")
        if any(is_mdfr_only(a) and mode != "mdfr" for a in axes):
            skipped += 1  # the axis was not sampled for this cell (e.g. λ for fine-tuning)
            continue
        params = {a: _parse(run["params"].get(a, "")) for a in axes}
        trials.append({"key": run["run_name"], "params": params, "value": value})
        cells.append({a: run["params"].get(a, "") for a in grid})
    data = SearchData(
        "MLflow run params and metrics (the sweep's Optuna storage is not reachable)",
        objective,
        direction,
        list(axes),
        logs,
        trials,
        skipped=skipped,
    )
    data.params += _add_grid(data.trials, cells)
    return data


def load(sweep: SweepRuns) -> SearchData | None:
    """Search data of a search sweep (None for a pure grid sweep)."""
    if not sweep.search_axes:
        return None
    try:
        data = from_optuna(sweep)
    except Exception as e:  # noqa: BLE001 - a damaged study must not sink the report
        data = None
        note = f"the Optuna storage could not be read ({type(e).__name__}: {e}); "
    else:
        note = ""
    if data is None or not data.trials:
        data = from_mlflow(sweep)
        if data is not None and note:
            data.notes.append(note + "used the MLflow runs instead")
    return data


def _distributions(data: SearchData) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    dists: dict[str, Any] = {}
    for p in data.params:
        vals = [t["params"][p] for t in data.trials]
        if all(_finite(v) for v in vals):
            lo, hi = float(min(vals)), float(max(vals))
            log = p in data.logs and lo > 0
            dists[p] = FloatDistribution(lo, hi if hi > lo else lo + 1e-12, log=log)
        else:
            dists[p] = CategoricalDistribution(sorted({str(v) for v in vals}))
    return dists


def importances(data: SearchData) -> tuple[dict[str, float], str]:
    """Normalised importances of the parameters that vary, and the evaluator's name.

    fANOVA (seeded, deterministic) when scikit-learn is importable, else Optuna's default
    PED-ANOVA. Raises ValueError when fewer than two trials completed or nothing varies.
    """
    import optuna

    varying = [p for p in data.params if len({str(t["params"][p]) for t in data.trials}) > 1]
    if len(data.trials) < 2 or not varying:
        raise ValueError(
            f"{len(data.trials)} completed trial(s), {len(varying)} varying parameter(s): "
            "importances need at least 2 completed trials and 1 parameter that varies"
        )
    if len({t["value"] for t in data.trials}) < 2:
        raise ValueError(
            f"the objective {data.objective} is the same in all {len(data.trials)} completed "
            "trials, so no parameter explains any of it"
        )
    dists = _distributions(data)
    study = optuna.create_study(direction=data.direction)
    for t in data.trials:
        params = {
            p: (float(t["params"][p]) if _finite(t["params"][p]) else str(t["params"][p]))
            for p in varying
        }
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions={p: dists[p] for p in varying}, value=t["value"]
            )
        )
    try:
        import sklearn  # noqa: F401

        evaluator: Any = optuna.importance.FanovaImportanceEvaluator(seed=0)
        name = "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0)"
    except ImportError:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        name = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator)"
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as e:  # e.g. fANOVA on degenerate data
        raise ValueError(f"{name} failed: {e}") from None
    return dict(imp), name
