"""Cluster recipes (issue 7), on loopback only.

Fast tests check the files a user takes to a cloud: the Ray launcher YAML against Ray's own
schema, the KubeRay RayJob and MLflow manifests (secrets only by reference), the `ray submit`
script, the shell scripts' strictness.

Slow tests share one stack for the module:

- a real ``mlflow server`` started through ``cluster/mlflow-server.sh`` with the basic-auth app
  on, backed by PostgreSQL (Debian's binaries, a throw-away cluster on 127.0.0.1) or, where
  those are missing (or ``MDFR_TEST_MLFLOW_BACKEND=sqlite``), SQLite; the module prints which;
- ``cluster/local.sh start 1``: a head and one worker node (1 CPU each), token auth on, and
  every node started with the MLflow credentials of a non-admin ``sweeps`` user.

On it: the cluster has two nodes and refuses unauthenticated clients; ``sweeps/smoke.yaml``
submitted through the job API finishes and its parent and child runs are in that server; no
process of the cluster listens beyond loopback; wrong MLflow credentials stop a sweep before
Ray is asked for anything (exit 1), and a SQLite tracking store on several nodes is refused
(exit 2); a worker node SIGKILLed mid-sweep costs nothing (every trial finishes, one run
each); a sweep whose storage some node cannot see is refused before it starts (exit 2).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from mdfr.bench.servers import Postgres, kill_group, start_postgres

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LOCAL_SH = CLUSTER / "local.sh"
MLFLOW_SH = CLUSTER / "mlflow-server.sh"
SMOKE = ROOT / "sweeps" / "smoke.yaml"
BIN = Path(sys.executable).parent
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


# =========================================================================== helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(
    cmd: list[str], env: dict[str, str] | None = None, timeout: float = 120, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; a timeout fails the test with the command and its output so far."""
    try:
        return subprocess.run(
            cmd, env=env, timeout=timeout, capture_output=True, text=True, check=False, **kw
        )
    except subprocess.TimeoutExpired as e:
        raw = e.stdout or ""
        out = (raw.decode(errors="replace") if isinstance(raw, bytes) else raw)[-4000:]
        pytest.fail(f"{' '.join(map(str, cmd))} ran past {timeout}s; output so far:\n{out}")


