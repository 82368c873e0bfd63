"""Reports: MLflow runs of a sweep -> ``results/<name>/`` tables, figures and exports.

``build(kind, experiment, tracking_uri, out)`` writes ``report.md``, ``report.html``
(self-contained), ``report.json`` and ``trials.parquet``; see :mod:`mdfr.report.build`.
Modules, one job each: ``runs`` (which runs), ``stats`` (intervals, paired tests),
``tables`` (Table I / II rows), ``facts`` (what the report is about), ``figures``,
``search`` (Optuna importances), ``export`` (Parquet), ``doc`` / ``html`` (rendering).
Reads go through :mod:`mdfr.tracking`; nothing here imports MLflow.
"""

from __future__ import annotations

from mdfr.report.build import KINDS, Report, build

__all__ = ["KINDS", "Report", "build"]
