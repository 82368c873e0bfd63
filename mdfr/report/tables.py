"""Table I, Table II and the per-cell sweep table, computed from trial runs.

Every number is a test-split accuracy in percent. One value per (row, seed): when a cell ran
several samples (a search sweep), the sample with the best *validation* accuracy
(``val/acc``) stands for that seed, so the test split never chooses what gets reported.
Rows then get the mean over seeds with a t-interval (:mod:`mdfr.report.stats`), and Table II
compares every setup with #1 fine-tuning by a paired t-test over the seeds both have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from mdfr.config import SETUP_ROWS, SETUPS
from mdfr.names import VAL_ACC, VIEWS, acc_metric
from mdfr.registry import PAPER_BACKBONES
from mdfr.report import paper as paper_mod
from mdfr.report.runs import backbone_of, metric, mode_of, outcome, seed_of, setup_of
from mdfr.report.stats import Paired, Summary, mean_ci, paired, seed_order

SELECT_METRIC = VAL_ACC

SETUP_LABELS = {
    "finetune": "fine-tune",
    "backbone": "backbone",
    "wo_res": "wo/res",
    "wo_at": "wo/at",
    "wo_phase_restore": "wo/phase_restore",
    "proposed": "proposed",
    "proposed_wrapped": "proposed, wrapped phase loss",
}
SETUP_WHAT = {
    "finetune": "CMI net fine-tuned on compressed patches; no MDFRNet",
    "backbone": "MDFRNet without amplitude increment, max pooling only",
    "wo_res": "no amplitude increment (A' = A)",
    "wo_at": "max pooling only in FFS attention",
    "wo_phase_restore": "no phase restoration (P' = P)",
    "proposed": "everything on",
    "proposed_wrapped": "everything on; our wrapped phase loss instead of the paper's (not in the paper)",
}


@dataclass
class Row:
    """One table row for one metric: the value each seed contributed and their summary."""

    key: str
    metric: str
    values: dict[str, float]  # seed -> percent
    run_ids: dict[str, str]  # seed -> run id of the trial that stands for it
    summary: Summary
    paper: float | None = None
    vs_baseline: Paired | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"].update(low=self.summary.low, high=self.summary.high)
        return d


def pick_per_seed(runs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """seed -> the run with the best ``val/acc`` among that seed's finished runs.

    Ties go to the oldest run (runs arrive oldest first); runs without the selection metric
    rank last but still count, so a sweep that logs no validation still reports.
    """
    best: dict[str, dict[str, Any]] = {}
    for run in runs:
        seed = seed_of(run)
        cur = best.get(seed)
        score = metric(run, SELECT_METRIC)
        if cur is None or (score is not None and score > (metric(cur, SELECT_METRIC) or -1.0)):
            best[seed] = run
    return best


def _percent(run: dict[str, Any], key: str) -> float | None:
    v = metric(run, key)
    return None if v is None else 100.0 * v


def make_row(key: str, runs: list[dict[str, Any]], metric_key: str) -> Row:
    picked = pick_per_seed(runs)
    chosen = {s: picked[s] for s in sorted(picked, key=seed_order)}
    values = {s: v for s, r in chosen.items() if (v := _percent(r, metric_key)) is not None}
    ids = {s: chosen[s]["run_id"] for s in values}
    return Row(key, metric_key, values, ids, mean_ci(list(values.values())))


def usable(trials: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials that finished normally (not diverged, failed, pruned or still running)."""
    return [r for r in trials if outcome(r) == "ok"]


