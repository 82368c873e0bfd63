"""Assemble a report: MLflow runs -> tables, figures, Parquet -> Markdown + HTML + JSON.

Output folder layout::

    report.md        the report (images linked from figures/)
    report.html      the same, self-contained (images inlined)
    report.json      every number of the tables, with the run ids behind each value
    trials.parquet   one row per trial run (see mdfr.report.export)
    figures/         confusion_*.png (the run's own), spectra.png, importances.png, ...
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdfr import __version__, tracking
from mdfr.config import SETUP_ROWS
from mdfr.errors import UsageError
from mdfr.names import acc_metric
from mdfr.report import claims, export, facts, figures, html, search, tables
from mdfr.report import paper as paper_mod
from mdfr.report import runs as runs_mod
from mdfr.report.doc import Bullets, Document, Gallery, Heading, Image, Para, Table, to_markdown
from mdfr.report.portable import portable
from mdfr.report.runs import SweepRuns, backbone_of, metric, outcome, seed_of, setup_of
from mdfr.report.stats import seed_order
from mdfr.report.tables import SETUP_LABELS, SETUP_WHAT, fmt, fmt_p, fmt_seeds, fmt_summary

KINDS = ("table1", "table2", "sweep")
TITLES = {"table1": "Table I", "table2": "Table II", "sweep": "Sweep report"}


@dataclass
class Report:
    """What :func:`build` wrote."""

    out: Path
    markdown: Path
    html: Path
    json: Path
    parquet: Path
    data: dict[str, Any] = field(default_factory=dict)


def build(
    kind: str,
    experiment: str,
    tracking_uri: str,
    out: str | Path,
    *,
    sweep: str | None = None,
    paper_path: str | Path | None = None,
    spectra_patches: int = 4096,
    log: Any = print,
) -> Report:
    """Write a ``kind`` report (``table1``, ``table2`` or ``sweep``) of one sweep to ``out``.

    Raises:
        UsageError: unknown kind, store, experiment or sweep; missing paper reference file.
    """
    if kind not in KINDS:
        raise UsageError(f"unknown report {kind!r}; expected one of {', '.join(KINDS)}")
    paper = paper_mod.load(paper_path)
    sw = runs_mod.load(experiment, tracking_uri, sweep)
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    log(f"report {kind}: {len(sw.trials)} trial run(s) of sweep {sw.name!r} -> {out}")

    manifests = facts.load_manifests(sw.trials)
    f = facts.facts(sw, manifests)
    doc = Document(f"{TITLES[kind]}: sweep `{sw.name}` ({sw.experiment})")
    data: dict[str, Any] = {
        "kind": kind,
        "experiment": sw.experiment,
        "sweep": sw.name,
        "parent_run_id": (sw.parent or {}).get("run_id"),
        "tracking_uri": sw.tracking_uri,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "selection": f"best {tables.SELECT_METRIC} per (row, seed); test metrics reported",
        "facts": f,
    }
    doc.add(Heading("What this report is"), Bullets(facts.bullets(sw, f)))
    doc.add(
        Para(
            "Numbers are test-split accuracies in percent: mean over seeds ± the half-width "
            "of a 95% Student-t confidence interval (n = seeds; no interval for n = 1). When "
            f"a cell ran several samples, the one with the best `{tables.SELECT_METRIC}` "
            "(validation) stands for its seed."
        )
    )
    if kind == "table2":
        data["table2"] = _table2(doc, sw, paper)
    elif kind == "table1":
        data["table1"] = _table1(doc, sw, paper)
    else:
        data["cells"] = _cells(doc, sw)
    data["representative"] = _representative(doc, sw, manifests, out)
    data["spectra"] = _spectra(doc, manifests, out, spectra_patches)
    data["search"] = _search(doc, sw, out)
    _trial_list(doc, sw)

    parquet = export.write_parquet(sw.trials, out / "trials.parquet")
    doc.add(
        Heading("Files"),
        Bullets(
            [
                f"`trials.parquet`: every trial ({len(sw.trials)} rows) with its config "
                "params, tags, outcome and last metric values.",
                "`report.json`: the numbers of the tables with the run id behind each value.",
            ]
        ),
    )
    return write(doc, data, out, parquet, log)


def write(doc: Document, data: dict[str, Any], out: Path, parquet: Path, log: Any) -> Report:
    """Write ``report.md``, ``report.html`` and ``report.json`` of ``doc`` and ``data``."""
    md = out / "report.md"
    md.write_text(portable(_md_with_footer(doc)))
    page = out / "report.html"
    page.write_text(portable(html.to_html(doc, out)))
    js = out / "report.json"
    js.write_text(portable(json.dumps(data, indent=1, default=_json_default)) + "\n")
    log(f"wrote {md}, {page}, {js}, {parquet}")
    return Report(out, md, page, js, parquet, data)


def _md_with_footer(doc: Document) -> str:
    return to_markdown(doc) + f"\n---\n*Generated by mdfr {__version__} (`mdfr report`).*\n"


def _json_default(o: Any) -> Any:
    if isinstance(o, set):
        return sorted(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------- tables


def _table2(doc: Document, sw: SweepRuns, paper: dict[str, Any]) -> dict[str, Any]:
    result = tables.table2(sw.trials, paper)
    doc.add(Heading("Table II: ablations (accuracy on AI-compressed test patches)"))
    if not result:
        doc.add(Para("No finished trial: nothing to tabulate."))
    data: dict[str, Any] = {}
    for bb, rows in result.items():
        doc.add(_table2_main(bb, rows))
        found = claims.table2_claims(
            {r.key: r.values for r in rows if r.values},
            {r.key: r.extra["compressed"] for r in rows if r.values},
        )
        doc.add(_table2_tests(bb, rows, found))
        doc.add(_claims_table(bb, [c for c in found if c.family == "paper claims"]))
        doc.add(Para(" ".join(claims.plain_words(found, SETUP_LABELS))))
        data[bb] = {
            "rows": [r.to_json() for r in rows],
            "claims": [c.to_json() for c in found],
        }
    return data


def _row_no(key: str) -> str:
    return str(SETUP_ROWS.get(key, "+"))


def _table2_main(bb: str, rows: list[tables.Row]) -> Table:
    return Table(
        [
            "#",
            "setup",
            "what runs",
            "optimiser, lr",
            "phase loss",
            "ours, % (mean ± 95% CI)",
            "balanced, %",
            "per seed",
            "paper, %",
        ],
        [
            [
                _row_no(r.key),
                SETUP_LABELS[r.key],
                SETUP_WHAT[r.key],
                r.extra["optim"],
                r.extra["phase_loss"],
                fmt_summary(r.summary),
                fmt_summary(r.extra["balanced"].summary),
                fmt_seeds(r.values),
                fmt(r.paper),
            ]
            for r in rows
        ],
        caption=f"CMI backbone `{bb}` (the paper's Table II uses dpec_convnext); metric "
        "`test/acc_restored`; balanced = mean per-class recall (`test/bacc_restored`); "
        "'+' rows are ours, not the paper's",
    )


def _table2_tests(bb: str, rows: list[tables.Row], found: list[claims.Claim]) -> Table:
    by = {(c.family, c.a): c for c in found}

    def cells(c: claims.Claim | None) -> list[str]:
        if c is None:
            return ["—", "—", "—"]
        return [fmt_summary(c.test.diff, sign=True), fmt_p(c.test), _fmt_adj(c.p_adj)]

    return Table(
        [
            "#",
            "setup",
            "restored − compressed, pp",
            "p",
            "p (Holm)",
            "Δ vs #1 fine-tune, pp",
            "p",
            "p (Holm)",
        ],
        [
            [_row_no(r.key), SETUP_LABELS[r.key]]
            + cells(by.get(("restoration", r.key)))
            + cells(by.get(("vs fine-tune", r.key)))
            for r in rows
            if r.values
        ],
        caption=f"`{bb}`: paired by seed (mean ± 95% CI over the seed differences); two-sided "
        "paired t-tests (scipy.stats.ttest_rel), Holm-adjusted within each family of columns",
    )


def _claims_table(bb: str, found: list[claims.Claim]) -> Table | Para:
    if not found:
        return Para(
            "The paper's ordering is not tested: the sweep did not run #6 proposed beside any "
            "ablation (#2–#5)."
        )
    return Table(
        ["claim", "pairs", "difference, pp (mean ± 95% CI)", "p", "p (Holm)", "here"],
        [
            [
                f"{SETUP_LABELS[c.a]} > {SETUP_LABELS[c.b]}",
                str(c.test.n),
                fmt_summary(c.test.diff, sign=True),
                fmt_p(c.test),
                _fmt_adj(c.p_adj),
                c.verdict,
            ]
            for c in found
        ],
        caption=f"`{bb}`: the paper reads Table II as proposed above every ablation; 'holds' "
        "needs the claimed sign and Holm-adjusted p < 0.05",
    )


def _fmt_adj(p: float | None) -> str:
    if p is None:
        return "—"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _table1(doc: Document, sw: SweepRuns, paper: dict[str, Any]) -> dict[str, Any]:
    result = tables.table1(sw.trials, paper)
    _, which = tables.table1_runs(sw.trials)
    doc.add(Heading("Table I: CMI accuracy per backbone"))
    doc.add(
        Para(
            f"Rows use {which}. original / compressed: the pretrained CMI network on original "
            "and AI-compressed test patches; restored: MDFRNet in front of it on the "
            "AI-compressed patches."
        )
    )
    rows = []
    for bb, cols in result.items():
        cells = [bb]
        for view in tables.VIEWS:
            cells += [fmt_summary(cols[view].summary), fmt(cols[view].paper)]
        rows.append(cells)
    headers = ["backbone"]
    for view in tables.VIEWS:
        headers += [f"{view}: ours, %", f"{view}: paper, %"]
    doc.add(Table(headers, rows, caption="mean ± 95% CI over seeds (n); paper: VISION + HiFiC"))
    return {bb: {v: r.to_json() for v, r in cols.items()} for bb, cols in result.items()}


def _cells(doc: Document, sw: SweepRuns) -> dict[str, Any]:
    result = tables.sweep_cells(sw.trials, sw.grid_axes)
    doc.add(Heading("Grid cells (seeds pooled)"))
    rows = [
        [label, str(cols["restored"].extra.get("trials", 0))]
        + [fmt_summary(cols[v].summary) for v in tables.VIEWS]
        for label, cols in result.items()
    ]
    doc.add(
        Table(
            ["cell", "finished trials", "original, %", "compressed, %", "restored, %"],
            rows,
            caption="test accuracies, mean ± 95% CI over seeds (n)",
        )
    )
    return {k: {v: r.to_json() for v, r in cols.items()} for k, cols in result.items()}


# --------------------------------------------------------------------------- figures


def representative_run(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run whose confusion matrices stand for the sweep: the proposed setup if any,
    else any MDFRNet trial, else any finished trial; first backbone, lowest seed."""
    ok = tables.usable(trials)
    for pick in (
        lambda r: setup_of(r) == "proposed",
        lambda r: runs_mod.mode_of(r) == "mdfr",
        lambda r: True,
    ):
        cand = [r for r in ok if pick(r)]
        if cand:
            bb = tables.backbone_order(backbone_of(r) for r in cand)[0]
            by_seed = tables.pick_per_seed([r for r in cand if backbone_of(r) == bb])
            return by_seed[min(by_seed, key=seed_order)]
    return None


