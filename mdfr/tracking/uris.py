"""Tracking URIs: resolving, checking and reaching a store before anything is logged.

A URI is checked when a sweep file or option is read (:func:`check_tracking_uri`: bad input,
exit 2) and the store is reached once before a sweep or command starts
(:func:`check_reachable`: a dead or refusing store fails within seconds, exit 1) instead of
inside every trial. :func:`mdfr.tracking.store.connect` does both and opens the store.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mdfr.environ import scoped_env
from mdfr.errors import ConfigError, MdfrError


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


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
            _client(uri).search_experiments(max_results=1)
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
    quick = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout))),
    }
    with scoped_env(quick):
        yield


_CREDENTIALS = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"


def _check_read(uri: str, timeout: float) -> None:
    """One authenticated read from a server that answered ``/health``; 401/403 -> credentials."""
    from mlflow.exceptions import MlflowException

    try:
        # A healthy server may still be slow to answer a query (its database is busy).
        with _one_quick_request(max(timeout, 15.0)):
            _client(uri).search_experiments(max_results=1)
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
