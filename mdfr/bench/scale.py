"""A sweep of many short trials on a simulated GPU cluster (``mdfr bench scale``).

What it runs: a real sweep file (written from ``sweeps/table2.yaml``: its per-trial resources,
failure and checkpoint settings) with N trials, submitted as ``mdfr sweep run FILE`` in its own
process, exactly as a user's driver. The trials run :func:`tiny_trial` (through the test-only
``MDFR_TEST_TRAIN_FN`` hook, :func:`mdfr.sweep.driver.test_train_fn`): per epoch a short sleep,
a tiny checkpoint and the engine's tracking calls, so what is measured is the sweep machinery
(driver, Tune, searcher, MLflow), not training.

Where: ``--tracking server`` starts PostgreSQL and the project's MLflow server recipe
(``cluster/mlflow-server.sh``), and K worker nodes of G logical GPUs each with
``cluster/local.sh`` (separate ``ray start`` processes on loopback; no CUDA). ``--tracking
sqlite`` logs to a SQLite file instead, which the driver refuses on several nodes (trials on
other machines could not reach it), so the same K x G GPUs are declared by one node: the
one-machine case a SQLite store is for.

What comes out (:func:`summarise`): trials finished and MLflow child runs found, wall time,
the driver's CPU milliseconds per trial (from Tune's start to its end), MLflow calls per trial
and their 95th-percentile latency, the most trials seen at once on one GPU, the driver's peak
RSS, and where the driver's and the trials' time went (:mod:`mdfr.probe` spans).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import yaml

from mdfr import probe, tracking
from mdfr.bench import servers
from mdfr.bench.machine import envelope, load_average
from mdfr.environ import scoped_env
from mdfr.errors import MdfrError, UsageError
from mdfr.names import EPOCH, TRAIN_LOSS, VAL_ACC, Tag

TABLE2 = servers.ROOT / "sweeps" / "table2.yaml"
EPOCH_S_ENV = "MDFR_BENCH_EPOCH_S"
TRAIN_FN = "mdfr.bench.scale:tiny_trial"


# --------------------------------------------------------------------------- the trial


def tiny_trial(
    cfg: Any,
    report: Callable[[dict[str, Any], str | None], None] | None = None,
    tracker: Any = None,
    checkpoint: Any = None,
) -> dict[str, Any]:
    """A trial that sleeps ``$MDFR_BENCH_EPOCH_S`` per epoch and tracks like the engine.

    Start: params, tags and the config as an artifact; per epoch: a small checkpoint file,
    metrics and a report with that checkpoint; end: the test metrics. Resumes after the
    epoch of ``checkpoint`` when given one.
    """
    epoch_s = float(os.environ.get(EPOCH_S_ENV, "1.0"))
    out = Path(cfg.output_dir)
    state_dir = out / "checkpoint"
    first = 0
    if checkpoint and (Path(checkpoint) / "epoch").is_file():
        first = int((Path(checkpoint) / "epoch").read_text())
    if tracker is not None:
        cfg_path = out / "config.json"
        cfg_path.write_text(json.dumps(cfg.to_flat_dict(), default=str))
        tracker.log_params(cfg.to_flat_dict())
        tracker.set_tags({Tag.MODE: cfg.mode, Tag.SEED: str(cfg.seed), Tag.BENCH: "scale"})
        tracker.log_artifact(str(cfg_path))
    for epoch in range(first, cfg.train.epochs):
        time.sleep(epoch_s)
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "state.pt").write_bytes(bytes(1024))
        (state_dir / "epoch").write_text(str(epoch + 1))
        metrics = {EPOCH: epoch + 1, VAL_ACC: 0.5, TRAIN_LOSS: 1.0 / (epoch + 1)}
        if tracker is not None:
            tracker.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch + 1)
        if report is not None:
            report(metrics, str(state_dir))
    result = {"status": "ok", "acc_original": 0.5, "checkpoint": str(state_dir)}
    if tracker is not None:
        tracker.log_metrics({"test/acc_original": 0.5}, step=cfg.train.epochs)
    return {**result, "epochs": cfg.train.epochs}


# --------------------------------------------------------------------------- the sweep file


def sweep_file(
    path: Path,
    *,
    trials: int,
    epochs: int,
    dataset: Path,
    storage: Path,
    tracking_uri: str,
    max_concurrent: int | None,
) -> dict[str, Any]:
    """Write the benchmark's sweep file: table2.yaml's resources, N seeds of a short trial."""
    table2 = yaml.safe_load(TABLE2.read_text())
    doc = {
        "name": f"scale-n{trials}",
        "experiment": "mdfr-bench-scale",
        "description": f"mdfr bench scale: {trials} short trials, table2.yaml's resources",
        "base": {
            "mode": "pretrain",  # needs no pretrained CMI net; the trial does not train
            "data": {"dataset": str(dataset)},
            "model": {"backbone": "test_remnet"},
            "train": {"epochs": epochs, "device": "cuda"},
        },
        "grid": {"seed": list(range(trials))},
        "resources": table2["resources"],
        "failure": table2.get("failure", {}),
        "checkpoint": table2.get("checkpoint", {}),
        "storage": str(storage),
        "tracking_uri": tracking_uri,
        "pretrain": False,
    }
    if max_concurrent:
        doc["max_concurrent"] = max_concurrent
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=100))
    return doc


# --------------------------------------------------------------------------- running it


def run_scale_bench(
    *,
    trials: int,
    nodes: int,
    gpus_per_node: int,
    tracking_mode: str = "server",
    epochs: int = 2,
    trial_s: float = 2.0,
    max_concurrent: int | None = None,
    timeout_s: float = 7200.0,
    profile: bool = False,
    cache: str | Path | None = None,
    keep: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark; returns the result document (see the module docstring).

    Args:
        trials, nodes, gpus_per_node: N trials on K nodes of G logical GPUs.
        tracking_mode: ``server`` (PostgreSQL-backed MLflow server) or ``sqlite``.
        epochs, trial_s: each trial reports ``epochs`` times over ``trial_s`` seconds of sleep.
        max_concurrent: the sweep file's ``max_concurrent`` (default: as many as fit).
        timeout_s: the driver is stopped after this long (the figures so far are kept).
        profile: sample the driver with py-spy and say where its CPU went.
        cache: where the bench dataset is kept; keep: keep the work folder.
    """
    # Lazy: the bench dataset needs the data stack (numpy, Pillow, pyarrow) only when run.
    from mdfr.bench.loader import DEFAULT_CACHE, ensure_dataset

    if tracking_mode not in ("server", "sqlite"):
        raise UsageError(f"--tracking must be server or sqlite, got {tracking_mode!r}")
    for name, value in (("--trials", trials), ("--nodes", nodes), ("--gpus-per-node",
                        gpus_per_node), ("--epochs", epochs)):  # fmt: skip
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    config = {
        "trials": trials, "nodes": nodes, "gpus_per_node": gpus_per_node,
        "tracking": tracking_mode, "epochs": epochs, "trial_s": trial_s,
        "max_concurrent": max_concurrent, "timeout_s": timeout_s, "sweep_template": "sweeps/table2.yaml",
    }  # fmt: skip
    doc = envelope("scale", "cpu", config)
    work = Path(tempfile.mkdtemp(prefix="mdfr-bench-scale-"))
    try:
        dataset = ensure_dataset("quick", Path(cache or DEFAULT_CACHE), log)
        with contextlib.ExitStack() as stack:
            run = _Run(work, trials, epochs, trial_s, log)
            run.start_services(stack, tracking_mode, nodes, gpus_per_node)
            doc["sweep_file"] = sweep_file(
                work / "scale.yaml", trials=trials, epochs=epochs, dataset=dataset,
                storage=work / "ray", tracking_uri=run.uri, max_concurrent=max_concurrent,
            )  # fmt: skip
            run.drive(work / "scale.yaml", timeout_s, profile)
            doc["results"] = summarise(run)
            doc["results"]["mlflow_server_cpu_s"] = run.server_cpu_s()
    finally:
        if keep:
            log(f"scale: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    doc["targets"] = _targets(doc["results"], trials, nodes, gpus_per_node)
    doc["machine"]["load_average_end"] = load_average()
    # The work folder is temporary (and gone unless --keep): its path tells a reader nothing.
    return json.loads(json.dumps(doc, default=str).replace(str(work), "$WORK"))


class _Run:
    """One benchmark run: its services, the driver process and what they left on disk."""

    def __init__(self, work: Path, trials: int, epochs: int, trial_s: float, log: Callable):
        self.work = work
        self.trials = trials
        self.log = log
        self.env = {
            probe.ENV: "1",
            EPOCH_S_ENV: str(trial_s / epochs),
            "MDFR_TEST_TRAIN_FN": TRAIN_FN,
        }
        self.uri = ""
        self.driver_args: list[str] = []
        self.server: servers.MlflowServer | None = None
        self.backend = "sqlite"
        self.wall_s = math.nan
        self.returncode: int | None = None
        self.rss_peak_sampled_mb = 0.0
        self.profile: dict[str, Any] | None = None

    def start_services(
        self, stack: contextlib.ExitStack, mode: str, nodes: int, gpus_per_node: int
    ) -> None:
        table2 = yaml.safe_load(TABLE2.read_text())["resources"]
        per_gpu = max(1, math.floor(1 / table2["gpu"])) if table2["gpu"] < 1 else 1
        cpus_per_node = gpus_per_node * per_gpu * int(table2["cpu"])
        if mode == "sqlite":
            self.uri = f"sqlite:///{self.work / 'mlflow.db'}"
            # One node: the driver refuses a SQLite store on several (see the module docstring).
            self.driver_args = ["--num-cpus", str(cpus_per_node * nodes + 1),
                                "--num-gpus", str(gpus_per_node * nodes)]  # fmt: skip
            self.log(f"scale: one local node, {gpus_per_node * nodes} logical GPUs, SQLite")
            return
        pg, note = servers.start_postgres()
        if pg is None:
            raise MdfrError(f"--tracking server needs PostgreSQL: {note}")
        stack.callback(pg.stop)
        self.backend = "postgresql"
        self.log(f"scale: {note} on port {pg.port}; starting the MLflow server")
        self.server = servers.start_mlflow_server(pg.uri, self.work, pg_password=pg.password)
        stack.callback(self.server.stop)
        self.uri = self.server.url
        self.env.update(self.server.client_env)
        self.log(f"scale: MLflow at {self.uri}; starting {nodes} nodes x {gpus_per_node} GPUs")
        cluster = servers.start_local_cluster(
            nodes, head_cpus=1, worker_cpus=cpus_per_node, worker_gpus=gpus_per_node,
            env=self.env,
        )  # fmt: skip
        stack.callback(cluster.stop)
        self.env.update(cluster.client_env)
        self.driver_args = ["--address", cluster.address]

    def drive(self, sweep: Path, timeout_s: float, profile: bool) -> None:
        """``mdfr sweep run`` in its own process, its memory sampled, within ``timeout_s``."""
        cmd = [sys.executable, "-m", "mdfr.cli", "sweep", "run", str(sweep), "--quiet",
               *self.driver_args]  # fmt: skip
        env = {**os.environ, **self.env}
        self.command = " ".join(cmd[2:])
        self.log(f"scale: {self.command}")
        t0 = time.time()
        with (self.work / "driver.log").open("w") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=self.work, start_new_session=True)  # fmt: skip
        with _sample_rss(proc.pid) as peak, _py_spy(proc.pid, self.work, profile) as prof:
            try:
                self.returncode = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.log(f"scale: driver still running after {timeout_s:.0f} s: stopping it")
                servers.kill_group(proc, grace=60)
                self.returncode = None
        self.wall_s = time.time() - t0
        self.rss_peak_sampled_mb = peak[0]
        self.profile = prof.get("summary")
        if self.returncode != 0:
            tail = (self.work / "driver.log").read_text(errors="replace").splitlines()[-25:]
            lines = "\n".join(tail)
            self.log(f"scale: driver exited with {self.returncode}:\n{lines}")

    def server_cpu_s(self) -> float | None:
        """CPU seconds the MLflow server's processes used (PostgreSQL not included)."""
        if self.server is None:
            return None
        try:
            procs = [psutil.Process(self.server.proc.pid)]
            procs += procs[0].children(recursive=True)
            return round(sum(p.cpu_times().user + p.cpu_times().system for p in procs), 1)
        except psutil.Error:
            return None


