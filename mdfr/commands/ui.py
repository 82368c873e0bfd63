"""``mdfr ui``: the MLflow UI on the project's tracking store, on loopback by default.

Runs ``python -m mlflow server`` as a child process (this module imports no MLflow: it only
builds the command line), waits until it answers ``/health``, prints the URL and stays in the
foreground; Ctrl-C (or SIGTERM) stops the server and every worker it started.

With an ``http(s)://`` tracking URI there is nothing to start: that server already serves the
UI, so its URL is printed.

MLflow 3.17's UI opens an experiment in its GenAI view (traces, sessions) unless the sidebar's
"GenAI / Model training" switch (remembered per browser) says otherwise or the link carries
``?workflowType=machine_learning``. So besides the server's URL one link per experiment is
printed that lands on the experiment's runs (Dataset, Source and Models columns, charts,
compare): what a sweep's user wants to see.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mdfr.commands import add_tracking_uri_option
from mdfr.commands.options import PORT, int_in
from mdfr.errors import MdfrError, UsageError

READY_TIMEOUT_S = 120.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ui",
        help="open the MLflow UI on the project's tracking store",
        description="Start the MLflow UI (mlflow server) on the project's store and print its "
        "URL; Ctrl-C stops it.",
    )
    add_tracking_uri_option(p, "MLflow store")
    p.add_argument("--port", type=PORT, default=5000, help="port to listen on, 1-65535 (5000)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default 127.0.0.1: this machine only)",
    )
    p.add_argument(
        "--workers", type=int_in(1, 64), default=1, help="server worker processes, 1-64 (1)"
    )
    p.set_defaults(func=run)


def server_command(uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line for a local store ``uri`` (already absolute).

    New experiments created from the UI put their artifacts next to the database
    (``mlartifacts/``), where :meth:`mdfr.tracking.Store.ensure_experiment` puts them too.
    """
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    if uri.startswith("sqlite:///"):
        art = Path(uri[len("sqlite:///") :]).parent / "mlartifacts"
        cmd += ["--default-artifact-root", art.as_uri()]
    cmd += ["--host", host, "--port", str(port), "--workers", str(workers)]
    return cmd


ML_VIEW = "workflowType=machine_learning"


def ui_links(base: str, experiments: list[tuple[str, str]]) -> list[str]:
    """``name: URL`` lines opening each experiment's runs in the model-training view."""
    return [f"  {name}: {base}/#/experiments/{eid}/runs?{ML_VIEW}" for eid, name in experiments]


def _print_links(uri: str, base: str) -> None:
    """One model-training-view link per experiment of the store (a failure only loses them)."""
    try:
        # Lazy (CLI boundary): MLflow only once the server is up and the links are printed.
        from mdfr.tracking import Store

        experiments = Store(uri).experiments()
    except Exception as e:  # noqa: BLE001 - the UI runs anyway
        print(f"(could not list the experiments: {e})", flush=True)
        return
    if experiments:
        print("experiments (runs view):", *ui_links(base, experiments), sep="\n", flush=True)
    print(
        "in the UI, the sidebar switch 'Model training' (not 'GenAI') shows runs, charts and "
        "compare pages",
        flush=True,
    )


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(
                f"cannot listen on {host}:{port} ({e.strerror or e}); pass --port with a free port"
            ) from None


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:  # noqa: S310 - loopback
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server's whole process group (uvicorn workers included)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.tracking import check_tracking_uri, resolve_uri

    uri = resolve_uri(check_tracking_uri(args.tracking_uri, "--tracking-uri"))
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is a tracking server: it serves the MLflow UI itself; open {uri}")
        _print_links(uri, uri.rstrip("/"))
        return 0
    if uri.startswith("sqlite:///") and Path(uri[len("sqlite:///") :]).is_dir():
        raise UsageError(f"--tracking-uri {uri}: a directory, not a SQLite file")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise UsageError(
            f"no MLflow store at {uri[len('sqlite:///') :]}: run a sweep first "
            "(`mdfr sweep run sweeps/smoke.yaml`) or pass --tracking-uri"
        )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: binding {args.host} exposes the UI (and its REST API) beyond this machine",
            file=sys.stderr,
        )
    _check_port(args.host, args.port)
    url = _url(args.host, args.port)
    print(f"starting the MLflow UI on {uri} ...", flush=True)
    # Own session: Ctrl-C reaches only us, and we stop the server's whole group in order.
    env = dict(os.environ)
    # MLflow's GenAI job runner (extra processes, a periodic scheduler) serves nothing a sweep
    # logs; without it the UI starts and stops faster. Users can still turn it on.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    proc = subprocess.Popen(
        server_command(uri, args.host, args.port, args.workers), start_new_session=True, env=env
    )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(url):
            if proc.poll() is not None:
                raise MdfrError(f"the MLflow server exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise MdfrError(f"the MLflow server did not answer on {url} within 120 s")
            time.sleep(0.5)
        print(f"MLflow UI: {url}  (Ctrl-C stops it)", flush=True)
        _print_links(uri, url)
        code = proc.wait()
        if code != 0:
            raise MdfrError(f"the MLflow server exited with code {code}")
        return 0
    except KeyboardInterrupt:
        print("\nstopping the MLflow UI", flush=True)
        return 0
    finally:
        _stop(proc)
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
