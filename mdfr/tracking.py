"""MLflow tracking: the only module that imports mlflow.

Conventions (docs/architecture.md, "Tracking"): one parent run per sweep (tag
``mdfr.kind=sweep``), one child run per trial (``mlflow.parentRunId`` + ``mdfr.kind=trial``), shared pretraining stages as children
with ``mdfr.kind=pretrain``. A trial's child run is found again by its deterministic
``mdfr.trial_key`` tag (scoped by the parent run id), so retries and ``mdfr sweep resume``
reuse it instead of opening a second run — the reason we do not use Ray's
``MLflowLoggerCallback``, which opens new runs on restore.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids (no fluent
"active run"), so trials running as threads or processes never share global state. SQLite
stores are written by several trials at once; calls that hit "database is locked" are retried.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from mdfr.errors import ConfigError, MdfrError
from mdfr.names import Kind, Tag

T = TypeVar("T")

_LOCK_RETRY_S = 60.0


# --------------------------------------------------------------------------- URIs


def resolve_uri(uri: str, base: str | Path | None = None) -> str:
    """Absolute form of a tracking URI, safe to hand to Ray (which changes directories).

    ``sqlite:///rel/x.db`` -> ``sqlite:////abs/rel/x.db``; a bare path -> ``file:///abs``;
    server URIs are returned unchanged.
    """
    root = Path(base or os.getcwd())
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :]).expanduser()
        return f"sqlite:///{path if path.is_absolute() else (root / path).resolve()}"
    if uri.startswith("file://"):
        path = Path(uri[len("file://") :]).expanduser()
        return f"file://{path if path.is_absolute() else (root / path).resolve()}"
    if "://" not in uri:
        path = Path(uri).expanduser()
        return f"file://{path if path.is_absolute() else (root / path).resolve()}"
    return uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


DEFAULT_URI = "sqlite:///results/mlflow.db"
# Schemes MLflow 3.17 can track to (SQLAlchemy dialects may add "+driver"). File stores (a
# folder, file://) are not among them: MLflow refuses them at the first call, so they are
# refused when a sweep file or option is read.
URI_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
REACH_TIMEOUT_S = 5.0


def _file_store_allowed() -> bool:
    # MLflow's own opt-out for its deprecated file store; without it MLflow refuses at run time.
    return os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true")


def check_tracking_uri(value: Any, where: str = "tracking_uri") -> str:
    """A validated MLflow tracking URI, from a sweep file or ``--tracking-uri``.

    Args:
        value: what the user gave.
        where: how the user gave it, named in the error (``tracking_uri``, ``--tracking-uri``).

    Raises:
        ConfigError: empty, a file store (unless ``MLFLOW_ALLOW_FILE_STORE=true``), an
            unsupported scheme, a malformed ``sqlite:`` URI or a server URI without a host or
            with a bad port.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(where, f"expected an MLflow tracking URI, got {value!r}")
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme in ("", "file"):
        if _file_store_allowed():
            return value
        raise ConfigError(
            where,
            f"got {value!r}: a file store, which MLflow 3.17 cannot use; use "
            f"sqlite:///<path>.db on one machine (e.g. {DEFAULT_URI}) or a tracking "
            "server, https://HOST[:PORT]",
        )
    if scheme.split("+", 1)[0] not in URI_SCHEMES:
        raise ConfigError(
            where,
            f"unsupported scheme {scheme!r} in {value!r}; allowed: {', '.join(URI_SCHEMES)}",
        )
    if scheme == "sqlite" and (not value.startswith("sqlite:///") or value == "sqlite:///"):
        raise ConfigError(where, f"expected sqlite:///<path to .db>, got {value!r}")
    if scheme in ("http", "https"):
        parsed = urllib.parse.urlsplit(value)
        try:
            parsed.port  # noqa: B018 - raises ValueError on a port that is not 0-65535
        except ValueError:
            raise ConfigError(where, f"bad port in {value!r}") from None
        if not parsed.hostname:
            raise ConfigError(where, f"expected {scheme}://host[:port], got {value!r}")
    return value


def connect(uri: str, where: str = "--tracking-uri", timeout: float = REACH_TIMEOUT_S) -> Store:
    """The store at ``uri`` after checking it: bad URI -> exit 2, unusable store -> exit 1.

    Every command that talks to a tracking store opens it here, so none of them waits
    minutes on a dead server (MLflow's own client retries for about four).
    """
    uri = resolve_uri(check_tracking_uri(uri, where))
    check_reachable(uri, timeout)
    return Store(uri)