@contextlib.contextmanager
def _sample_rss(pid: int, every_s: float = 0.5) -> Iterator[list[float]]:
    """The peak RSS (MiB) of process ``pid`` alone, sampled while the block runs."""
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        try:
            proc = psutil.Process(pid)
            while not stop.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss / 2**20)
                stop.wait(every_s)
        except psutil.Error:
            return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join(5)


# Where the driver's CPU went, by the first rule whose text is in a sampled stack (py-spy).
PROFILE_BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mdfr searcher (grid x Optuna)", ("mdfr/sweep/searcher.py",)),
    (
        "mdfr callbacks (run closer, progress)",
        ("mdfr/sweep/callbacks.py", "mdfr/sweep/progress.py"),
    ),
    ("Tune experiment snapshots", ("experiment_state.py", "save_to_dir")),
    ("Tune checkpoint bookkeeping", ("checkpoint_manager.py", "_process_trial_save")),
    ("Tune result handling", ("_on_training_result", "_process_trial_result", "on_trial_result")),
    ("Tune scheduling and actors", ("ray/tune/",)),
    ("Ray core (driver side)", ("ray/",)),
    ("MLflow", ("mlflow/",)),
)


@contextlib.contextmanager
def _py_spy(pid: int, work: Path, enabled: bool) -> Iterator[dict[str, Any]]:
    """Sample process ``pid`` with py-spy while the block runs; ``summary`` filled at the end."""
    out: dict[str, Any] = {}
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not enabled or exe is None:
        if enabled:
            out["summary"] = {"error": "py-spy not found (pip install py-spy)"}
        yield out
        return
    raw = work / "driver-profile.txt"
    spy = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--rate", "20", "--format", "raw", "--output",
         str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield out
    finally:
        try:
            spy.wait(timeout=120)  # py-spy stops (and writes) when the driver exits
        except subprocess.TimeoutExpired:
            spy.terminate()
            spy.wait(timeout=30)
        out["summary"] = profile_summary(raw)