def _representative(
    doc: Document, sw: SweepRuns, manifests: dict[str, Any], out: Path
) -> dict[str, Any] | None:
    run = representative_run(sw.trials)
    doc.add(Heading("Per-model accuracy and confusion matrices (Fig. 4)"))
    if run is None:
        doc.add(Para("No finished trial to show."))
        return None
    who = (
        f"Run `{run['run_name']}` (`{run['run_id']}`): setup {setup_of(run) or '—'}, backbone "
        f"{backbone_of(run)}, seed {seed_of(run)}."
    )
    # MLflow draws a progress bar per download; noise in a report's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="mdfr-report-") as tmp:
        try:
            local = Path(tracking.download_artifacts(run["run_id"], sw.tracking_uri, "", tmp))
        except Exception as e:  # noqa: BLE001 - missing artifacts: say so, keep the report
            doc.add(Para(f"{who} Its artifacts could not be read ({e})."))
            return {"run_id": run["run_id"], "artifacts": False}
        counts, pngs = figures.confusion_from_artifacts(local, out)
    if not counts:
        doc.add(Para(f"{who} It logged no confusion matrices (`confusion_*.npy`)."))
        return {"run_id": run["run_id"], "run_name": run["run_name"], "artifacts": False}
    manifest = manifests.get(run["params"].get("data.dataset", ""))
    n = next(iter(counts.values())).shape[0]
    classes = list(manifest["classes"]) if manifest else [f"class {i}" for i in range(n)]
    if len(classes) != n:
        classes = [f"class {i}" for i in range(n)]
    per_model = {v: figures.per_model_accuracy(cm) for v, cm in counts.items()}
    views = [v for v in tables.VIEWS if v in per_model]
    doc.add(Para(who + " Accuracy per camera model (recall, %) on the test split:"))
    rows = [
        [c, str(int(counts[views[0]][i].sum()))] + [fmt(per_model[v][i]) for v in views]
        for i, c in enumerate(classes)
    ]
    rows.append(
        ["all", str(int(counts[views[0]].sum()))]
        + [fmt(_pct(metric(run, acc_metric("test", v)))) for v in views]
    )
    doc.add(Table(["camera model", "test patches", *[f"{v}, %" for v in views]], rows))
    doc.add(
        Gallery(
            [
                Image(pngs[v], f"confusion matrix, {v}", f"Fig. 4 ({v} patches)")
                for v in tables.VIEWS
                if v in pngs
            ]
        )
    )
    return {
        "run_id": run["run_id"],
        "run_name": run["run_name"],
        "classes": classes,
        "per_model": per_model,
        "confusion": {v: cm.tolist() for v, cm in counts.items()},
    }


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def _spectra(
    doc: Document, manifests: dict[str, Any], out: Path, limit: int
) -> list[dict[str, Any]]:
    doc.add(Heading("Average amplitude and phase spectra (Fig. 2)"))
    done = []
    for i, (path, manifest) in enumerate(manifests.items()):
        if manifest is None:
            doc.add(Para(f"Dataset `{path}` is gone from disk: Fig. 2 skipped."))
            continue
        name = "spectra.png" if i == 0 else f"spectra_{i}.png"
        png, n = figures.spectra(Path(path), manifest, out / "figures" / name, limit=limit)
        doc.add(
            Image(
                f"figures/{name}",
                "average amplitude and phase spectra",
                f"{n} training patches of `{path}`, original vs AI-compressed "
                f"({manifest['codec']['spec']})",
            )
        )
        done.append({"dataset": path, "png": str(png), "patches": n})
    if not manifests:
        doc.add(Para("The runs record no dataset path (param `data.dataset`): Fig. 2 skipped."))
    return done