def _http(
    url: str,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    """(status, parsed JSON or text) of a GET, or of a POST when ``body`` is given."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback
            status, raw = resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read().decode(errors="replace")
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"


def _trial_logs(node_dir: Path) -> set[Path]:
    """Worker logs of Tune trial actors that ran on the node whose temp dir is ``node_dir``.

    Ray starts each actor's log with ``:actor_name:<class>``; Tune's function trainables are
    ``ImplicitFunc`` actors. Files outlive the job, unlike the state API's actor records.
    """
    found = set()
    for log in node_dir.glob("session_2*/logs/worker-*.out"):
        try:
            with log.open(errors="replace") as f:
                if ":actor_name:ImplicitFunc" in f.read(4096):
                    found.add(log)
        except OSError:
            continue
    return found


# =========================================================================== static files


def _load_all(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"
    return docs


def test_launcher_yaml_passes_rays_own_schema_and_carries_what_a_sweep_needs() -> None:
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)  # the file as written: no unknown keys, right types
    full = prepare_config(raw)  # what `ray up` builds from it: Ray's defaults merged in
    validate_config(full)

    for key in ("cluster_name", "provider", "auth", "available_node_types", "head_node_type"):
        assert raw.get(key), f"aws-gpu.yaml: missing {key}"
    assert raw["provider"]["type"] == "aws" and raw["provider"]["region"]
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types, "head_node_type must name a node type"
    for name, t in types.items():
        assert "resources" in t and t.get("node_config"), f"{name}: resources and node_config"
    workers = {n: t for n, t in types.items() if n != raw["head_node_type"]}
    assert workers, "no worker node type"
    for name, t in workers.items():
        assert isinstance(t.get("min_workers"), int) and t["max_workers"] >= 1, name
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers.values()), "no GPU worker"

    # ray submit uploads one script: the project and the secrets must be file mounts
    assert raw["file_mounts"].get("~/mdfr") == "."
    assert raw["file_mounts"].get("~/mdfr-secrets") == "cluster/secrets"
    assert any("pip install" in c and "-e ." in c for c in raw["setup_commands"])
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert all("cluster.env" in c for c in starts if "ray start" in c)
    assert any("auth_token" in c for c in raw["setup_commands"])
    # shared storage: the EFS mount reaches the container
    assert "/mnt/mdfr" in " ".join(raw["initialization_commands"])
    assert any("/mnt/mdfr:/mnt/mdfr" in o for o in raw["docker"]["run_options"])


def test_secrets_are_never_committed() -> None:
    """The launcher reads cluster/secrets/, which git ignores; no file carries a token."""
    paths = ["cluster/secrets/cluster.env", "cluster/secrets/ray_auth_token"]
    ignored = _run(["git", "check-ignore", *paths], cwd=ROOT)
    assert ignored.stdout.split() == paths, (
        f"cluster/secrets/ must be git-ignored (cluster/.gitignore): {ignored}"
    )
    hexish = re.compile(r"\b[0-9a-f]{32,}\b")
    for path in CLUSTER.rglob("*"):
        if path.is_file() and "secrets" not in path.parts:
            found = hexish.findall(path.read_text(errors="replace"))
            assert not found, f"{path}: looks like a committed token: {found[:1]}"


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec.get("containers", []))


def _assert_secrets_by_reference(container: dict[str, Any], where: str) -> None:
    for env in container.get("env", []):
        if re.search(r"TOKEN|PASSWORD|SECRET|PGPASS|STORE_URI", env["name"]):
            assert "value" not in env, f"{where}: {env['name']} has a literal value"
            assert env["valueFrom"]["secretKeyRef"]["name"], f"{where}: {env['name']}"


def test_kuberay_rayjob_runs_a_sweep_file_with_secrets_by_reference() -> None:
    (job,) = _load_all(CLUSTER / "kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    entry = spec["entrypoint"].split()
    assert entry[:3] == ["mdfr", "sweep", "run"], spec["entrypoint"]
    sweep_file = entry[3]
    assert sweep_file.startswith("/app/"), "absolute path inside the image (Dockerfile: /app)"
    assert (ROOT / sweep_file.removeprefix("/app/")).is_file(), f"{sweep_file} not in the repo"
    assert entry[entry.index("--tracking-uri") + 1].startswith("http")
    assert entry[entry.index("--storage") + 1].startswith("/mnt/mdfr")
    # the sweep file with the entrypoint's overrides is valid (paths point at the shared volume)
    from mdfr.sweep.spec import load_sweep

    sets = [entry[i + 1] for i, a in enumerate(entry) if a == "--set"]
    plan = load_sweep(ROOT / sweep_file.removeprefix("/app/"), sets)
    assert plan.prepare is not None and plan.prepare.out.startswith("/mnt/mdfr/")
    assert plan.prepare.images.startswith("/mnt/mdfr/") and "/mnt/mdfr/" in plan.prepare.codec
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    groups = cluster["workerGroupSpecs"]
    assert groups and all(g["template"]["spec"]["containers"] for g in groups)
    gpus = [
        c["resources"]["limits"].get("nvidia.com/gpu")
        for g in groups
        for c in _containers(g["template"]["spec"])
    ]
    assert any(gpus), "no GPU worker group"
    pods = [("head", head), *((g["groupName"], g["template"]["spec"]) for g in groups)]
    pods.append(("submitter", spec["submitterPodTemplate"]["spec"]))
    for name, pod in pods:
        for c in _containers(pod):
            names = {e["name"] for e in c.get("env", [])}
            assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= names, f"{name}: token auth env"
            _assert_secrets_by_reference(c, f"RayJob {name}")
    for name, pod in pods[:-1]:
        mounts = {m["mountPath"] for c in _containers(pod) for m in c.get("volumeMounts", [])}
        assert "/mnt/mdfr" in mounts, f"{name}: the shared volume"
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "WORKDIR /app" in dockerfile and "COPY --chown=ray:users sweeps" in dockerfile


def test_mlflow_k8s_manifest_takes_credentials_from_a_secret() -> None:
    docs = {d["kind"]: d for d in _load_all(CLUSTER / "mlflow-k8s.yaml")}
    assert {"PersistentVolumeClaim", "Deployment", "Service"} <= set(docs)
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    (c,) = _containers(docs["Deployment"]["spec"]["template"]["spec"])
    assert c["command"][-1].endswith("cluster/mlflow-server.sh")
    names = {e["name"] for e in c["env"]}
    assert {"MLFLOW_BACKEND_STORE_URI", "PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD"} <= names
    _assert_secrets_by_reference(c, "mlflow Deployment")


def _load_submit() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("mdfr_cluster_submit", CLUSTER / "submit.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_submit_script_builds_the_sweep_command_from_the_cluster_env(tmp_path: Path) -> None:
    submit = _load_submit()
    env_file = tmp_path / "cluster.env"
    env_file.write_text(
        "# comment\nexport MDFR_STORAGE=/mnt/mdfr/ray\n"
        "MLFLOW_TRACKING_URI='http://10.0.0.5:5000'  # the server\nEMPTY=\n"
    )
    env = submit.read_env_file(env_file)
    assert env == {
        "MDFR_STORAGE": "/mnt/mdfr/ray",
        "MLFLOW_TRACKING_URI": "http://10.0.0.5:5000",
        "EMPTY": "",
    }
    cmd = submit.build_command(["sweeps/table2.yaml", "--", "--set", "grid.seed=[0]"], env)
    assert cmd[1:] == [
        "-m", "mdfr.cli", "sweep", "run", "sweeps/table2.yaml", "--address", "auto",
        "--storage", "/mnt/mdfr/ray", "--tracking-uri", "http://10.0.0.5:5000",
        "--set", "grid.seed=[0]",
    ]  # fmt: skip
    own = submit.build_command(["x.yaml", "--storage", "/nfs/r"], {**env, "RAY_ADDRESS": "h:1"})
    assert own.count("--storage") == 1 and own[own.index("--address") + 1] == "h:1"
    with pytest.raises(SystemExit, match="MDFR_STORAGE"):
        submit.build_command(["x.yaml"], {"MLFLOW_TRACKING_URI": "http://h:5000"})
    with pytest.raises(SystemExit, match="usage"):
        submit.build_command([], env)


def test_submit_script_runs_mdfr_from_the_project_with_the_cluster_settings(
    tmp_path: Path,
) -> None:
    """What `ray submit` does on the head, minus SSH: `python ~/submit.py FILE -- ARGS`.

    A misspelt override makes `mdfr sweep run` stop at validation (exit 2), before Ray: enough
    to see the script load cluster.env, change into the project and hand over to mdfr.
    """
    env_file = tmp_path / "cluster.env"
    env_file.write_text("MDFR_STORAGE=/mnt/mdfr/ray\nMLFLOW_TRACKING_URI=http://127.0.0.1:9\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDFR_", "MLFLOW_", "RAY_"))}
    env.update(MDFR_PROJECT_DIR=str(ROOT), MDFR_CLUSTER_ENV=str(env_file))
    out = _run(
        [sys.executable, str(CLUSTER / "submit.py"), "sweeps/smoke.yaml", "--", "--set", "nosuch=1"],
        env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"submit.py: in {ROOT}:" in out.stderr
    assert "sweep run sweeps/smoke.yaml --address auto --storage /mnt/mdfr/ray" in out.stderr
    assert "--tracking-uri http://127.0.0.1:9 --set nosuch=1" in out.stderr
    assert "sweeps/smoke.yaml: nosuch: unknown key" in out.stderr
    missing = _run(
        [sys.executable, str(CLUSTER / "submit.py"), "sweeps/smoke.yaml"],
        env={**env, "MDFR_PROJECT_DIR": str(tmp_path)}, timeout=60,
    )  # fmt: skip
    assert missing.returncode != 0 and "no project at" in missing.stderr


@pytest.mark.parametrize("script", ["local.sh", "mlflow-server.sh"])
def test_shell_scripts_are_strict_and_executable(script: str) -> None:
    path = CLUSTER / script
    assert os.access(path, os.X_OK), f"{path} is not executable"
    assert "set -euo pipefail" in path.read_text()
    syntax = _run(["bash", "-n", str(path)])
    assert syntax.returncode == 0, syntax.stderr


def test_local_sh_rejects_bad_usage_without_starting_anything(tmp_path: Path) -> None:
    env = {**os.environ, "MDFR_RAY_TMP": str(tmp_path), "MDFR_RAY_BIN": str(BIN / "ray")}
    usage = _run(["bash", str(LOCAL_SH)], env=env)
    assert usage.returncode == 2 and "start" in usage.stderr
    bad = _run(["bash", str(LOCAL_SH), "start", "two"], env=env)
    assert bad.returncode == 1 and "N must be a number" in bad.stderr
    status = _run(["bash", str(LOCAL_SH), "status"], env=env)
    assert status.returncode == 1 and "no cluster running" in status.stdout
    assert not list(tmp_path.glob("*.pid"))


def test_mlflow_server_script_refuses_to_start_without_its_settings() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = _run(["bash", str(MLFLOW_SH)], env=env, timeout=30)
    assert out.returncode != 0 and "MLFLOW_BACKEND_STORE_URI" in out.stderr
    env.update(MLFLOW_BACKEND_STORE_URI="mysql://u@h/db", MLFLOW_ARTIFACTS_DESTINATION="/x")
    env.update(MLFLOW_FLASK_SERVER_SECRET_KEY="k")
    out = _run(["bash", str(MLFLOW_SH)], env=env, timeout=30)
    assert out.returncode != 0 and "postgresql://" in out.stderr


# =========================================================================== the live stack


def _start_postgres() -> tuple[Postgres | None, str]:
    """A running PostgreSQL with database ``mlflow`` (the bench's helper), or None and why not."""
    if os.environ.get("MDFR_TEST_MLFLOW_BACKEND") == "sqlite":
        return None, "MDFR_TEST_MLFLOW_BACKEND=sqlite"
    return start_postgres()


@dataclass
class Stack:
    """The module's MLflow server and Ray cluster, and how to talk to them."""

    tmp: Path
    mlflow_url: str
    admin: dict[str, str]
    sweeps_user: tuple[str, str]
    backend: str  # "postgresql" or "sqlite"
    backend_note: str
    pg: Postgres | None
    sqlite_path: Path | None
    artifacts: Path
    ray_port: int
    dashboard: str
    token: str
    env: dict[str, str]  # what local.sh got: the nodes' environment
    client_env: dict[str, str]  # + the token: a user's shell that talks to the cluster
    workdir: Path  # what `ray job submit --working-dir .` uploads
    extra_nodes: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ray_port}"

    def node_dir(self, name: str) -> Path:
        """A local.sh node's temp dir (``head``, ``worker-1``)."""
        return Path(self.env["MDFR_RAY_TMP"]) / name

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def state(self, resource: str, **filters: str) -> list[dict[str, Any]]:
        """Ray's state API over the dashboard (``nodes``, ``actors``), authenticated."""
        q = "limit=10000&detail=true"
        for k, v in filters.items():
            q += f"&filter_keys={k}&filter_predicates=%3D&filter_values={v}"
        status, body = _http(f"{self.dashboard}/api/v0/{resource}?{q}", self.bearer)
        assert status == 200, f"state API {resource}: HTTP {status}: {body}"
        return list(body["data"]["result"]["result"])

    def job(self, submission_id: str) -> dict[str, Any]:
        status, body = _http(f"{self.dashboard}/api/jobs/{submission_id}", self.bearer)
        assert status == 200, f"job {submission_id}: HTTP {status}: {body}"
        return dict(body)

    def job_logs(self, submission_id: str) -> str:
        status, body = _http(f"{self.dashboard}/api/jobs/{submission_id}/logs", self.bearer)
        assert status == 200, f"logs of {submission_id}: HTTP {status}"
        return str(body["logs"])

    def follow_job(
        self, submission_id: str, timeout: float, on_trial: Any = None
    ) -> tuple[dict[str, Any], set[str]]:
        """Poll a job to its end; returns its info and the nodes its trials were seen on.

        Ray forgets a finished job's actors, so trial placement is observed while it runs.
        ``on_trial(node_ids)`` is called on every poll with the nodes running trials now.
        """
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while True:
            running = {
                a["node_id"]
                for a in self.state("actors", state="ALIVE")
                if a["class_name"] == "ImplicitFunc"  # Tune's function-trainable actor
            }
            seen |= running
            if on_trial is not None:
                on_trial(running)
            info = self.job(submission_id)
            if info["status"] in TERMINAL:
                return info, seen
            if time.monotonic() > deadline:
                pytest.fail(
                    f"job {submission_id} still {info['status']} after {timeout}s; log tail:\n"
                    + "\n".join(self.job_logs(submission_id).splitlines()[-40:])
                )
            time.sleep(0.5)

    def mlflow(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        status, out = _http(f"{self.mlflow_url}/api/2.0/mlflow/{path}", self.admin, body)
        assert status == 200, f"MLflow {path}: HTTP {status}: {out}"
        return dict(out)

    def sweep_runs(self, parent_run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The parent run and its ``mdfr.kind=trial`` children, from the server over HTTP."""
        parent = self.mlflow(f"runs/get?run_id={parent_run_id}")["run"]
        children = self.mlflow(
            "runs/search",
            {
                "experiment_ids": [parent["info"]["experiment_id"]],
                "filter": f"tags.mlflow.parentRunId = '{parent_run_id}' "
                "and tags.`mdfr.kind` = 'trial'",
                "max_results": 1000,
            },
        ).get("runs", [])
        return parent, children

    def runs_in_backend(self, parent_run_id: str) -> int:
        """Child runs of ``parent_run_id`` as rows in the server's own database."""
        sql = "SELECT count(*) FROM tags WHERE key = 'mlflow.parentRunId' AND value = {}"
        if self.pg is not None:
            import psycopg

            with psycopg.connect(
                host="127.0.0.1", port=self.pg.port, user="mdfr", password=self.pg.password,
                dbname="mlflow",
            ) as conn:  # fmt: skip
                row = conn.execute(sql.format("%s"), (parent_run_id,)).fetchone()
        else:
            assert self.sqlite_path is not None
            with sqlite3.connect(self.sqlite_path) as conn:
                row = conn.execute(sql.format("?"), (parent_run_id,)).fetchone()
        return int(row[0]) if row else 0


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """PostgreSQL (or SQLite) + ``cluster/mlflow-server.sh`` + ``cluster/local.sh start 1``.

    The MLflow server migrates its database while the Ray nodes start: both are slow on a
    busy machine, so they overlap. Everything is stopped by its own handle at the end.
    """
    # Short: Ray puts unix sockets under its temp dir (107-byte limit on their paths).
    tmp = Path(tempfile.mkdtemp(prefix="mdfrc", dir="/tmp"))
    stops: list[Any] = []
    try:
        pg, note = _start_postgres()
        if pg is not None:
            stops.append(pg.stop)
            backend, sqlite_path = "postgresql", None
            store_uri = pg.uri
        else:
            backend, sqlite_path = "sqlite", tmp / "mlflow.db"
            store_uri = f"sqlite:///{sqlite_path}"
        print(f"\n[test_cluster] MLflow backend: {backend} ({note})")

        admin_pw, sweeps_pw = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        mlflow_port = _free_port()
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MLFLOW_", "RAY_", "PG")) and k != "MDFR_TEST_FAULT"
        }
        server_env = {
            **clean,
            "MLFLOW_BACKEND_STORE_URI": store_uri,
            "MLFLOW_ARTIFACTS_DESTINATION": str(tmp / "mlartifacts"),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin_pw,
            "MLFLOW_PORT": str(mlflow_port),
            "MLFLOW_WORKERS": "1",
            "MLFLOW_BIN": str(BIN / "mlflow"),
            "TMPDIR": str(tmp),
        }
        if pg is not None:
            server_env["PGPASSWORD"] = pg.password
        with (tmp / "mlflow.log").open("w") as log:
            server = subprocess.Popen(
                ["bash", str(MLFLOW_SH)], env=server_env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        stops.append(lambda: kill_group(server))

        ray_port, dash_port = _free_port(), _free_port()
        node_env = {
            **clean,
            "MDFR_RAY_TMP": str(tmp / "ray"),
            "MDFR_RAY_PORT": str(ray_port),
            "MDFR_RAY_DASHBOARD_PORT": str(dash_port),
            "MDFR_RAY_HEAD_CPUS": "1",
            "MDFR_RAY_WORKER_CPUS": "1",
            "MDFR_RAY_START_TIMEOUT": "150",
            "MDFR_RAY_BIN": str(BIN / "ray"),
            # Every trial, on every node, logs to the server as this user.
            "MLFLOW_TRACKING_USERNAME": "sweeps",
            "MLFLOW_TRACKING_PASSWORD": sweeps_pw,
        }
        stops.append(lambda: _run(["bash", str(LOCAL_SH), "stop"], env=node_env, timeout=120))
        started = _run(["bash", str(LOCAL_SH), "start", "1"], env=node_env, timeout=240)
        assert started.returncode == 0, (
            f"local.sh start 1 failed ({started.returncode}):\n{started.stdout}\n{started.stderr}"
        )
        token_path = tmp / "ray" / "auth_token"
        # What local.sh prints under "Environment:": the token, and loopback kept as loopback
        # (the nodes listen on 127.0.0.1 only; without it Ray would dial the routable address).
        client_env = {
            **node_env,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_path),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }

        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        deadline = time.monotonic() + 240
        while not _healthy(f"{mlflow_url}/health"):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"MLflow server did not come up:\n{_tail(tmp / 'mlflow.log')}")
            time.sleep(1)
        admin = _basic("admin", admin_pw)
        status, body = _http(
            f"{mlflow_url}/api/2.0/mlflow/users/create", admin,
            {"username": "sweeps", "password": sweeps_pw},
        )  # fmt: skip
        assert status == 200, f"creating the sweeps user: HTTP {status}: {body}"

        st = Stack(
            tmp=tmp, mlflow_url=mlflow_url, admin=admin, sweeps_user=("sweeps", sweeps_pw),
            backend=backend, backend_note=note, pg=pg, sqlite_path=sqlite_path,
            artifacts=tmp / "mlartifacts", ray_port=ray_port,
            dashboard=f"http://127.0.0.1:{dash_port}", token=token_path.read_text().strip(),
            env=node_env, client_env=client_env, workdir=_snapshot_repo(tmp / "repo"),
        )  # fmt: skip
        yield st
        for proc in st.extra_nodes:
            _kill_node(proc)
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception as e:  # noqa: BLE001 - teardown keeps going
                print(f"[test_cluster] teardown: {e}")
        shutil.rmtree(tmp, ignore_errors=True)


def _healthy(url: str) -> bool:
    try:
        return _http(url, timeout=5)[0] == 200
    except OSError:  # not listening yet
        return False


def _kill_node(proc: subprocess.Popen[Any]) -> None:
    """Stop a node started by a test: `ray start --block` drains on SIGTERM, then its group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    kill_group(proc, grace=5)


def _snapshot_repo(dest: Path) -> Path:
    """The repository as a fresh clone has it: git's tracked and untracked-not-ignored files.

    ``ray job submit --working-dir`` hashes the tree twice (name, then upload); a file that
    changes in between (other work in this checkout) fails the job, so jobs upload a copy.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():  # listed but deleted meanwhile: skip
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _submit(
    st: Stack, submission_id: str, sweep_args: list[str], *, wait: bool, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``ray job submit`` as the README has it, from (a still copy of) the repository."""
    cmd = [
        str(BIN / "ray"), "job", "submit", "--address", st.dashboard, "--working-dir", ".",
        "--submission-id", submission_id, *([] if wait else ["--no-wait"]), "--",
        "mdfr", "sweep", "run", *sweep_args,
    ]  # fmt: skip
    return _run(cmd, env=st.client_env, timeout=timeout, cwd=st.workdir)


def _parent_run_id(logs: str) -> str:
    m = re.search(r"parent run ([0-9a-f]{32})", logs)
    assert m, f"no 'parent run <id>' line in the job's log:\n{logs[-3000:]}"
    return m.group(1)


def _check_sweep_in_mlflow(st: Stack, parent_id: str, trial_keys: list[str]) -> None:
    parent, children = st.sweep_runs(parent_id)
    where = f"[{st.backend}] parent {parent_id}"
    assert parent["info"]["status"] == "FINISHED", f"{where}: {parent['info']['status']}"
    assert _tags(parent).get("mdfr.kind") == "sweep", f"{where}: {_tags(parent)}"
    names = sorted(r["info"]["run_name"] for r in children)
    assert names == sorted(trial_keys), f"{where}: one child run per trial, got {names}"
    for r in children:
        tags = _tags(r)
        assert r["info"]["status"] == "FINISHED", (r["info"]["run_name"], r["info"]["status"])
        assert tags.get("mdfr.status") in ("ok", "pruned"), (r["info"]["run_name"], tags)
        metrics = {m["key"] for m in r["data"].get("metrics", [])}
        assert "val/acc_restored" in metrics, (r["info"]["run_name"], sorted(metrics))
    # The runs are rows in the database behind the server, not only in its answers.
    assert st.runs_in_backend(parent_id) >= len(trial_keys), f"{where}: rows in {st.backend}"


@pytest.mark.slow
def test_local_cluster_has_two_nodes_and_refuses_unauthenticated_clients(stack: Stack) -> None:
    st = stack
    status = _run(["bash", str(LOCAL_SH), "status"], env=st.env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "head: running" in status.stdout and "worker-1: running" in status.stdout
    assert "ray job submit --address " + st.dashboard in status.stdout

    # A driver with the token sees two live nodes: the head and the worker.
    probe = (
        f"import json, ray; ray.init(address={st.address!r}, logging_level='ERROR', "
        "log_to_driver=False); print(json.dumps([[n['Alive'], "
        "'node:__internal_head__' in n['Resources']] for n in ray.nodes()]))"
    )
    out = _run([sys.executable, "-c", probe], env=st.client_env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    nodes = json.loads(out.stdout.strip().splitlines()[-1])
    alive = [head for is_alive, head in nodes if is_alive]
    assert sorted(alive) == [False, True], f"want head + 1 worker alive, got {nodes}"

    # Without the token: the job API answers 401, a wrong token 403, the CLI fails.
    assert _http(f"{st.dashboard}/api/jobs/")[0] == 401
    assert _http(f"{st.dashboard}/api/jobs/", {"Authorization": "Bearer " + "0" * 64})[0] == 403
    assert _http(f"{st.dashboard}/api/jobs/", st.bearer)[0] == 200
    anonymous = _run(
        [str(BIN / "ray"), "job", "list", "--address", st.dashboard], env=st.env, timeout=60
    )
    assert anonymous.returncode != 0
    assert "Authentication" in anonymous.stdout + anonymous.stderr


@pytest.mark.slow
def test_smoke_sweep_through_the_job_api_lands_in_the_mlflow_server(stack: Stack) -> None:
    from mdfr.sweep.spec import load_sweep

    st = stack
    keys = load_sweep(SMOKE).trial_keys()
    sid = f"mdfr-smoke-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    # The README's command: ray job submit --address ... --working-dir . -- mdfr sweep run ...
    out = _submit(
        st, sid,
        ["sweeps/smoke.yaml", "--tracking-uri", st.mlflow_url, "--storage", str(st.tmp / "storage"),
         "--quiet"],
        wait=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    info, _ = st.follow_job(sid, timeout=480)
    logs = st.job_logs(sid)
    print(f"[test_cluster] smoke sweep via the job API: {time.monotonic() - t0:.0f} s")
    assert info["status"] == "SUCCEEDED", f"job {sid}: {info.get('message')}\n{logs[-4000:]}"
    _check_sweep_in_mlflow(st, _parent_run_id(logs), keys)
    assert any(p.is_file() for p in st.artifacts.rglob("*")), "no artifact reached the server"
    # Trials really ran on both nodes, not only on the head.
    per_node = {n: len(_trial_logs(st.node_dir(n))) for n in ("head", "worker-1")}
    assert all(per_node.values()), f"trial actors per node: {per_node}; want some on each"


def _is_loopback(ip: str) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


@pytest.mark.slow
def test_no_process_of_the_local_cluster_listens_beyond_loopback(stack: Stack) -> None:
    """GCS, raylets, object managers, agents and workers of every node: 127.0.0.1 only.

    Checked after a sweep ran, so trial workers, the job's driver and runtime-env agents have
    been started. Every node is one process group (local.sh starts each with setsid).
    """
    psutil = pytest.importorskip("psutil")
    st = stack
    groups = {int((st.node_dir(n).parent / f"{n}.pid").read_text()) for n in ("head", "worker-1")}
    bound: list[tuple[str, str, int]] = []
    for proc in psutil.process_iter(["name"]):
        try:
            if os.getpgid(proc.pid) not in groups:
                continue
            conns = proc.net_connections(kind="inet")
        except (psutil.Error, OSError):  # gone meanwhile
            continue
        for c in conns:
            # TCP servers, and UDP sockets that take datagrams from anyone
            if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr):
                bound.append((proc.info["name"], c.laddr.ip, c.laddr.port))
    ports = {port for _, _, port in bound}
    assert st.ray_port in ports, f"the GCS port {st.ray_port} is not among {sorted(bound)}"
    exposed = [b for b in bound if not _is_loopback(b[1])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    print(f"[test_cluster] {len(bound)} listening sockets of the cluster, all on loopback")


@pytest.mark.slow
def test_wrong_mlflow_credentials_stop_the_sweep_before_it_starts(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/health needs no login; the pre-flight read with the driver's credentials does."""
    from mdfr.errors import MdfrError
    from mdfr.tracking import check_reachable

    st = stack
    user, password = st.sweeps_user
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    check_reachable(st.mlflow_url)  # the sweeps user of the server: accepted
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-" + password)
    with pytest.raises(MdfrError, match=r"refused user 'sweeps' \(HTTP 401\)") as e:
        check_reachable(st.mlflow_url)
    assert st.mlflow_url in str(e.value) and password not in str(e.value)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(MdfrError, match="wants a login .* MLFLOW_TRACKING_USERNAME is not set"):
        check_reachable(st.mlflow_url)

    # The CLI: exit 1 with the message, no traceback, no sweep folder, in seconds.
    storage = st.tmp / "creds-storage"
    env = {**st.client_env, "MLFLOW_TRACKING_PASSWORD": "wrong"}
    out = _run(
        [str(BIN / "mdfr"), "sweep", "run", str(SMOKE), "--address", st.address,
         "--tracking-uri", st.mlflow_url, "--storage", str(storage), "--quiet"],
        env=env, cwd=st.tmp, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "refused user 'sweeps' (HTTP 401)" in out.stderr and "Traceback" not in out.stderr
    assert "MLFLOW_TRACKING_PASSWORD" in out.stderr and "wrong" not in out.stderr
    assert not storage.exists()


@pytest.mark.slow
def test_sqlite_tracking_on_a_multi_node_cluster_exits_2(stack: Stack) -> None:
    """Trials on other nodes cannot write the driver's SQLite file: ask for a server."""
    st = stack
    storage, db = st.tmp / "sqlite-storage", st.tmp / "sqlite" / "mlflow.db"
    out = _run(
        [str(BIN / "mdfr"), "sweep", "run", str(SMOKE), "--address", st.address,
         "--tracking-uri", f"sqlite:///{db}", "--storage", str(storage), "--quiet"],
        env=st.client_env, cwd=st.tmp, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert f"sqlite:///{db}" in out.stderr and "nodes" in out.stderr, out.stderr
    assert "`mlflow server`" in out.stderr and "cluster/README.md" in out.stderr, out.stderr
    assert not storage.exists() and not db.exists(), "a refused sweep writes nothing"


@pytest.mark.slow
def test_worker_node_killed_mid_sweep_every_trial_still_tracked_once(stack: Stack) -> None:
    from mdfr.sweep.spec import load_sweep

    st = stack
    setups = "grid.setup=[finetune,wo_res,proposed]"
    keys = load_sweep(SMOKE, [setups]).trial_keys()
    (worker,) = [n["node_id"] for n in st.state("nodes", state="ALIVE") if not n["is_head_node"]]
    sid = f"mdfr-kill-{uuid.uuid4().hex[:8]}"
    out = _submit(
        st, sid,
        ["sweeps/smoke.yaml", "--tracking-uri", st.mlflow_url, "--storage", str(st.tmp / "storage"),
         "--quiet", "--set", setups],
        wait=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr

    # As soon as a trial runs on the worker, take the whole node down at once. A trial is seen
    # through the state API, or (should that answer late on a busy machine) by its new log.
    killed: list[str] = []
    old_logs = _trial_logs(st.node_dir("worker-1"))

    def kill_worker(trial_nodes: set[str]) -> None:
        started = worker in trial_nodes or _trial_logs(st.node_dir("worker-1")) - old_logs
        if started and not killed:
            done = _run(["bash", str(LOCAL_SH), "kill-worker", "1"], env=st.env)
            assert done.returncode == 0, done.stderr
            killed.append(st.job(sid)["status"])

    info, _ = st.follow_job(sid, timeout=480, on_trial=kill_worker)
    logs = st.job_logs(sid)
    assert killed, f"no trial ran on the worker, nothing was killed:\n{logs[-3000:]}"
    assert killed == ["RUNNING"], f"the worker was not killed mid-sweep: job was {killed[0]}"
    assert info["status"] == "SUCCEEDED", f"job {sid}: {info.get('message')}\n{logs[-4000:]}"
    _check_sweep_in_mlflow(st, _parent_run_id(logs), keys)
    nodes = {n["node_id"]: n["state"] for n in st.state("nodes")}
    assert nodes.get(worker) == "DEAD", f"the worker node should be gone: {nodes}"
    status = _run(["bash", str(LOCAL_SH), "status"], env=st.env)
    assert status.returncode == 1 and "worker-1: not running" in status.stdout


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, timeout=30
    )
    return r.returncode == 0


def _start_isolated_node(st: Stack, hidden: Path) -> subprocess.Popen[Any]:
    """One more node whose filesystem view lacks ``hidden``: what a second machine would see.

    It runs in its own mount namespace with an empty tmpfs over ``hidden``; otherwise it is an
    ordinary node of the cluster (no CPUs, so no trial lands on it).
    """
    ports = [str(_free_port()) for _ in range(6)]
    node_tmp = st.tmp / "ray" / "isolated"
    node_tmp.mkdir(parents=True, exist_ok=True)
    ray_start = [
        sys.executable, str(CLUSTER / "ray_loopback.py"), "start", "--block", "--disable-usage-stats",
        "--address", st.address, "--node-ip-address", "127.0.0.1", "--temp-dir", str(node_tmp),
        "--num-cpus", "0", "--num-gpus", "0", "--object-store-memory", str(100 * 1024 * 1024),
        "--node-manager-port", ports[0], "--object-manager-port", ports[1],
        "--dashboard-agent-listen-port", ports[2], "--dashboard-agent-grpc-port", ports[3],
        "--runtime-env-agent-port", ports[4], "--metrics-export-port", ports[5],
    ]  # fmt: skip
    cmd = [
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hidden), *ray_start,
    ]  # fmt: skip
    with (st.tmp / "isolated.log").open("w") as log:
        proc = subprocess.Popen(
            cmd, env=st.client_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    st.extra_nodes.append(proc)
    return proc


@pytest.mark.slow
def test_multi_node_sweep_with_storage_some_node_cannot_see_exits_2(stack: Stack) -> None:
    st = stack
    if not _unshare_works():
        pytest.skip("no private mount namespace here (unshare --mount): cannot fake a 2nd host")
    hidden = st.tmp / "hidden"
    storage = hidden / "local"
    storage.mkdir(parents=True)
    before = {n["node_id"] for n in st.state("nodes", state="ALIVE")}
    proc = _start_isolated_node(st, hidden)
    deadline = time.monotonic() + 120
    while len({n["node_id"] for n in st.state("nodes", state="ALIVE")} - before) < 1:
        assert proc.poll() is None, f"isolated node exited:\n{_tail(st.tmp / 'isolated.log')}"
        assert time.monotonic() < deadline, "isolated node did not join within 120 s"
        time.sleep(1)
    alive = st.state("nodes", state="ALIVE")
    assert len(alive) >= 2, f"need a multi-node cluster, have {len(alive)} node(s)"

    work = st.tmp / "driver"
    work.mkdir(exist_ok=True)
    # One grid cell: should the rule be missing, the sweep that then runs is short.
    cmd = [
        str(BIN / "mdfr"), "sweep", "run", str(SMOKE), "--address", st.address,
        "--storage", str(storage), "--tracking-uri", st.mlflow_url, "--quiet",
        "--set", "grid.setup=[proposed]",
    ]  # fmt: skip
    # The rule must fire before any stage or trial: seconds, not the sweep's minutes.
    driver = subprocess.Popen(
        cmd, env=st.client_env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = driver.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        kill_group(driver, grace=5)
        pytest.fail("the sweep was not refused within 90 s: the multi-node storage rule is missing")
    assert driver.returncode == 2, (
        f"want exit 2 (validation), got {driver.returncode}\n{stdout[-2000:]}\n{stderr[-2000:]}"
    )
    assert "Traceback" not in stderr, stderr
    assert str(storage) in stderr and "storage" in stderr, stderr
    assert "shared" in stderr.lower() and "node" in stderr.lower(), stderr
    assert not any(storage.iterdir()), f"refused sweeps write nothing: {list(storage.iterdir())}"