def profile_summary(raw: Path) -> dict[str, Any]:
    """Shares of the sampled (non-idle) driver stacks per :data:`PROFILE_BUCKETS` bucket."""
    counts: dict[str, int] = {}
    total = 0
    try:
        lines = raw.read_text(errors="replace").splitlines()
    except OSError as e:
        return {"error": f"no profile: {e}"}
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        bucket = next((b for b, keys in PROFILE_BUCKETS if any(k in stack for k in keys)), "other")
        counts[bucket] = counts.get(bucket, 0) + int(n)
    return {
        "samples": total,
        "share": {b: round(c / total, 3) for b, c in sorted(counts.items(), key=lambda x: -x[1])}
        if total
        else {},
    }


# --------------------------------------------------------------------------- figures


def summarise(run: _Run) -> dict[str, Any]:
    """The figures of a finished (or stopped) run, from what the driver and trials left."""
    folders = sorted((run.work / "ray").glob(f"scale-n{run.trials}-*"))
    if not folders:
        raise MdfrError(f"the driver made no sweep folder; see {run.work / 'driver.log'}")
    exp_dir = folders[-1]
    trials = [json.loads(p.read_text()) for p in exp_dir.glob(f"trials/*/{probe.TRIAL_FILE}")]
    driver_file = exp_dir / probe.DRIVER_FILE
    driver = json.loads(driver_file.read_text()) if driver_file.is_file() else {"spans": {}}
    spans = driver["spans"]
    n = run.trials
    calls = [
        d
        for part in [spans, *(t["spans"] for t in trials)]
        for k, v in part.items()
        if k.startswith("mlflow.") and k not in ("mlflow.lock_wait", "mlflow.client_init")
        for d in v
    ]
    fit = _between(spans, "driver.fit_start", "driver.fit_end")
    return {
        "trials": n,
        "finished": len(list(exp_dir.glob("trials/*/mdfr_result.json"))),
        "mlflow_trial_runs": _trial_runs(exp_dir, run),
        "wall_s": round(run.wall_s, 1),
        "fit_wall_s": fit["wall_s"],
        "driver_exit_code": run.returncode,
        "driver_ms_per_trial": round(1000 * fit["cpu_s"] / n, 1) if fit["cpu_s"] else None,
        "driver_cpu_fit_s": fit["cpu_s"],
        "mlflow_calls_per_trial": round(len(calls) / n, 2),
        "mlflow_p95_ms": round(1000 * probe.percentile(calls, 95), 1) if calls else None,
        "mlflow_lock_waits": sum(len(t["spans"].get("mlflow.lock_wait", [])) for t in trials),
        "max_concurrent_per_gpu": max_per_gpu(trials),
        "gpus_used": len({(t.get("node"), g) for t in trials for g in t.get("gpu_ids", [])}),
        "driver_peak_rss_mb": round(max(driver.get("peak_rss_mb", 0), run.rss_peak_sampled_mb)),
        "trials_per_s": round(n / fit["wall_s"], 2) if fit["wall_s"] else None,
        "tracking_backend": run.backend,
        "driver_command": run.command,
        "driver_profile": run.profile,
        "driver_spans": probe.summary(spans),
        "trial_spans": probe.summary(probe.merge([t["spans"] for t in trials])),
    }