def _tcp_probe(uri: str, timeout: float) -> None:
    """Connect to a database server's port: a dead host fails in ``timeout`` seconds, not the
    minutes a driver's connect retries can take."""
    parsed = urllib.parse.urlsplit(uri)
    scheme = parsed.scheme.split("+", 1)[0]
    if scheme not in _DB_PORTS or not parsed.hostname:
        return  # a Unix socket or a databricks profile: nothing to probe
    try:
        port = parsed.port or _DB_PORTS[scheme]
    except ValueError:
        raise MdfrError(f"tracking store {_redact(uri)}: bad port") from None
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as e:
        raise MdfrError(
            f"tracking store {_redact(uri)} is unreachable ({parsed.hostname}:{port}: "
            f"{e.strerror or e}); start the database or fix the URI"
        ) from None


def _db_login(uri: str, timeout: float) -> None:
    """One connection with a bounded timeout. MLflow's own engine retries a refused login ten
    times with exponential back-off (about two minutes) and has no setting to shorten that."""
    import sqlalchemy

    scheme = uri.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("postgresql", "mysql"):
        return
    args = {"connect_timeout": max(1, math.ceil(timeout))}
    try:
        engine = sqlalchemy.create_engine(
            uri, connect_args=args, poolclass=sqlalchemy.pool.NullPool
        )
        with engine.connect():
            pass
    except Exception as e:  # noqa: BLE001 - the driver's errors differ; all mean "unusable"
        raise MdfrError(f"tracking store {_redact(uri)} is unusable: {_first_line(e)}") from None


