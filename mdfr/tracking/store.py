"""MLflow tracking store: URIs, experiments, parent and child runs, the engine's tracker, reads.

Conventions (docs/architecture.md, "Tracking"): one parent run per sweep (tag
``mdfr.kind=sweep``), one child run per trial (``mlflow.parentRunId`` + ``mdfr.kind=trial``), shared pretraining stages as children
with ``mdfr.kind=pretrain``. A trial's child run is found again by its deterministic
``mdfr.trial_key`` tag (scoped by the parent run id), so retries and ``mdfr sweep resume``
reuse it instead of opening a second run — the reason we do not use Ray's
``MLflowLoggerCallback``, which opens new runs on restore.

Every run carries MLflow's standard source tags (``mlflow.source.name``/``type``,
``mlflow.user``, see :func:`source_tags`; the commit comes with :mod:`mdfr.provenance`), and
every experiment is tagged as a model-training experiment (:data:`EXPERIMENT_KIND`).

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids (no fluent
"active run"), so trials running as threads or processes never share global state. SQLite
stores are written by several trials at once; calls that hit "database is locked" are retried.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from mdfr import probe, provenance
from mdfr.names import Kind, Tag
from mdfr.tracking.datasets import dataset_inputs
from mdfr.tracking.uris import (
    REACH_TIMEOUT_S,
    _sqlite_path,
    check_reachable,
    check_tracking_uri,
    resolve_uri,
)

T = TypeVar("T")

_LOCK_RETRY_S = 60.0

# MLflow's experiment-type tag. The 3.x UI reads it as "Machine learning" (runs, charts, compare
# pages) rather than "GenAI apps & agents" (traces, sessions). MLflow 3.17's UI follows a
# global sidebar switch instead, which a URL chooses with ``?workflowType=machine_learning``
# (see ``mdfr.commands.ui.ui_links``); the tag still documents the kind, and the UIs that read
# it (3.2-3.16, Databricks) open the runs view.
EXPERIMENT_KIND = {Tag.MLFLOW_EXPERIMENT_KIND: "custom_model_development"}


# --------------------------------------------------------------------------- store


def connect(uri: str, where: str = "--tracking-uri", timeout: float = REACH_TIMEOUT_S) -> Store:
    """The store at ``uri`` after checking it: bad URI -> exit 2, unusable store -> exit 1.

    Every command that talks to a tracking store opens it here, so none of them waits
    minutes on a dead server (MLflow's own client retries for about four).
    """
    uri = resolve_uri(check_tracking_uri(uri, where))
    check_reachable(uri, timeout)
    return Store(uri)


_PROCESS_URI_LOCK = threading.Lock()


@contextlib.contextmanager
def process_uri(uri: str) -> Iterator[None]:
    """Make ``uri`` MLflow's process-wide tracking URI for the block, then put it back.

    For the few MLflow calls that resolve ``models:/<model id>`` through the process-wide URI
    whatever client they are called on (MLflow 3.17's SQL model registry says so in a TODO;
    ``mlflow.artifacts.download_artifacts`` of a logged model and ``load_table`` do the same).
    MLflow mirrors the URI in ``MLFLOW_TRACKING_URI``, so that variable is what is restored.
    """
    import mlflow

    with _PROCESS_URI_LOCK:
        saved = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved)


# Errors that say "busy, try again", not "wrong": SQLite's lock held by another trial, a
# tracking server whose database connection pool is exhausted (it answers HTTP 400, which
# MLflow's client does not retry; seen with 64 concurrent trials in mdfr bench scale), and a
# KeyError MLflow raises when its telemetry changes os.environ while another thread's request
# reads it (MLflow 3.17).
_TRANSIENT = (
    "database is locked",
    "database table is locked",
    "queuepool limit",
    "too many clients already",
    "failed with exception '_mlflow_telemetry_session_id'",
)


def _is_transient(e: BaseException) -> bool:
    text = str(e).lower()
    return any(t in text for t in _TRANSIENT)


def _retry(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn``, retrying (for up to a minute, with backoff) while the store is busy.

    Every MLflow call of mdfr goes through here: with probing on (:mod:`mdfr.probe`) each is
    timed as ``mlflow.<method>`` (each attempt), and the waits between attempts as
    ``mlflow.lock_wait``.
    """
    deadline = time.monotonic() + _LOCK_RETRY_S
    delay = 0.05
    name = f"mlflow.{getattr(fn, '__name__', 'call')}"
    while True:
        try:
            with probe.span(name):
                return fn(*args, **kwargs)
        except Exception as e:
            if not _is_transient(e) or time.monotonic() > deadline:
                raise
            wait = delay * (1 + random.random())
            probe.record("mlflow.lock_wait", wait)
            time.sleep(wait)
            delay = min(delay * 2, 2.0)


def source_tags(name: str | None = None, user: str | None = None) -> dict[str, str]:
    """MLflow's standard source tags, which fill the UI's Source and User columns.

    A run made with them also gets this process's commit as ``mlflow.source.git.commit``
    (when known); a sweep's runs carry the commit of the submitting checkout instead, with the
    rest of :meth:`mdfr.provenance.Provenance.tags`.

    Args:
        name: what ran, normally the sweep file or trial config (absolute path; the UI shows
            its file name); ``mdfr`` when nothing better is known.
        user: who ran it (default: this process's user). A sweep passes the driver's values
            to its trials so runs on other nodes name the same source and user.
    """
    if user is None:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (containers with arbitrary uids)
            user = "unknown"
    return {
        Tag.MLFLOW_SOURCE_NAME: name or "mdfr",
        Tag.MLFLOW_SOURCE_TYPE: "LOCAL",
        Tag.MLFLOW_USER: user,
    }


@functools.cache
def _commit_tag() -> dict[str, str]:
    """``mlflow.source.git.commit`` of this process's code, asked once (git may be slow)."""
    commit = provenance.current().commit
    return {} if commit == provenance.UNKNOWN else {Tag.MLFLOW_GIT_COMMIT: commit}


def _q(value: str) -> str:
    """A value for an MLflow filter string; our keys never need quoting, refuse ones that do."""
    if "'" in value or "\\" in value:
        raise ValueError(f"tracking key {value!r} must not contain quotes or backslashes")
    return f"'{value}'"


class Store:
    """An MLflow tracking store addressed by URI, with lock-tolerant helpers.

    Args:
        uri: a tracking URI; relative SQLite paths are resolved against the current directory.
    """

    def __init__(self, uri: str):
        # MLflow's telemetry (usage reports to its vendor) sets and unsets a variable in
        # os.environ from its own threads, which breaks concurrent requests of a trial's other
        # threads (a KeyError, see _TRANSIENT); sweeps run offline on clusters anyway. A user's
        # own MLFLOW_DISABLE_TELEMETRY wins.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        # MLflow draws a progress bar per artifact download: noise in a sweep's or CLI's output.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.uri = resolve_uri(uri)
        with probe.span("mlflow.client_init"):
            self.client = MlflowClient(tracking_uri=self.uri)

    # ----- experiments and runs

    def ensure_experiment(self, name: str) -> str:
        """The id of experiment ``name``, created on first use.

        With a SQLite store the artifacts go next to the database (``mlartifacts/``) by
        absolute path, not to MLflow's default ``./mlruns`` relative to whatever directory a
        trial happens to run in.
        """
        exp = _retry(self.client.get_experiment_by_name, name)
        if exp is not None:
            self._mark_kind(exp)
            return exp.experiment_id
        location = None
        db = _sqlite_path(self.uri)
        if db is not None:
            location = (db.parent / "mlartifacts").as_uri()
        try:
            return _retry(
                self.client.create_experiment,
                name,
                artifact_location=location,
                tags=EXPERIMENT_KIND,
            )
        except Exception:
            exp = _retry(self.client.get_experiment_by_name, name)  # created concurrently
            if exp is None:
                raise
            return exp.experiment_id

    def _mark_kind(self, exp: Any) -> None:
        """Tag an experiment made before mdfr tagged them (or by hand) as model training."""
        for key, value in EXPERIMENT_KIND.items():
            if exp.tags.get(key) != value:
                _retry(self.client.set_experiment_tag, exp.experiment_id, key, value)

    def experiments(self) -> list[tuple[str, str]]:
        """(id, name) of the store's active experiments but MLflow's empty "Default"."""
        found = _retry(self.client.search_experiments, max_results=1000)
        return [
            (e.experiment_id, e.name)
            for e in found
            if not (e.experiment_id == "0" and e.name == "Default")
        ]

    def find_run(self, experiment_id: str, tags: dict[str, str]) -> Any | None:
        """The first active run carrying all ``tags`` (oldest first), or None."""
        filt = " and ".join(f"tags.`{k}` = {_q(v)}" for k, v in tags.items())
        runs = _retry(
            self.client.search_runs,
            [experiment_id],
            filter_string=filt,
            max_results=10,
            order_by=["attributes.start_time ASC"],
        )
        return runs[0] if runs else None

    def ensure_run(
        self,
        experiment_id: str,
        key_tags: dict[str, str],
        tags: dict[str, str],
        name: str,
        reopen: bool = True,
        new: bool = False,
    ) -> tuple[str, bool]:
        """Find the run with ``key_tags`` or create it with ``key_tags | tags``.

        Returns:
            (run id, whether it was created now). With ``reopen`` a run found again is set
            back to RUNNING. With ``new`` (the caller knows no earlier attempt got this far)
            the run is created without looking for it first: the search is the costliest
            request a trial makes of a tracking server (``mdfr bench scale``).
        """
        run = None if new else self.find_run(experiment_id, key_tags)
        if run is not None:
            if reopen and run.info.status != "RUNNING":
                _retry(self.client.update_run, run.info.run_id, status="RUNNING")
            return run.info.run_id, False
        all_tags = {**source_tags(), **_commit_tag(), **tags, **key_tags}
        run = _retry(self.client.create_run, experiment_id, tags=all_tags, run_name=name)
        return run.info.run_id, True

    def parent_run(
        self, experiment: str, sweep: str, sweep_dir: str, tags: dict[str, str] | None = None
    ) -> tuple[str, str]:
        """(experiment id, parent run id) of the sweep stored at ``sweep_dir``; idempotent.

        The run is named after the sweep folder (``<name>-<timestamp>``), so reruns of one
        sweep file stay apart in the MLflow UI.
        """
        exp_id = self.ensure_experiment(experiment)
        sweep_id = hashlib.sha1(str(sweep_dir).encode()).hexdigest()[:16]
        run_id, _ = self.ensure_run(
            exp_id,
            {Tag.KIND: Kind.SWEEP, Tag.SWEEP_ID: sweep_id},
            {Tag.SWEEP: sweep, Tag.SWEEP_DIR: str(sweep_dir), **(tags or {})},
            name=Path(sweep_dir).name,
        )
        return exp_id, run_id

    def child_run(
        self,
        experiment_id: str,
        parent_run_id: str,
        trial_key: str,
        tags: dict[str, str] | None = None,
        kind: str = Kind.TRIAL,
        reopen: bool = False,
        new: bool = False,
    ) -> tuple[str, bool]:
        """The one child run of ``trial_key`` under ``parent_run_id``; created on first call.

        Only one attempt of a trial runs at a time (Tune retries after a failure, resume after
        the driver is gone), so find-then-create cannot race with itself. ``new``: the
        trial's first attempt, which creates the run without searching (see ``ensure_run``).

        Returns:
            (run id, whether it was created now).
        """
        return self.ensure_run(
            experiment_id,
            {Tag.MLFLOW_PARENT: parent_run_id, Tag.TRIAL_KEY: trial_key},
            {Tag.KIND: kind, **(tags or {})},
            name=trial_key,
            reopen=reopen,
            new=new,
        )

    def set_status(self, run_id: str, status: str) -> None:
        """Set a run's MLflow status (``RUNNING`` reopens a sweep's parent on resume)."""
        _retry(self.client.update_run, run_id, status=status)

    def finish(self, run_id: str, status: str = "FINISHED", mdfr_status: str | None = None) -> None:
        """Close a run (MLflow status) and record the trial outcome in ``mdfr.status``."""
        if mdfr_status:
            _retry(self.client.set_tag, run_id, Tag.STATUS, mdfr_status)
        _retry(self.client.set_terminated, run_id, status)

    def finish_if_open(self, run_id: str, mdfr_status: str) -> None:
        """Close a run left RUNNING (its process died after the work, before the close)."""
        if _retry(self.client.get_run, run_id).info.status == "RUNNING":
            self.finish(run_id, "FINISHED", mdfr_status)

    def tracker(self, run_id: str) -> Tracker:
        return Tracker(self, run_id)


# --------------------------------------------------------------------------- the engine's tracker


def _param_value(value: Any) -> str:
    return "" if value is None else str(value)


class Tracker:
    """The engine's tracker protocol bound to one run (``mdfr.engine.Tracker``).

    Args:
        store: where the run lives.
        run_id: the run every call writes to.
    """

    def __init__(self, store: Store, run_id: str):
        self.store = store
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's per-batch parameter limit
            _retry(self.store.client.log_batch, self.run_id, params=items[i : i + 100])

    def log_dataset(self, root: str, manifest: dict[str, Any]) -> None:
        """The prepared dataset at ``root`` as the run's inputs (:mod:`mdfr.tracking.datasets`)."""
        _retry(self.store.client.log_inputs, self.run_id, datasets=dataset_inputs(root, manifest))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(str(k), float(v), now, int(step))
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        for i in range(0, len(items), 1000):
            _retry(self.store.client.log_batch, self.run_id, metrics=items[i : i + 1000])

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        _retry(self.store.client.log_artifact, self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        if items:
            _retry(self.store.client.log_batch, self.run_id, tags=items)

    def log_batch(
        self,
        metrics: list[tuple[str, float, int]],
        params: dict[str, Any],
        tags: dict[str, str],
    ) -> None:
        """Metrics ``(key, value, step)``, params and tags in one MLflow call.

        The caller keeps within MLflow's limits for one call (:data:`BATCH_LIMITS`).
        """
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        _retry(
            self.store.client.log_batch,
            self.run_id,
            metrics=[
                Metric(str(k), float(v), now, int(step))
                for k, v, step in metrics
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            ],
            params=[Param(str(k), _param_value(v)) for k, v in params.items()],
            tags=[RunTag(str(k), str(v)) for k, v in tags.items()],
        )


# What one MLflow log_batch call may carry (MLflow's REST limits).
BATCH_LIMITS = {"metrics": 1000, "params": 100, "tags": 100, "total": 1000}


# --------------------------------------------------------------------------- reading


def _run_dict(store: Store, run: Any, histories: bool) -> dict[str, Any]:
    d: dict[str, Any] = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "parent_run_id": run.data.tags.get(Tag.MLFLOW_PARENT),
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
    }
    if histories:
        d["histories"] = {
            key: [
                (m.step, m.value)
                for m in _retry(store.client.get_metric_history, run.info.run_id, key)
            ]
            for key in run.data.metrics
        }
    return d


def fetch_sweep_runs(
    experiment: str,
    tracking_uri: str,
    *,
    sweep: str | None = None,
    parent_run_id: str | None = None,
    kind: str | None = Kind.TRIAL,
    histories: bool = False,
) -> list[dict[str, Any]]:
    """Runs of an experiment as plain dicts, for reports.

    Args:
        experiment: MLflow experiment name.
        tracking_uri: the store.
        sweep: only runs tagged ``mdfr.sweep`` = this name.
        parent_run_id: only the children of this sweep run.
        kind: ``trial`` (default), ``pretrain``, ``sweep`` or None for all.
        histories: also fetch each metric's per-step history (one call per metric).

    Returns:
        dicts with run_id, run_name, status, start/end time, parent_run_id, params, metrics,
        tags and, when asked, histories ``{metric: [(step, value), ...]}``; oldest first.
        An unknown experiment gives an empty list.
    """
    store = Store(tracking_uri)
    exp = _retry(store.client.get_experiment_by_name, experiment)
    if exp is None:
        return []
    clauses = []
    if kind:
        clauses.append(f"tags.`{Tag.KIND}` = {_q(kind)}")
    if sweep:
        clauses.append(f"tags.`{Tag.SWEEP}` = {_q(sweep)}")
    if parent_run_id:
        clauses.append(f"tags.`{Tag.MLFLOW_PARENT}` = {_q(parent_run_id)}")
    out: list[dict[str, Any]] = []
    token = None
    while True:
        page = _retry(
            store.client.search_runs,
            [exp.experiment_id],
            filter_string=" and ".join(clauses),
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        out.extend(_run_dict(store, r, histories) for r in page)
        token = page.token
        if not token:
            return out


def download_artifacts(
    run_id: str, tracking_uri: str, path: str = "", dst: str | Path | None = None
) -> str:
    """Download a run's artifact file or folder (all artifacts when ``path`` is empty).

    Returns:
        The local path of what was downloaded.
    """
    store = Store(tracking_uri)
    if dst is not None:
        Path(dst).mkdir(parents=True, exist_ok=True)
    return _retry(
        store.client.download_artifacts, run_id, path, str(dst) if dst is not None else None
    )