def _between(spans: dict[str, list[float]], start: str, end: str) -> dict[str, float | None]:
    def first(prefix: str, name: str) -> float | None:
        v = spans.get(f"{prefix}{name}")
        return v[0] if v else None

    out: dict[str, float | None] = {}
    for key, prefix in (("wall_s", probe.MARK), ("cpu_s", probe.CPU_MARK)):
        a, b = first(prefix, start), first(prefix, end)
        out[key] = round(b - a, 3) if a is not None and b is not None else None
    return out


def max_per_gpu(trials: list[dict[str, Any]]) -> int:
    """The most trials that held one GPU (node, GPU id) at the same moment."""
    events: dict[tuple[Any, str], list[tuple[float, int]]] = {}
    for t in trials:
        for g in t.get("gpu_ids", []):
            events.setdefault((t.get("node"), g), []).extend([(t["start"], 1), (t["end"], -1)])
    best = 0
    for ev in events.values():
        now = 0
        for _, step in sorted(ev, key=lambda e: (e[0], e[1])):  # an end before a start at a tie
            now += step
            best = max(best, now)
    return best


def _trial_runs(exp_dir: Path, run: _Run) -> int | None:
    """The sweep's MLflow child runs of kind trial, counted in the store itself."""
    try:
        state = json.loads((exp_dir / "mdfr_sweep.json").read_text())
    except (OSError, ValueError):
        return None
    creds = {k: v for k, v in run.env.items() if k.startswith("MLFLOW_TRACKING_")}
    with scoped_env(creds):
        runs = tracking.fetch_sweep_runs(
            state["plan"]["experiment"], run.uri, parent_run_id=state["parent_run_id"]
        )
    return len(runs)


def _targets(results: dict[str, Any], trials: int, nodes: int, gpus: int) -> dict[str, Any]:
    applies = trials >= 1000 and nodes * gpus >= 32
    return {
        "applies_to": "N = 1000 trials on 4 nodes x 8 GPUs",
        "applies": applies,
        "all_trial_runs": results.get("mlflow_trial_runs") == trials
        and results.get("finished") == trials,
        "driver_ms_per_trial_max": 50,
        "driver_ms_per_trial_met": (results.get("driver_ms_per_trial") or math.inf) <= 50,
        "driver_rss_mb_max": 2048,
        "driver_rss_met": results.get("driver_peak_rss_mb", math.inf) <= 2048,
    }
