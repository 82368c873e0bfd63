"""Every trial of a sweep as one Parquet table (``trials.parquet``).

One row per trial run. Columns: identity and outcome (``run_id``, ``run_name``, ``status``
(MLflow), ``outcome`` (ok / diverged / failed / pruned / running), ``start_time``,
``end_time`` (UTC timestamps), ``duration_s``), then ``param.<dotted config key>`` (the
flattened TrialConfig as logged; numbers and booleans typed, the rest strings),
``tag.<name>`` for the ``mdfr.*`` tags and the parent run id, and ``metric.<name>`` with
each metric's last logged value (float64). Missing values are nulls.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mdfr.report.portable import portable
from mdfr.report.runs import outcome


def _typed(values: list[str | None]) -> list[Any]:
    """A param column as bool, int, float or str: the narrowest type every value fits."""
    present = [v for v in values if v is not None]
    if present and all(v in ("True", "False") for v in present):
        return [None if v is None else v == "True" for v in values]
    for kind in (int, float):
        try:
            converted = [None if v is None else kind(v) for v in values]
        except ValueError:
            continue
        return converted
    return values


def trial_rows(trials: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Column name -> values, one entry per trial."""
    import datetime as dt

    def ts(ms: int | None) -> dt.datetime | None:
        return None if not ms else dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)

    params = sorted({k for r in trials for k in r["params"]})
    tags = sorted(
        {k for r in trials for k in r["tags"] if k.startswith("mdfr.") or k == "mlflow.parentRunId"}
    )
    metrics = sorted({k for r in trials for k in r["metrics"]})
    cols: dict[str, list[Any]] = {
        "run_id": [r["run_id"] for r in trials],
        "run_name": [r["run_name"] for r in trials],
        "status": [r["status"] for r in trials],
        "outcome": [outcome(r) for r in trials],
        "start_time": [ts(r.get("start_time")) for r in trials],
        "end_time": [ts(r.get("end_time")) for r in trials],
        "duration_s": [
            (r["end_time"] - r["start_time"]) / 1000
            if r.get("end_time") and r.get("start_time")
            else None
            for r in trials
        ],
    }
    # Paths under the working directory become relative, as in report.md (report/portable.py):
    # the table travels with the report.
    for p in params:
        cols[f"param.{p}"] = _typed([_portable(r["params"].get(p)) for r in trials])
    for t in tags:
        cols[f"tag.{t}"] = [_portable(r["tags"].get(t)) for r in trials]
    for m in metrics:
        vals = [r["metrics"].get(m) for r in trials]
        cols[f"metric.{m}"] = [
            float(v) if isinstance(v, int | float) and math.isfinite(v) else None for v in vals
        ]
    return cols


def _portable(value: Any) -> Any:
    return portable(value) if isinstance(value, str) else value


def write_parquet(trials: list[dict[str, Any]], path: Path) -> Path:
    """Write ``trials.parquet``; an empty sweep still gets a file with the fixed columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = trial_rows(trials)
    schema_fixed = {
        "start_time": pa.timestamp("ms", tz="UTC"),
        "end_time": pa.timestamp("ms", tz="UTC"),
        "duration_s": pa.float64(),
    }
    arrays = {}
    for name, values in cols.items():
        if name in schema_fixed:
            arrays[name] = pa.array(values, type=schema_fixed[name])
        elif name.startswith("metric."):
            arrays[name] = pa.array(values, type=pa.float64())
        else:
            empty = all(v is None for v in values)
            arrays[name] = pa.array(values, type=pa.string() if empty else None)
    table = pa.table(arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
