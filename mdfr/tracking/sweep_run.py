"""What a sweep's parent run holds besides its params: the trial table and the report.

- ``trials_table.json``: one row per trial (setup, seed, outcome, the accuracies, the sampled
  values, run id, ...), logged with ``MlflowClient.log_table``, so the sweep's page in the UI
  shows it as a table (Artifacts tab) and ``mlflow.load_table`` reads it back. MLflow appends
  to a table logged again; a resumed sweep therefore appends only rows it has not logged yet
  (a trial whose outcome changed, e.g. retried with ``--retry-errored``, gets a new row; the
  newest row of a trial is the current one).
- ``report/``: ``report.html``, ``report.md``, ``report.json`` and ``figures/`` of
  ``mdfr report``, replaced when the report is written again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mdfr.tracking.store import Store, _retry, process_uri

SUMMARY_TABLE = "trials_table.json"
REPORT_DIR = "report"


def log_summary_table(store: Store, run_id: str, rows: list[dict[str, Any]]) -> int:
    """Append the rows (each with ``trial_key`` and ``status``) not in the table yet.

    Returns:
        How many rows were appended.
    """
    if not rows:
        return 0
    import pandas as pd

    seen: set[tuple[str, str]] = set()
    listed = [f.path for f in _retry(store.client.list_artifacts, run_id)]
    if SUMMARY_TABLE in listed:
        run = _retry(store.client.get_run, run_id)
        with process_uri(store.uri):  # load_table searches runs through the process-wide URI
            old = _retry(
                store.client.load_table, run.info.experiment_id, SUMMARY_TABLE, run_ids=[run_id]
            )
        seen = set(zip(old["trial_key"].astype(str), old["status"].astype(str), strict=True))
    new = [r for r in rows if (str(r["trial_key"]), str(r["status"])) not in seen]
    if new:
        _retry(store.client.log_table, run_id, pd.DataFrame(new), SUMMARY_TABLE)
    return len(new)


def log_report(store: Store, run_id: str, files: list[str | Path]) -> list[str]:
    """Log report files (and folders, e.g. ``figures/``) under ``report/`` of ``run_id``.

    Returns:
        The artifact paths written.
    """
    out = []
    for f in files:
        p = Path(f)
        if p.is_dir():
            _retry(store.client.log_artifacts, run_id, str(p), f"{REPORT_DIR}/{p.name}")
        else:
            _retry(store.client.log_artifact, run_id, str(p), REPORT_DIR)
        out.append(f"{REPORT_DIR}/{p.name}")
    return out