def _search(doc: Document, sw: SweepRuns, out: Path) -> dict[str, Any] | None:
    data = search.load(sw)
    if data is None:
        return None
    doc.add(Heading("Search: parameter importances and parallel coordinates"))
    doc.add(
        Para(
            f"Search axes {', '.join(f'`{a}`' for a in sw.search_axes)}; objective "
            f"`{data.objective}` ({data.direction}); {len(data.trials)} completed trial(s) "
            f"from {data.source}."
            + (
                f" {data.skipped} trial(s) that did not sample every search axis are left out."
                if data.skipped
                else ""
            )
        )
    )
    for note in data.notes:
        doc.add(Para(note))
    res: dict[str, Any] = {
        "source": data.source,
        "objective": data.objective,
        "trials": data.trials,
    }
    try:
        imp, evaluator = search.importances(data)
    except ValueError as e:
        doc.add(Para(f"Importances skipped: {e}."))
    else:
        res.update(importances=imp, evaluator=evaluator)
        figures.importances(imp, out / "figures" / "importances.png", data.objective)
        doc.add(
            Table(
                ["parameter", "importance"],
                [[k, f"{v:.3f}"] for k, v in imp.items()],
                caption=f"{evaluator}, on a study rebuilt from the completed trials",
            ),
            Image("figures/importances.png", "parameter importances"),
        )
    if data.trials:
        figures.parallel_coordinates(
            data.trials, data.params, data.logs, data.objective, out / "figures" / "parallel.png"
        )
        doc.add(Image("figures/parallel.png", "parallel coordinates"))
    return res


def _trial_list(doc: Document, sw: SweepRuns) -> None:
    doc.add(Heading("All trials"))
    rows = []
    for r in sw.trials:
        rows.append(
            [
                r["run_name"] or r["run_id"],
                setup_of(r) or "—",
                backbone_of(r),
                seed_of(r) or "—",
                outcome(r),
                fmt(_pct(metric(r, tables.SELECT_METRIC))),
            ]
            + [fmt(_pct(metric(r, acc_metric("test", v)))) for v in tables.VIEWS]
        )
    doc.add(
        Table(
            ["trial", "setup", "backbone", "seed", "outcome", "val/acc, %"]
            + [f"test {v}, %" for v in tables.VIEWS],
            rows,
        )
    )