def _groups(runs: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> list[str]:
    return sorted({key(r) for r in runs})


# --------------------------------------------------------------------------- Table II


def table2(trials: list[dict[str, Any]], paper: dict[str, Any]) -> dict[str, list[Row]]:
    """backbone -> the six Table II rows (SETUP_ROWS order) plus our extra variants that ran
    (``proposed_wrapped``), each with its paired test against #1 fine-tuning on
    ``test/acc_restored``. Setups the sweep did not run get a row with n = 0, so the table
    always shows what is missing.

    ``Row.extra`` holds what a reader needs to judge the row: ``balanced`` (a Row of
    ``test/bacc_restored``), ``compressed`` (seed -> the starting CMI net's accuracy on the
    compressed patches, for the restoration test), ``optim`` (the optimiser and learning
    rate the row's trials used) and ``phase_loss``."""
    ok = usable(trials)
    out: dict[str, list[Row]] = {}
    for bb in _groups(ok, backbone_of):
        mine = [r for r in ok if backbone_of(r) == bb]
        extra = [s for s in SETUPS if s not in SETUP_ROWS and any(setup_of(r) == s for r in mine)]
        rows = []
        for setup in [*SETUP_ROWS, *extra]:
            runs = [r for r in mine if setup_of(r) == setup]
            row = make_row(setup, runs, acc_metric("test", "restored"))
            row.paper = paper_mod.table2_value(paper, setup)
            row.extra.update(_row_extra(setup, runs))
            rows.append(row)
        base = rows[0]
        for row in rows[1:]:
            row.vs_baseline = paired(row.values, base.values)
        out[bb] = rows
    return out


def _row_extra(setup: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    picked = pick_per_seed(runs)
    compressed = {
        s: v
        for s, r in picked.items()
        if (v := _percent(r, acc_metric("test", "compressed"))) is not None
    }
    optims = sorted(
        {f"{r['params'].get('optim.name', '?')} {r['params'].get('optim.lr', '?')}" for r in runs}
    )
    mode = SETUPS.get(setup, {}).get("mode", "mdfr")
    losses = sorted({str(r["params"].get("loss.phase_loss", "flatness")) for r in runs})
    return {
        "balanced": make_row(setup, runs, acc_metric("test", "restored", balanced=True)),
        "compressed": compressed,
        "optim": ", ".join(optims) or "—",
        "phase_loss": "—" if mode != "mdfr" else (", ".join(losses) or "—"),
    }


# --------------------------------------------------------------------------- Table I


def table1_runs(trials: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The trials Table I reads: the proposed setup when the sweep ran it, else every MDFRNet
    trial (e.g. a λ sweep without setup labels). Returns (runs, a note saying which)."""
    ok = usable(trials)
    proposed = [r for r in ok if setup_of(r) == "proposed"]
    if proposed:
        return proposed, "trials of setup #6 proposed"
    mdfr = [r for r in ok if mode_of(r) == "mdfr"]
    if mdfr:
        return mdfr, "all MDFRNet trials (the sweep has no 'proposed' setup label)"
    return ok, "all finished trials (no MDFRNet trial: 'restored' is the trial's own defence)"


def backbone_order(names: Iterable[str]) -> list[str]:
    order = {n: i for i, n in enumerate(PAPER_BACKBONES)}
    return sorted(set(names), key=lambda n: (order.get(n, len(order)), n))


def table1(trials: list[dict[str, Any]], paper: dict[str, Any]) -> dict[str, dict[str, Row]]:
    """backbone -> {view: Row} for views original / compressed / restored."""
    runs, _ = table1_runs(trials)
    out: dict[str, dict[str, Row]] = {}
    for bb in backbone_order(backbone_of(r) for r in runs):
        mine = [r for r in runs if backbone_of(r) == bb]
        ref = paper_mod.table1_row(paper, bb) or {}
        cols = {}
        for view in VIEWS:
            row = make_row(bb, mine, acc_metric("test", view))
            row.paper = ref.get(view)
            cols[view] = row
        out[bb] = cols
    return out


# --------------------------------------------------------------------------- sweep cells


def cell_label(run: dict[str, Any], axes: list[str]) -> str:
    """The run's grid values except the seed (``setup=proposed, model.backbone=remnet``)."""
    parts = []
    for axis in axes:
        if axis == "seed":
            continue
        v = run["params"].get(axis, "")
        if axis == "setup":
            v = setup_of(run) or v
        parts.append(f"{axis}={v}")
    return ", ".join(parts) or "(all trials)"


def sweep_cells(trials: list[dict[str, Any]], axes: list[str]) -> dict[str, dict[str, Row]]:
    """Grid cell (without seed) -> {view: Row}; the seeds of a cell are its replicates."""
    axes = axes or ["setup", "model.backbone"]
    ok = usable(trials)
    out: dict[str, dict[str, Row]] = {}
    for label in _groups(ok, lambda r: cell_label(r, axes)):
        mine = [r for r in ok if cell_label(r, axes) == label]
        out[label] = {v: make_row(label, mine, acc_metric("test", v)) for v in VIEWS}
        out[label]["restored"].extra["trials"] = len(mine)
    return out


# --------------------------------------------------------------------------- formatting


def fmt(v: float | None, digits: int = 1, sign: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def fmt_summary(s: Summary, digits: int = 1, sign: bool = False) -> str:
    """``72.5 ± 3.1 (n=3)``; ``72.5 (n=1)`` without an interval; ``—`` without values."""
    if s.n == 0 or s.mean is None:
        return "— (n=0)"
    if s.n == 1:
        return f"{fmt(s.mean, digits, sign)} (n=1)"
    half = "n/a" if s.half is None else f"{s.half:.{digits}f}"
    return f"{fmt(s.mean, digits, sign)} ± {half} (n={s.n})"


def fmt_p(p: Paired | None) -> str:
    if p is None or p.n < 2:
        return "— (needs ≥ 2 pairs)"
    if p.p is None:
        return "n/a (identical differences)" if p.diff.std == 0 else "n/a"
    return f"{p.p:.3f}" if p.p >= 0.001 else f"{p.p:.1e}"


def fmt_seeds(values: dict[str, float], digits: int = 1) -> str:
    return ", ".join(f"s{k}: {v:.{digits}f}" for k, v in values.items()) or "—"
