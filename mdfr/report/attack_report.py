"""``mdfr report attack``: the table, figure and reading of accuracy against the attack's rate.

Writes ``report.md``, ``report.html`` (self-contained), ``report.json`` and
``figures/attack_rate.png`` (see :mod:`mdfr.report.attack` for what the numbers are). Paths
are written relative to the current directory (or not at all), so a report committed from
one machine names nothing of it.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mdfr.report import attack, export, facts, figures
from mdfr.report import runs as runs_mod
from mdfr.report.build import Report, _trial_list, write
from mdfr.report.doc import Bullets, Document, Heading, Image, Para, Table
from mdfr.report.portable import portable
from mdfr.report.tables import fmt, fmt_p, fmt_summary

FIGURE = "figures/attack_rate.png"


def build_attack(
    experiment: str,
    tracking_uri: str,
    out: str | Path,
    *,
    sweep: str | None = None,
    log: Any = print,
) -> Report:
    """Write the attack-rate report of one sweep to ``out``.

    Raises:
        UsageError: unknown store, experiment or sweep.
    """
    sw = runs_mod.load(experiment, tracking_uri, sweep)
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    log(f"report attack: {len(sw.trials)} trial run(s) of sweep {sw.name!r} -> {out}")
    pts = attack.points(sw.trials)
    curves = attack.curves_of(pts)
    fams = attack.families(pts)
    halves = {
        fam: {c: attack.half_point(mine, c) for c in curves if c != attack.ORIGINAL}
        for fam, mine in fams.items()
    }
    f = facts.facts(sw, facts.load_manifests(sw.trials))
    doc = Document(f"Accuracy against the attack's rate: sweep `{sw.name}` ({sw.experiment})")
    doc.add(Heading("What this report is"), Bullets(_bullets(sw, f, pts)))
    doc.add(Heading("Reading"), *[Para(t) for t in attack.reading(pts)] or [Para("—")])
    doc.add(Heading("Accuracy per attack"), _table(pts, curves))
    doc.add(Heading("Balanced accuracy per attack"), _table(pts, curves, balanced=True))
    doc.add(Heading("What the defences buy, per attack"), _gains_table(pts))
    doc.add(Heading("Where camera identification breaks"), _half_table(halves, curves))
    marks = [
        {**h, "curve": c}
        for fam, by in halves.items()
        for c, h in by.items()
        if h["status"] == "crosses" and len(fams[fam]) > 1
    ]
    if pts:
        labels = {c: attack.curve_label(c) for c in curves}
        figures.attack_rate(pts, curves, labels, marks, out / FIGURE)
        doc.add(
            Image(
                FIGURE,
                "accuracy against bpp and PSNR",
                "test accuracy (mean ± 95% CI over seeds) against the attack's measured rate "
                "and distortion; ★ where a curve first falls below half of the original "
                "accuracy (dotted), from the highest rate down",
            )
        )
    _trial_list(doc, sw)
    data = {
        "kind": "attack",
        "experiment": sw.experiment,
        "sweep": sw.name,
        "parent_run_id": (sw.parent or {}).get("run_id"),
        "tracking_uri": portable(sw.tracking_uri),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "curves": {c: attack.curve_label(c) for c in curves},
        "points": [p.to_json() for p in pts],
        "half_points": halves,
        "gains": {
            p.attack: {k: None if g is None else asdict(g) for k, g in attack.gains(p).items()}
            for p in pts
        },
        "reading": attack.reading(pts),
        "outcomes": f["outcomes"],
    }
    parquet = export.write_parquet(sw.trials, out / "trials.parquet")
    return write(doc, data, out, parquet, log)


def _bullets(sw: runs_mod.SweepRuns, f: dict[str, Any], pts: list[attack.AttackPoint]) -> list[str]:
    out = []
    if sw.parent is not None:
        out.append(
            f"Sweep `{sw.name}` (parent run `{sw.parent['run_id']}`, MLflow status "
            f"{sw.parent['status']}) in experiment `{sw.experiment}`."
        )
    data = [d for d in f["datasets"] if d["available"]]
    if data:
        d = data[0]
        kind = "**synthetic** camera dataset, not VISION" if d["kind"] == "synthetic" else d["kind"]
        split = ", ".join(f"{k} {v}" for k, v in d["patches"].items())
        out.append(
            f"Images: {kind}; {d['classes']} camera models, {d['images']} images, "
            f"{d['patch']}×{d['patch']} patches ({split}), the same patches under each of "
            f"{len(pts)} attack(s) ({len(f['datasets'])} prepared datasets)."
        )
    fams = attack.families(pts)
    out.append(
        "Attacks: "
        + "; ".join(
            f"{fam}: {', '.join(f'`{p.attack}`' for p in mine)}" for fam, mine in fams.items()
        )
        + ". Rates and PSNR are means over each dataset's images, from the real bitstreams."
    )
    pre = f"{facts._join(f['pretrain_epochs'])} epoch(s)" if f["pretrain_epochs"] else "—"
    out.append(
        f"Scale: backbone {facts._join(f['backbones'])} pretrained once on original patches "
        f"({pre}, {f['pretrain_runs']} pretraining run(s) for all attacks); "
        f"{facts._join(f['epochs'])} epoch(s) per trial; MDFRNet width "
        f"{facts._join(f['width'])}, depth {facts._join(f['depth'])}; patches per epoch "
        f"{facts._limit(f['limit_train'])}; device {facts._join(f['devices'])}."
    )
    o = f["outcomes"]
    out.append(
        f"Runs: {f['trials']} trial(s), {o.get('ok', 0)} finished; only finished trials count."
    )
    if f["git_commits"]:
        out.append(f"Code: git commit {facts._join([c[:12] for c in f['git_commits']])}.")
    if not any(p.attack.startswith("external:") for p in pts):
        out.append(
            "**Not the paper's setting**: the attacks are not HiFiC, and the scale is a CPU "
            "one; what carries over is the shape of the curves, not their numbers."
        )
    return out


def _table(
    pts: list[attack.AttackPoint], curves: list[str], *, balanced: bool = False
) -> Table | Para:
    if not pts:
        return Para("No finished trial with an attack tag: nothing to tabulate.")
    what = "balanced test accuracy (mean per-class recall)" if balanced else "test accuracy"
    return Table(
        ["attack", "family", "bpp", "PSNR, dB", *[f"{attack.curve_label(c)}, %" for c in curves]],
        [
            [f"`{p.attack}`", p.family, fmt(p.bpp, 3), fmt(p.psnr, 2)]
            + [
                fmt_summary(rows[c].summary) if c in rows else "—"
                for rows in [p.balanced if balanced else p.curves]
                for c in curves
            ]
            for p in pts
        ],
        caption=f"{what}, mean ± 95% CI over seeds (n); original and compressed: the "
        "pretrained CMI net without a defence; the others: each setup's defence on the "
        "compressed patches",
    )


def _gains_table(pts: list[attack.AttackPoint]) -> Table | Para:
    rows = []
    for p in pts:
        cells = [f"`{p.attack}`", fmt(p.bpp, 3)]
        for g in attack.gains(p).values():
            cells += ["—", "—"] if g is None else [fmt_summary(g.diff, sign=True), fmt_p(g)]
        rows.append(cells)
    if not rows:
        return Para("No finished trial with an attack tag: nothing to compare.")
    heads = [h for label, _, _ in attack.GAINS for h in (f"{label}, points", "p")]
    return Table(
        ["attack", "bpp", *heads],
        rows,
        caption="test accuracy differences in percentage points, mean ± 95% CI over seeds, "
        "paired by seed; p: two-sided paired t-test, uncorrected for the number of attacks "
        "(a p above 0.05, or a CI that spans 0, is no evidence of a difference)",
    )


def _half_table(halves: dict[str, dict[str, dict[str, Any]]], curves: list[str]) -> Table | Para:
    rows = [
        [fam, attack.curve_label(c), fmt(h.get("threshold")), attack.describe(h)]
        for fam, by in halves.items()
        for c in curves
        if (h := by.get(c)) is not None and h["status"] != "no_data"
    ]
    if not rows:
        return Para("No curve to read.")
    return Table(
        ["codec family", "curve", "half of original, %", "first below it at"],
        rows,
        caption="from the highest rate down; the rate is interpolated linearly between the "
        "two attacks around the crossing",
    )
