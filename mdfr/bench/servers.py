"""Throw-away servers on loopback for benchmarks and tests: PostgreSQL, the project's MLflow
server recipe (``cluster/mlflow-server.sh``) and a local Ray cluster (``cluster/local.sh``).

Each is started in its own temporary folder, bound to 127.0.0.1 on free ports, and stopped by
its own handle (never by process name: other Ray instances and servers may share the machine).
PostgreSQL comes from Debian's binaries (``/usr/lib/postgresql/*/bin``); as root it runs as the
``postgres`` user, since ``initdb`` refuses root.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdfr.errors import MdfrError

ROOT = Path(__file__).resolve().parents[2]
MLFLOW_SH = ROOT / "cluster" / "mlflow-server.sh"
LOCAL_SH = ROOT / "cluster" / "local.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(url: str, timeout: float = 5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (``pg_ctl``), database ``mlflow``."""

    base: Path
    bindir: Path
    port: int
    password: str
    as_user: list[str]

    @property
    def uri(self) -> str:
        # No password in the URI: libpq reads PGPASSWORD, as cluster/mlflow-server.sh advises.
        return f"postgresql://mdfr@127.0.0.1:{self.port}/mlflow"

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"),
             "-m", "fast", "-w", "-t", "30", "stop"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        shutil.rmtree(self.base, ignore_errors=True)


def postgres_bindir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name)
    for d in reversed(candidates):
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def start_postgres() -> tuple[Postgres | None, str]:
    """A running PostgreSQL with database ``mlflow``, or None and why not."""
    bindir = postgres_bindir()
    if bindir is None:
        return None, "no PostgreSQL binaries (apt-get install postgresql)"
    as_user: list[str] = []
    owner: tuple[int, int] | None = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and there is no 'postgres' user to run PostgreSQL as"
        if not shutil.which("runuser"):
            return None, "running as root without runuser"
        as_user, owner = ["runuser", "-u", "postgres", "--"], (pw.pw_uid, pw.pw_gid)
    base = Path(tempfile.mkdtemp(prefix="mdfrpg"))
    base.chmod(0o755)
    pg = Postgres(base, bindir, free_port(), secrets.token_hex(16), as_user)
    for sub in ("data", "sock"):
        (base / sub).mkdir()
    (base / "pwfile").write_text(pg.password)
    (base / "pg.log").touch()
    if owner:
        for p in base.iterdir():
            os.chown(p, *owner)
    steps = [
        [str(bindir / "initdb"), "-D", str(base / "data"), "-U", "mdfr", "-E", "UTF8",
         "--locale=C", "--auth=scram-sha-256", f"--pwfile={base / 'pwfile'}", "--no-instructions"],
        [str(bindir / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "pg.log"), "-w",
         "-t", "60", "-o",
         f"-c listen_addresses=127.0.0.1 -p {pg.port} -k {base / 'sock'} -c fsync=off", "start"],
    ]  # fmt: skip
    for cmd in steps:
        r = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            pg.stop()
            return None, f"{Path(cmd[0]).name} failed: {(r.stderr or r.stdout).strip()[-300:]}"
    r = subprocess.run(
        [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "mdfr", "mlflow"],
        env={**os.environ, "PGPASSWORD": pg.password}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if r.returncode != 0:
        pg.stop()
        return None, f"createdb failed: {r.stderr.strip()[-300:]}"
    return pg, f"PostgreSQL {bindir.parent.name} from {bindir}"


# --------------------------------------------------------------------------- MLflow server


def kill_group(proc: subprocess.Popen[Any], grace: float = 20) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its group; then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@dataclass
class MlflowServer:
    """``cluster/mlflow-server.sh`` running on loopback, basic auth on (user ``admin``)."""

    url: str
    password: str
    proc: subprocess.Popen[Any]
    log: Path

    @property
    def client_env(self) -> dict[str, str]:
        """What a client (driver, trials) needs in its environment to log there."""
        return {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": self.password}

    def stop(self) -> None:
        kill_group(self.proc)


def start_mlflow_server(
    store_uri: str, work: Path, *, workers: int = 4, pg_password: str | None = None
) -> MlflowServer:
    """Start the project's server recipe on a free port and wait for ``/health``.

    Raises:
        MdfrError: it exited or did not answer within 240 s (with the tail of its log).
    """
    password = secrets.token_urlsafe(16)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
    env.update(
        MLFLOW_BACKEND_STORE_URI=store_uri,
        MLFLOW_ARTIFACTS_DESTINATION=str(work / "mlartifacts"),
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
        MLFLOW_AUTH_ADMIN_PASSWORD=password,
        MLFLOW_PORT=str(port),
        MLFLOW_WORKERS=str(workers),
        TMPDIR=str(work),
    )
    if pg_password:
        env["PGPASSWORD"] = pg_password
    log = work / "mlflow-server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", str(MLFLOW_SH)], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = MlflowServer(f"http://127.0.0.1:{port}", password, proc, log)
    deadline = time.monotonic() + 240
    while not healthy(f"{server.url}/health"):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise MdfrError(f"MLflow server did not come up:\n{_tail(log)}")
        time.sleep(1)
    return server


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"


# --------------------------------------------------------------------------- Ray cluster


@dataclass
class LocalCluster:
    """``cluster/local.sh``: a head and worker nodes on loopback, each its own ``ray start``."""

    env: dict[str, str]  # what the nodes were started with (they pass it on to trials)
    address: str
    tmp: Path
    client_env: dict[str, str] = field(default_factory=dict)  # + what a driver needs

    def stop(self) -> None:
        subprocess.run(
            ["bash", str(LOCAL_SH), "stop"], env=self.env, capture_output=True, timeout=180,
            check=False,
        )  # fmt: skip
        shutil.rmtree(self.tmp, ignore_errors=True)


def start_local_cluster(
    workers: int, *, head_cpus: int, worker_cpus: int, worker_gpus: int, env: dict[str, str]
) -> LocalCluster:
    """``local.sh start WORKERS`` in a private temp folder on free ports.

    Args:
        env: added to the nodes' environment, hence to every trial's (probing, credentials).

    Raises:
        MdfrError: the cluster did not form (with local.sh's output).
    """
    # Short path: Ray's unix sockets live under it (107-byte limit); mkdtemp makes it 0700.
    tmp = Path(tempfile.mkdtemp(prefix="mdfrr", dir="/tmp"))
    port, dash = free_port(), free_port()
    node_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    node_env.update(env)
    node_env.update(
        MDFR_RAY_TMP=str(tmp),
        MDFR_RAY_PORT=str(port),
        MDFR_RAY_DASHBOARD_PORT=str(dash),
        MDFR_RAY_HEAD_CPUS=str(head_cpus),
        MDFR_RAY_WORKER_CPUS=str(worker_cpus),
        MDFR_RAY_WORKER_GPUS=str(worker_gpus),
        MDFR_RAY_OBJECT_STORE_MB="128",
        MDFR_RAY_START_TIMEOUT="300",
    )
    cluster = LocalCluster(node_env, f"127.0.0.1:{port}", tmp)
    r = subprocess.run(
        ["bash", str(LOCAL_SH), "start", str(workers)], env=node_env, capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip
    if r.returncode != 0:
        cluster.stop()
        raise MdfrError(f"cluster/local.sh start {workers} failed:\n{r.stdout}\n{r.stderr}")
    cluster.client_env = {
        **env,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(tmp / "auth_token"),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    return cluster