def _redact(uri: str) -> str:
    """``uri`` without a password (database URIs may carry one)."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.password is None:
        return uri
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


def check_reachable(
    uri: str, timeout: float = REACH_TIMEOUT_S, where: str = "tracking URI"
) -> None:
    """Fail fast (before any trial starts) when the tracking store cannot be used.

    A server must answer ``/health`` (no authentication there) and then one authenticated read
    with this process's credentials, so wrong or missing ``MLFLOW_TRACKING_USERNAME`` and
    ``MLFLOW_TRACKING_PASSWORD`` stop the sweep here instead of failing every trial later.
    A database server must accept a TCP connection within ``timeout``, then one query.

    Raises:
        ConfigError: a URI no MLflow store can have (exit 2).
        MdfrError: naming the URI and what to do.
    """
    check_tracking_uri(uri, where)
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user URI
                if resp.status >= 400:
                    raise MdfrError(f"MLflow tracking server {uri} answered HTTP {resp.status}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise MdfrError(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it "
                "(`mlflow server --host 127.0.0.1 --port 5000`) or use "
                f"--tracking-uri {DEFAULT_URI}"
            ) from None
        _check_read(uri, timeout)
        return
    path = _sqlite_path(uri)
    if path is None and uri.startswith("file://"):
        path = Path(uri[len("file://") :]) / "x"
    if path is not None:
        if path.is_dir():
            raise ConfigError(where, f"{uri}: {path} is a directory, not a SQLite file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MdfrError(
                f"tracking store {uri}: cannot create {path.parent} ({e.strerror or e})"
            ) from None
        if not os.access(path.parent, os.W_OK):
            raise MdfrError(f"tracking store {uri}: {path.parent} is not writable")
        return
    # Database URIs (postgresql://...): the port, one login, then one cheap MLflow call.
    _tcp_probe(uri, timeout)
    _db_login(uri, timeout)
    try:
        with _one_quick_request(timeout):
            Store(uri).client.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure means "unusable"
        raise MdfrError(f"tracking store {_redact(uri)} is unusable: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def _one_quick_request(timeout: float) -> Iterator[None]:
    """MLflow HTTP calls in this block fail at once instead of retrying for minutes.

    MLflow reads both variables on every request; they are put back afterwards so the
    sweep's own calls keep MLflow's retries (a busy server is not a dead one).
    """
    saved = {k: os.environ.get(k) for k in _QUICK_ENV}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(timeout)))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_QUICK_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
_CREDENTIALS = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"


def _check_read(uri: str, timeout: float) -> None:
    """One authenticated read from a server that answered ``/health``; 401/403 -> credentials."""
    from mlflow.exceptions import MlflowException

    try:
        # A healthy server may still be slow to answer a query (its database is busy).
        with _one_quick_request(max(timeout, 15.0)):
            Store(uri).client.search_experiments(max_results=1)
    except MlflowException as e:
        code = e.get_http_status_code()
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        where = "in the driver's environment and, on a cluster, every node's (cluster/README.md)"
        if code == 401 and not user and os.environ.get("MLFLOW_TRACKING_TOKEN"):
            raise MdfrError(
                f"MLflow tracking server {uri} refused MLFLOW_TRACKING_TOKEN (HTTP 401): check "
                f"it, or set {_CREDENTIALS} instead, {where}"
            ) from None
        if code == 401 and not user:
            raise MdfrError(
                f"MLflow tracking server {uri} wants a login (HTTP 401) and "
                f"MLFLOW_TRACKING_USERNAME is not set: set {_CREDENTIALS} to a user of that "
                f"server, {where}"
            ) from None
        if code == 401:
            raise MdfrError(
                f"MLflow tracking server {uri} refused user {user!r} (HTTP 401): check "
                f"{_CREDENTIALS}, {where}"
            ) from None
        if code == 403:
            raise MdfrError(
                f"MLflow tracking server {uri} denied user {user or '(none)'!r} a read "
                f"(HTTP 403): give that user access, or set {_CREDENTIALS} to one that has "
                f"it, {where}"
            ) from None
        raise MdfrError(
            f"MLflow tracking server {uri} answered /health but not a read: {e}"
        ) from None
    except Exception as e:  # noqa: BLE001 - a network error between the two calls, TLS ...
        raise MdfrError(
            f"MLflow tracking server {uri} answered /health but not a read: {e}"
        ) from None


# --------------------------------------------------------------------------- store


def _is_locked(e: BaseException) -> bool:
    text = str(e).lower()
    return "database is locked" in text or "database table is locked" in text


def _retry(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn``, retrying while SQLite reports a lock held by another trial."""
    deadline = time.monotonic() + _LOCK_RETRY_S
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not _is_locked(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)


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
        from mlflow import MlflowClient

        self.uri = resolve_uri(uri)
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
            return exp.experiment_id
        location = None
        db = _sqlite_path(self.uri)
        if db is not None:
            location = (db.parent / "mlartifacts").as_uri()
        try:
            return _retry(self.client.create_experiment, name, artifact_location=location)
        except Exception:
            exp = _retry(self.client.get_experiment_by_name, name)  # created concurrently
            if exp is None:
                raise
            return exp.experiment_id

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
    ) -> tuple[str, bool]:
        """Find the run with ``key_tags`` or create it with ``key_tags | tags``.

        Returns:
            (run id, whether it was created now). With ``reopen`` a run found again is set
            back to RUNNING.
        """
        run = self.find_run(experiment_id, key_tags)
        if run is not None:
            if reopen and run.info.status != "RUNNING":
                _retry(self.client.update_run, run.info.run_id, status="RUNNING")
            return run.info.run_id, False
        all_tags = {**tags, **key_tags}
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
    ) -> tuple[str, bool]:
        """The one child run of ``trial_key`` under ``parent_run_id``; created on first call.

        Only one attempt of a trial runs at a time (Tune retries after a failure, resume after
        the driver is gone), so find-then-create cannot race with itself.

        Returns:
            (run id, whether it was created now).
        """
        return self.ensure_run(
            experiment_id,
            {Tag.MLFLOW_PARENT: parent_run_id, Tag.TRIAL_KEY: trial_key},
            {Tag.KIND: kind, **(tags or {})},
            name=trial_key,
            reopen=reopen,
        )

    def set_status(self, run_id: str, status: str) -> None:
        """Set a run's MLflow status (``RUNNING`` reopens a sweep's parent on resume)."""
        _retry(self.client.update_run, run_id, status=status)

    def finish(self, run_id: str, status: str = "FINISHED", mdfr_status: str | None = None) -> None:
        """Close a run (MLflow status) and record the trial outcome in ``mdfr.status``."""
        if mdfr_status:
            _retry(self.client.set_tag, run_id, Tag.STATUS, mdfr_status)
        _retry(self.client.set_terminated, run_id, status)

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
