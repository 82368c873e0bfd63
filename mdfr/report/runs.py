"""Which MLflow runs a report covers, read through :mod:`mdfr.tracking`.

A report covers one sweep: its parent run (``mdfr.kind=sweep``) and that parent's trial and
pretraining children. An experiment can hold several sweeps, also several runs of the same
sweep file; ``--sweep`` picks by name (the newest parent of that name) or by parent run id,
and without it the newest sweep of the experiment is used. Runs logged without a sweep parent
(``mdfr train`` with tracking) are reported when the experiment has no sweep at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdfr import tracking
from mdfr.errors import UsageError
from mdfr.names import Kind, Tag

# Outcome of a trial, from the ``mdfr.status`` tag the trainable / run closer write.
OUTCOMES = ("ok", "diverged", "failed", "pruned", "running")


@dataclass
class SweepRuns:
    """The runs of one sweep, as plain dicts from :func:`mdfr.tracking.fetch_sweep_runs`."""

    experiment: str
    tracking_uri: str
    parent: dict[str, Any] | None
    trials: list[dict[str, Any]]
    pretrains: list[dict[str, Any]] = field(default_factory=list)
    other_parents: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.parent is not None:
            return str(self.parent["tags"].get(Tag.SWEEP) or self.parent["run_name"])
        return self.experiment

    @property
    def sweep_dir(self) -> Path | None:
        d = (self.parent or {}).get("tags", {}).get(Tag.SWEEP_DIR)
        return Path(d) if d else None

    def param(self, key: str) -> str:
        """A parameter of the parent run ("" when absent)."""
        return str((self.parent or {}).get("params", {}).get(key, ""))

    @property
    def search_axes(self) -> list[str]:
        return [a for a in self.param("sweep.search").split(",") if a]

    @property
    def grid_axes(self) -> list[str]:
        return [a for a in self.param("sweep.axes").split(",") if a]

    def outcome_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTCOMES, 0)
        for run in self.trials:
            o = outcome(run)
            counts[o] = counts.get(o, 0) + 1
        return counts


def outcome(run: dict[str, Any]) -> str:
    """ok / diverged / failed / pruned / running for a trial run.

    The ``mdfr.status`` tag wins (it says *why* a run ended); without it the MLflow status
    decides: FINISHED -> ok, FAILED/KILLED -> failed, else running.
    """
    tag = run["tags"].get(Tag.STATUS)
    if tag in OUTCOMES:
        return str(tag)
    status = run.get("status")
    if status == "FINISHED":
        return "ok"
    if status in ("FAILED", "KILLED"):
        return "failed"
    return "running"


def metric(run: dict[str, Any], key: str) -> float | None:
    """The run's last value of ``key`` (None when missing or not finite)."""
    v = run["metrics"].get(key)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def seed_of(run: dict[str, Any]) -> str:
    # "" for a run that died before logging anything (the driver's run closer made it).
    return str(run["tags"].get(Tag.SEED) or run["params"].get("seed", ""))


def setup_of(run: dict[str, Any]) -> str:
    return str(run["tags"].get(Tag.SETUP) or run["params"].get("setup", ""))


def backbone_of(run: dict[str, Any]) -> str:
    return str(run["tags"].get(Tag.BACKBONE) or run["params"].get("model.backbone", ""))


def mode_of(run: dict[str, Any]) -> str:
    return str(run["tags"].get(Tag.MODE) or run["params"].get("mode", ""))


def _check_store(tracking_uri: str) -> None:
    # Opening a missing SQLite file would silently create an empty store.
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        if db.is_dir():
            raise UsageError(
                f"--tracking-uri {tracking_uri}: {db} is a directory, not a SQLite file"
            )
        if not db.is_file():
            raise UsageError(
                f"no MLflow store at {db}: run a sweep first (`mdfr sweep run ...`) or pass "
                "--tracking-uri"
            )


def load(experiment: str, tracking_uri: str, sweep: str | None = None) -> SweepRuns:
    """Find the sweep to report on and fetch its runs.

    Args:
        experiment: MLflow experiment name.
        tracking_uri: the store (resolved to an absolute URI here).
        sweep: a sweep name (newest parent run of that name) or a parent run id.

    Raises:
        UsageError: unknown store, experiment or sweep, naming what exists instead.
    """
    uri = tracking.resolve_uri(tracking.check_tracking_uri(tracking_uri, "--tracking-uri"))
    _check_store(uri)
    store = tracking.connect(uri)
    if store.client.get_experiment_by_name(experiment) is None:
        names = sorted(e.name for e in store.client.search_experiments())
        raise UsageError(
            f"no experiment {experiment!r} in {uri}; experiments there: "
            + (", ".join(names) if names else "none")
        )
    parents = tracking.fetch_sweep_runs(experiment, uri, kind=Kind.SWEEP)
    chosen = [p for p in parents if sweep in (None, p["run_id"], p["tags"].get(Tag.SWEEP))]
    if parents and not chosen:
        names = sorted({str(p["tags"].get(Tag.SWEEP)) for p in parents})
        raise UsageError(
            f"experiment {experiment!r} has no sweep {sweep!r}; sweeps: {', '.join(names)}"
        )
    if chosen:
        # Newest first: a re-run of the same sweep file supersedes the older one.
        chosen.sort(key=lambda r: r.get("start_time") or 0, reverse=True)
        parent = chosen[0]
        pid = parent["run_id"]
        trials = _by_name(tracking.fetch_sweep_runs(experiment, uri, parent_run_id=pid))
        pretrains = tracking.fetch_sweep_runs(
            experiment, uri, parent_run_id=pid, kind=Kind.PRETRAIN
        )
        return SweepRuns(experiment, uri, parent, trials, pretrains, chosen[1:])
    # No sweep: runs of `mdfr train` (kind "train") or trials whose parent is gone.
    trials = [
        run
        for kind in (Kind.TRIAL, Kind.TRAIN)
        for run in tracking.fetch_sweep_runs(experiment, uri, sweep=sweep, kind=kind)
    ]
    if not trials:
        raise UsageError(f"experiment {experiment!r} holds no trial runs to report on")
    return SweepRuns(experiment, uri, None, _by_name(trials))


def _by_name(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs in name order (a trial's key), not MLflow's start-time order: the same sweep
    gives the same report whichever of two concurrent trials started first."""
    return sorted(runs, key=lambda r: str(r.get("run_name") or ""))
