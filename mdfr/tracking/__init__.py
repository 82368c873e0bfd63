"""MLflow tracking: the only package that imports mlflow (its modules, nothing else in mdfr).

- :mod:`~mdfr.tracking.uris`: tracking URIs, checked when read and reached before use.
- :mod:`~mdfr.tracking.store`: :class:`Store` (experiments, parent/child runs found again by
  key tags, MLflow's source tags), the engine's :class:`Tracker`, reads for reports.
- :mod:`~mdfr.tracking.datasets`: a prepared patch dataset as MLflow dataset inputs.
- :mod:`~mdfr.tracking.models`: trained networks as MLflow 3 logged models, the registry
  champion, and loading a model back by URI for ``mdfr identify``.
- :mod:`~mdfr.tracking.sweep_run`: what a sweep's parent run holds besides params: the
  one-row-per-trial summary table and the report files.
- :mod:`~mdfr.tracking.system`: MLflow's system-metrics sampler bound to one run.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids (no fluent "active
run"), so trials running as threads or processes never share global state.
"""

from __future__ import annotations

from mdfr.tracking.store import (
    BATCH_LIMITS,
    EXPERIMENT_KIND,
    Store,
    Tracker,
    connect,
    download_artifacts,
    fetch_sweep_runs,
    source_tags,
)
from mdfr.tracking.uris import DEFAULT_URI, check_reachable, check_tracking_uri, resolve_uri

__all__ = [
    "BATCH_LIMITS",
    "DEFAULT_URI",
    "EXPERIMENT_KIND",
    "Store",
    "Tracker",
    "check_reachable",
    "check_tracking_uri",
    "connect",
    "download_artifacts",
    "fetch_sweep_runs",
    "resolve_uri",
    "source_tags",
]
