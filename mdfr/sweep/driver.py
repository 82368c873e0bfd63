"""The only Ray Tune ``Tuner`` code: run and resume sweeps.

``run_sweep(plan)``:

1. resolve every path to an absolute one (Tune changes the trials' working directory) and
   check the tracking store (reachable, credentials accepted) before anything starts;
2. connect to Ray (``--address``/``RAY_ADDRESS``) or start a local instance on loopback, and
   check the cluster before writing anything: trials fit on it, and on several nodes the
   tracking store is a server and every node sees the sweep's paths
   (:mod:`mdfr.sweep.preflight`);
3. open the sweep's MLflow parent run and write the sweep state file
   ``<storage>/<name>-<timestamp>/mdfr_sweep.json`` (resolved plan, run ids, hashes);
4. run the stages (:mod:`mdfr.sweep.stages`): dataset once, pretraining once per content key;
5. one ``Tuner``: the grid x Optuna searcher, ASHA when asked, ``with_resources``,
   ``FailureConfig``, checkpoints kept by Tune, a live progress table, and a callback that
   closes the child runs of trials that were pruned or failed for good.

``resume_sweep(name_or_path)`` reopens that folder: ``Tuner.restore`` when Tune got to
snapshot the experiment, otherwise (killed during the stages) the same steps again, cached.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdfr.errors import MdfrError, UsageError
from mdfr.sweep import preflight, stages
from mdfr.sweep.spec import DEFAULT_STORAGE, SweepPlan, check_storage, check_tracking_uri
from mdfr.sweep.stages import atomic_write_json

STATE_FILE = "mdfr_sweep.json"
OPTUNA_FILE = "optuna.db"
TrainFn = Callable[..., dict[str, Any]]


@dataclass
class SweepOutcome:
    """What a finished (or interrupted-and-resumed) sweep produced."""

    exp_dir: Path
    experiment: str
    tracking_uri: str
    parent_run_id: str
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t["status"]] = out.get(t["status"], 0) + 1
        return out

    @property
    def failed(self) -> int:
        return sum(1 for t in self.trials if t["status"] == "error")


# --------------------------------------------------------------------------- Ray session


def use_loopback() -> None:
    """Make this process, and the Ray services it starts, use and bind 127.0.0.1 only.

    Ray replaces ``--node-ip-address 127.0.0.1`` with the host's routable address unless it
    runs in single-node mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), which Ray reads once,
    at import: when Ray is already imported the flag is set on the module as well.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def use_token_auth() -> None:
    """Send the local Ray auth token (``~/.ray/auth_token``) when connecting to a cluster.

    Ray 2.60 clusters require a token, but a client only sends one when ``RAY_AUTH_MODE`` is
    ``token``, which Ray reads at import (jobs submitted to the cluster inherit it). An explicit
    ``RAY_AUTH_MODE`` from the user always wins.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    if "ray" in sys.modules:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    elif (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start Ray locally on loopback.

    A session that was already initialised (tests, notebooks) is used and left running.
    """
    target = address or os.environ.get("RAY_ADDRESS")
    host = (target or "").removeprefix("ray://").rsplit(":", 1)[0]
    if not _ray_initialized():
        if not target or host in ("127.0.0.1", "localhost"):
            use_loopback()  # a local instance, or a one-node cluster on this machine's loopback
        if target:
            use_token_auth()
    import ray

    if ray.is_initialized():
        yield
        return
    # uv's runtime-env hook would re-create environments for workers; we ship the venv.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    common = {"logging_level": logging.WARNING, "log_to_driver": True}
    try:
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, **common)
        else:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                **common,
            )
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise MdfrError(f"cannot start or reach Ray (address {address or 'local'}): {e}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _ray_initialized() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


# --------------------------------------------------------------------------- state


def _abs(path: str | Path, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root / p).resolve()


def read_state(exp_dir: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((exp_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        raise UsageError(f"{exp_dir}: not a sweep folder (no {STATE_FILE})") from None


def find_sweep(name_or_path: str, storage: str | None = None, root: Path | None = None) -> Path:
    """A sweep folder from its path, or the newest ``<storage>/<name>-*`` folder."""
    root = root or Path.cwd()
    p = _abs(name_or_path, root)
    if (p / STATE_FILE).is_file():
        return p
    base = _abs(_storage_arg(storage) or DEFAULT_STORAGE, root)
    found = sorted(
        (d for d in base.glob(f"{name_or_path}-*") if (d / STATE_FILE).is_file()),
        key=lambda d: d.name,
    )
    if not found:
        raise UsageError(
            f"no sweep {name_or_path!r}: not a sweep folder, and no {base}/{name_or_path}-* "
            "folder holds one (pass the folder path or --storage)"
        )
    return found[-1]


def list_sweeps(storage: str | None = None, root: Path | None = None) -> list[dict[str, Any]]:
    """Sweep folders under ``storage`` with their name, trial count and progress."""
    base = _abs(_storage_arg(storage) or DEFAULT_STORAGE, root or Path.cwd())
    out = []
    for d in sorted(base.glob("*/" + STATE_FILE)):
        state = read_state(d.parent)
        trials_dir = d.parent / "trials"
        done = len(list(trials_dir.glob("*/mdfr_result.json"))) if trials_dir.is_dir() else 0
        out.append(
            {
                "name": state["plan"]["name"],
                "path": str(d.parent),
                "trials": SweepPlan.from_dict(state["plan"]).num_trials,
                "finished": done,
                "phase": state.get("phase", "?"),
            }
        )
    return out


def _storage_arg(storage: str | None) -> str | None:
    """``--storage`` under the sweep file's rules (``s3://b`` is refused, not a folder ``s3:``)."""
    return None if storage is None else check_storage(storage, "--storage")


# --------------------------------------------------------------------------- run / resume


def run_sweep(
    plan: SweepPlan,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    train_fn: TrainFn | None = None,
    root: Path | None = None,
    num_cpus: int | None = None,
    log: Callable[[str], None] = print,
    verbose: int = 1,
) -> SweepOutcome:
    """Run a validated sweep to completion (see the module docstring).

    Args:
        plan: from :func:`mdfr.sweep.spec.load_sweep`.
        storage, tracking_uri: override the sweep file's.
        address: Ray address (``auto``, ``ray://host:10001``); None starts Ray locally.
        train_fn: the trial function, ``mdfr.engine.train_trial`` by default.
        root: directory relative paths are resolved against (default: the current one).
        num_cpus: CPUs of a locally started Ray instance (default: all).
        log: receives progress lines.
        verbose: Tune's verbosity (0 silent, 1 progress table, 2 per-trial results).
    """
    from mdfr import tracking

    root = (root or Path.cwd()).resolve()
    if tracking_uri is not None:
        tracking_uri = check_tracking_uri(tracking_uri, "--tracking-uri")
    store_dir = _abs(_storage_arg(storage) or plan.storage, root)
    uri = tracking.resolve_uri(tracking_uri or plan.tracking_uri, root)
    tracking.check_reachable(uri)
    if plan.prepare is None:  # fail before Ray starts, not inside the first trial
        _check_datasets({str(_abs(c.config["data.dataset"], root)) for c in plan.cells})
    with ray_session(address, num_cpus):
        # Everything about the cluster is checked before the sweep folder or its MLflow run
        # exist: a refused sweep leaves nothing behind.
        _check_resources(plan, local=not (address or os.environ.get("RAY_ADDRESS")), log=log)
        preflight.check_cluster(_shared_paths(plan, store_dir, root), uri)
        exp_dir = store_dir / f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        while exp_dir.exists():  # two runs within one second
            exp_dir = exp_dir.with_name(exp_dir.name + "x")
        exp_dir.mkdir(parents=True)
        state: dict[str, Any] = {
            "phase": "stages",
            "plan": plan.to_dict(),
            "root": str(root),
            "exp_dir": str(exp_dir),
            "storage": str(store_dir),
            "tracking_uri": uri,
            "git_commit": tracking.git_commit(),
            "fault": _fault_from_env(),
        }
        store = tracking.Store(uri)
        exp_id, parent = store.parent_run(
            plan.experiment, plan.name, str(exp_dir), {"mdfr.git_commit": state["git_commit"]}
        )
        state.update(experiment_id=exp_id, parent_run_id=parent)
        with _parent_on_failure(state):
            atomic_write_json(exp_dir / STATE_FILE, state)
            _log_parent(store, parent, plan)
            log(f"sweep {plan.name}: {plan.num_trials} trials -> {exp_dir}")
            log(f"MLflow: experiment {plan.experiment!r}, parent run {parent} at {uri}")
            log(f"if this driver stops: mdfr sweep resume {exp_dir}")
            state = _run_stages(state, train_fn, log)
            return _fit(
                state, train_fn, restore=False, retry_errored=False, verbose=verbose, log=log
            )


def _shared_paths(plan: SweepPlan, store_dir: Path, root: Path) -> list[preflight.SharedPath]:
    """What trials read or write, in the order a refusal names them: storage first."""
    shared = [
        preflight.SharedPath("storage", store_dir, "read and write", "--storage /mnt/mdfr/ray")
    ]
    if plan.prepare is not None:
        # The dataset is prepared into it (or found there by its content hash).
        shared.append(
            preflight.SharedPath(
                "prepare.out",
                _abs(plan.prepare.out, root),
                "read the prepared dataset",
                "--set prepare.out=/mnt/mdfr/data/prepared",
            )
        )
    else:
        shared += _given_inputs(plan, root, "data.dataset", "/mnt/mdfr/data/prepared/NAME")
    shared += _given_inputs(plan, root, "model.cmi_checkpoint", "/mnt/mdfr/cmi.pt", store_dir)
    return shared


def _given_inputs(
    plan: SweepPlan, root: Path, key: str, example: str, skip_under: Path | None = None
) -> list[preflight.SharedPath]:
    """The distinct paths the sweep file gives for ``key``, as files that stand for them.

    A dataset is known by its ``manifest.json``. Paths the driver lacks are left to the
    checks that name them; checkpoints of the pretraining stage (under the storage) are
    covered by the storage's probe.
    """
    where = f"grid.{key}" if key in plan.axes else f"base.{key}"
    value = f"[{example}]" if key in plan.axes else example
    found = []
    for path in sorted({_abs(c.config[key], root) for c in plan.cells if c.config.get(key)}):
        file = path / "manifest.json" if key == "data.dataset" else path
        if skip_under is not None and path.is_relative_to(skip_under):
            continue
        if file.is_file():
            found.append(
                preflight.SharedPath(where, path, "read it", f"--set {where}={value}", file=file)
            )
    return found


@contextlib.contextmanager
def _parent_on_failure(state: dict[str, Any]) -> Iterator[None]:
    """A sweep that stops early leaves its parent run KILLED/FAILED; resume reopens it."""
    try:
        yield
    except BaseException as e:
        from mdfr.tracking import Store

        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        with contextlib.suppress(Exception):  # the original error matters more
            Store(state["tracking_uri"]).finish(state["parent_run_id"], status, "interrupted")
        raise


def resume_sweep(
    name_or_path: str,
    *,
    storage: str | None = None,
    address: str | None = None,
    train_fn: TrainFn | None = None,
    retry_errored: bool = False,
    num_cpus: int | None = None,
    log: Callable[[str], None] = print,
    verbose: int = 1,
) -> SweepOutcome:
    """Continue a sweep whose driver stopped: no finished trial reruns, none is lost.

    Args:
        name_or_path: the sweep folder, or a sweep name (newest ``<storage>/<name>-*``).
        retry_errored: also rerun trials that failed for good (from their last checkpoint).
    """
    from mdfr import tracking

    exp_dir = find_sweep(name_or_path, storage)
    state = read_state(exp_dir)
    tracking.check_reachable(state["tracking_uri"])
    plan = SweepPlan.from_dict(state["plan"])
    with ray_session(address, num_cpus):
        local = not (address or os.environ.get("RAY_ADDRESS"))
        _check_resources(plan, local, log)
        shared = _shared_paths(plan, Path(state["storage"]), Path(state["root"]))
        preflight.check_cluster(shared, state["tracking_uri"])
        tracking.Store(state["tracking_uri"]).set_status(state["parent_run_id"], "RUNNING")
        log(f"resuming sweep {plan.name} in {exp_dir}")
        with _parent_on_failure(state):
            return _resume(state, exp_dir, train_fn, retry_errored, verbose, log)


def _resume(
    state: dict[str, Any],
    exp_dir: Path,
    train_fn: TrainFn | None,
    retry_errored: bool,
    verbose: int,
    log: Callable[[str], None],
) -> SweepOutcome:
    from ray import tune

    if state["phase"] == "tune" and tune.Tuner.can_restore(str(exp_dir)):
        return _fit(
            state, train_fn, restore=True, retry_errored=retry_errored, verbose=verbose, log=log
        )
    state = _run_stages(state, train_fn, log)
    return _fit(state, train_fn, restore=False, retry_errored=False, verbose=verbose, log=log)


# --------------------------------------------------------------------------- internals


def _fault_from_env() -> str:
    # Test-only fault injection, documented in mdfr.sweep.trainable.
    return os.environ.get("MDFR_TEST_FAULT", "")


def _log_parent(store: Any, parent: str, plan: SweepPlan) -> None:
    tracker = store.tracker(parent)
    tracker.log_params(
        {
            "sweep.name": plan.name,
            "sweep.trials": plan.num_trials,
            "sweep.cells": len(plan.cells),
            "sweep.samples_per_cell": plan.num_samples,
            "sweep.axes": ",".join(plan.axes),
            "sweep.search": ",".join(a.name for a in plan.search),
            "sweep.sampler": plan.search_alg.sampler if plan.search else "none",
            "sweep.scheduler": plan.scheduler.name,
            "sweep.resources": f"cpu={plan.resources.cpu},gpu={plan.resources.gpu}",
        }
    )
    if plan.source and Path(plan.source).is_file():
        tracker.log_artifact(plan.source)


def _check_resources(plan: SweepPlan, local: bool, log: Callable[[str], None]) -> None:
    """A trial that can never be placed would leave the sweep PENDING forever."""
    import ray

    have = ray.cluster_resources()
    need = {"CPU": plan.resources.cpu, "GPU": plan.resources.gpu}
    short = {k: v for k, v in need.items() if v > 0 and have.get(k, 0) < v}
    if not short:
        return
    what = ", ".join(f"{v:g} {k}" for k, v in short.items())
    avail = ", ".join(f"{have.get(k, 0):g} {k}" for k in short)
    msg = f"each trial asks for {what} (resources: in the sweep file) but the cluster has {avail}"
    if local:
        raise UsageError(f"{msg}; lower resources or run on a cluster with --address")
    log(f"warning: {msg}; trials wait until an autoscaler adds such nodes")


def _check_datasets(paths: set[str]) -> None:
    for path in sorted(paths):
        if not (Path(path) / "manifest.json").is_file():
            raise UsageError(
                f"dataset {path} is not prepared (no manifest.json): run `mdfr data prepare` "
                "or add a prepare: section to the sweep file"
            )


def _run_stages(
    state: dict[str, Any], train_fn: TrainFn | None, log: Callable[[str], None]
) -> dict[str, Any]:
    """Dataset and pretraining stages; resolves every cell to absolute paths."""
    from mdfr.sweep.trainable import default_train_fn

    plan = SweepPlan.from_dict(state["plan"])
    root = Path(state["root"])
    exp_dir = Path(state["exp_dir"])
    dataset: str | None = None
    if plan.prepare is not None:
        dataset = str(stages.prepare_dataset(plan.prepare, root, log))
    cells = []
    for cell in plan.cells:
        flat = dict(cell.config)
        flat["data.dataset"] = dataset or str(_abs(flat["data.dataset"], root))
        if flat["model.cmi_checkpoint"]:
            flat["model.cmi_checkpoint"] = str(_abs(flat["model.cmi_checkpoint"], root))
        cells.append(type(cell)(**{**cell.__dict__, "config": flat}))
    _check_datasets({c.config["data.dataset"] for c in cells})
    info = stages.dataset_info(cells[0].config["data.dataset"])
    state.update(dataset_hash=info["hash"], codec=info["codec"])
    tracking_info = {
        "uri": state["tracking_uri"],
        "experiment_id": state["experiment_id"],
        "parent_run_id": state["parent_run_id"],
        "sweep": plan.name,
        "git_commit": state["git_commit"],
        "dataset_hash": info["hash"],
        "codec": info["codec"],
    }
    if plan.pretrain is not None:
        jobs: dict[str, dict[str, Any]] = {}
        needs: dict[int, str] = {}
        for cell in cells:
            if stages.needs_pretraining(cell.config):
                flat = stages.pretrain_config(plan, cell.config, plan.resources.cpu)
                key = stages.pretrain_key(flat, stages.dataset_info(flat["data.dataset"])["hash"])
                jobs[key] = flat
                needs[cell.index] = key
        cache = Path(state["storage"]) / "cache" / "pretrain"
        paths = stages.pretrain_all(
            jobs, cache, plan, train_fn or default_train_fn(), tracking_info, log
        )
        cells = [
            type(c)(
                **{
                    **c.__dict__,
                    "config": {**c.config, "model.cmi_checkpoint": paths[needs[c.index]]},
                }
            )
            if c.index in needs
            else c
            for c in cells
        ]
    state["plan"] = plan.with_cells(cells).to_dict()
    state["phase"] = "tune"
    atomic_write_json(exp_dir / STATE_FILE, state)
    # The resolved plan (absolute paths, pretrained checkpoints) beside the sweep file.
    from mdfr.tracking import Store

    Store(state["tracking_uri"]).tracker(state["parent_run_id"]).log_artifact(
        str(exp_dir / STATE_FILE)
    )
    return state


def _fit(
    state: dict[str, Any],
    train_fn: TrainFn | None,
    *,
    restore: bool,
    retry_errored: bool,
    verbose: int,
    log: Callable[[str], None],
) -> SweepOutcome:
    from ray import tune

    from mdfr.sweep.searcher import FINAL_KEY, GridOptunaSearcher
    from mdfr.sweep.trainable import make_trainable

    plan = SweepPlan.from_dict(state["plan"])
    exp_dir = Path(state["exp_dir"])
    # The new AIR output ignores reporters; the classic table shows just our columns.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Snapshot the experiment often: fewer trials to hand out again after a driver crash.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    # num_to_keep forces extra snapshots; harmless at our sizes, so no warning about it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    resources = {"cpu": plan.resources.cpu, "gpu": plan.resources.gpu}
    trainable = tune.with_resources(make_trainable(train_fn), resources)
    if restore:
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=retry_errored)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"mdfr_state": str(exp_dir / STATE_FILE)},
            tune_config=tune.TuneConfig(
                search_alg=GridOptunaSearcher(plan, f"sqlite:///{exp_dir / OPTUNA_FILE}"),
                scheduler=_scheduler(plan),
                num_samples=plan.num_trials,
                max_concurrent_trials=plan.max_concurrent,
                # Every trial of a sweep asks for the same resources, so a finished trial's
                # process can take the next one: without this each trial pays a fresh
                # interpreter plus torch/MLflow imports (8-14 s a round on 2 CPUs; see
                # results/bench/sweep-ab-reuse-actors-cpu-2026-11-26.json).
                reuse_actors=True,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=exp_dir.name,
                storage_path=str(exp_dir.parent),
                failure_config=tune.FailureConfig(max_failures=plan.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=plan.num_to_keep),
                progress_reporter=_reporter(plan),
                callbacks=[_closer(state)],
                verbose=verbose,
            ),
        )
    results = tuner.fit()
    trials = []
    for r in results:
        cfg = r.config or {}
        m = r.metrics or {}
        if r.error is not None:
            status = "error"
        elif m.get(FINAL_KEY):
            status = str(m.get("status", "ok"))
        else:
            status = "pruned"
        trials.append(
            {
                "trial_key": cfg.get("trial_key"),
                "status": status,
                "metric": m.get(plan.search_alg.metric or plan.scheduler.metric or "val/acc"),
                "path": r.path,
            }
        )
    trials.sort(key=lambda t: str(t["trial_key"]))
    outcome = SweepOutcome(
        exp_dir, plan.experiment, state["tracking_uri"], state["parent_run_id"], trials
    )
    _finish_parent(state, outcome)
    return outcome


def _trial_name(trial: Any) -> str:
    # Our stable key first (folders sort by cell), Tune's id last (unique per Tune trial).
    return f"{trial.config.get('trial_key', 'trial')}_{trial.trial_id}"


def _scheduler(plan: SweepPlan) -> Any:
    s = plan.scheduler
    if s.name != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # time_attr "epoch" (reported by the engine) survives a trial's resume from its own state,
    # where Tune's training_iteration would restart at 1.
    return ASHAScheduler(
        time_attr="epoch",
        metric=s.metric,
        mode=s.mode,
        max_t=s.max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        brackets=s.brackets,
    )


def _reporter(plan: SweepPlan) -> Any:
    from ray.tune import CLIReporter

    metric = plan.search_alg.metric or plan.scheduler.metric or "val/acc"
    metrics = dict.fromkeys(["epoch", metric, "val/acc", "status"])
    params = ["trial_key", *(a for a in plan.axes if a != "seed"), *(a.name for a in plan.search)]
    return CLIReporter(
        metric_columns=list(metrics),
        parameter_columns=params,
        max_report_frequency=30,
        max_column_length=32,
        sort_by_metric=False,
    )


def _closer(state: dict[str, Any]) -> Any:
    from mdfr.sweep.callbacks import RunCloser

    return RunCloser(state["tracking_uri"], state["experiment_id"], state["parent_run_id"])


def _finish_parent(state: dict[str, Any], outcome: SweepOutcome) -> None:
    from mdfr.tracking import Store

    store = Store(state["tracking_uri"])
    tracker = store.tracker(state["parent_run_id"])
    counts = outcome.counts
    tracker.log_metrics({f"sweep/{k}": float(v) for k, v in counts.items()}, step=0)
    status = "ok" if not outcome.failed else "partial"
    store.finish(state["parent_run_id"], "FINISHED" if status == "ok" else "FAILED", status)
