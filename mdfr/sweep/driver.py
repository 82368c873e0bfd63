"""Run and resume sweeps: the order of things, and the checks that keep a refused sweep from
leaving anything behind.

``run_sweep(plan)``:

1. resolve every path to an absolute one (Tune changes the trials' working directory) and
   check the tracking store (reachable, credentials accepted) before anything starts;
2. connect to Ray (``--address``/``RAY_ADDRESS``) or start a local instance on loopback
   (:mod:`mdfr.sweep.session`), and check the cluster before writing anything: trials fit on
   it, and on several nodes the tracking store is a server and every node sees the sweep's
   paths (:mod:`mdfr.sweep.preflight`);
3. create the sweep folder ``<storage>/<name>-<timestamp>``, lock it (one writer per folder,
   :mod:`mdfr.locks`), open the sweep's MLflow parent run and write the sweep state
   (:class:`~mdfr.sweep.state.SweepState`);
4. run the stages (:mod:`mdfr.sweep.stages`): dataset once, pretraining once per content key;
5. run the Tune experiment (:mod:`mdfr.sweep.tuner`).

``resume_sweep(name_or_path)`` locks that folder and reopens it: ``Tuner.restore`` when Tune
got to snapshot the experiment, otherwise (killed during the stages) the same steps again,
cached.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ray
from ray import tune

from mdfr import probe, provenance, tracking
from mdfr.data.manifest import load_manifest
from mdfr.errors import UsageError
from mdfr.locks import FolderLock
from mdfr.names import Tag
from mdfr.sweep import preflight, results, stages
from mdfr.sweep.plan import SweepPlan
from mdfr.sweep.schema import check_storage
from mdfr.sweep.session import is_local, ray_session
from mdfr.sweep.state import STATE_FILE, SweepState, abs_path, find_sweep, list_sweeps
from mdfr.sweep.trainable import TrainFn, default_train_fn
from mdfr.sweep.tuner import SweepOutcome, fit
from mdfr.tracking import check_tracking_uri

__all__ = ["STATE_FILE", "SweepOutcome", "find_sweep", "list_sweeps", "resume_sweep", "run_sweep"]

Log = Callable[[str], None]


def run_sweep(
    plan: SweepPlan,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    train_fn: TrainFn | None = None,
    root: Path | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    log: Log = print,
    verbose: int = 1,
) -> SweepOutcome:
    """Run a validated sweep to completion (see the module docstring).

    Args:
        plan: from :func:`mdfr.sweep.spec.load_sweep`.
        storage, tracking_uri: override the sweep file's.
        address: Ray address (``auto``, ``ray://host:10001``); None starts Ray locally.
        train_fn: the trial function, ``mdfr.engine.train_trial`` by default (tests and
            benchmarks: see :func:`test_train_fn`).
        root: directory relative paths are resolved against (default: the current one).
        num_cpus: CPUs of a locally started Ray instance (default: all).
        num_gpus: GPUs it declares (default: detected; logical ones simulate a GPU machine).
        log: receives progress lines.
        verbose: console progress (0 none, 1 trial outcomes and a status line, 2 every epoch).
    """
    root = (root or Path.cwd()).resolve()
    train_fn = train_fn or test_train_fn()
    with probe.span("driver.checks"):
        if tracking_uri is not None:
            tracking_uri = check_tracking_uri(tracking_uri, "--tracking-uri")
        store_dir = abs_path(
            plan.storage if storage is None else check_storage(storage, "--storage"), root
        )
        uri = tracking.resolve_uri(tracking_uri or plan.tracking_uri, root)
        tracking.check_reachable(uri)
        if plan.prepare is None:  # fail before Ray starts, not inside the first trial
            stages.check_datasets(
                {str(abs_path(c.config["data.dataset"], root)) for c in plan.cells}
            )
    with ray_session(address, num_cpus, num_gpus):
        # Everything about the cluster is checked before the sweep folder or its MLflow run
        # exist: a refused sweep leaves nothing behind.
        with probe.span("driver.cluster_checks"):
            _check_resources(plan, is_local(address), log)
            preflight.check_cluster(_shared_paths(plan, store_dir, root), uri)
        exp_dir = _new_sweep_folder(store_dir, plan.name)
        # Recorded here, where the sweep is submitted: trials may run without .git.
        prov = provenance.current()
        if prov.commit == provenance.UNKNOWN:
            log(
                "warning: git commit unknown (no checkout, no PROVENANCE file): run "
                "`make provenance` before uploading the code; runs keep mdfr.source_digest"
            )
        with FolderLock(exp_dir, "sweep folder"):
            state = SweepState(
                phase="stages",
                plan=plan,
                root=str(root),
                exp_dir=str(exp_dir),
                storage=str(store_dir),
                tracking_uri=uri,
                git_commit=prov.commit,
                provenance=prov.tags(),
                fault=_fault_from_env(),
            )
            # One source and user for every run of the sweep, wherever it runs.
            source = str(abs_path(plan.source, root)) if plan.source else None
            state = state.replace(source=tracking.source_tags(source))
            with probe.span("driver.mlflow_setup"):
                state = _open_parent_run(state)
            with _parent_on_failure(state):
                state.write()
                log(f"sweep {plan.name}: {plan.num_trials} trials -> {exp_dir}")
                log(
                    f"MLflow: experiment {plan.experiment!r}, parent run {state.parent_run_id} at {uri}"
                )
                log(f"if this driver stops: mdfr sweep resume {exp_dir}")
                with probe.span("driver.stages"):
                    state = _stages(state, train_fn, log)
                return _fit(state, train_fn, False, False, verbose, log)


def resume_sweep(
    name_or_path: str,
    *,
    storage: str | None = None,
    address: str | None = None,
    train_fn: TrainFn | None = None,
    retry_errored: bool = False,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    log: Log = print,
    verbose: int = 1,
) -> SweepOutcome:
    """Continue a sweep whose driver stopped: no finished trial reruns, none is lost.

    Args:
        name_or_path: the sweep folder, or a sweep name (newest ``<storage>/<name>-*``).
        retry_errored: also rerun trials that failed for good (from their last checkpoint).

    Raises:
        LockedError: another driver is running this sweep (named in the message).
    """
    exp_dir = find_sweep(name_or_path, storage)
    train_fn = train_fn or test_train_fn()
    with FolderLock(exp_dir, "sweep folder"):
        state = SweepState.read(exp_dir)
        tracking.check_reachable(state.tracking_uri)
        plan = state.plan
        with ray_session(address, num_cpus, num_gpus):
            _check_resources(plan, is_local(address), log)
            shared = _shared_paths(plan, Path(state.storage), Path(state.root))
            preflight.check_cluster(shared, state.tracking_uri)
            tracking.Store(state.tracking_uri).set_status(state.parent_run_id, "RUNNING")
            log(f"resuming sweep {plan.name} in {exp_dir}")
            with _parent_on_failure(state):
                if state.phase == "tune" and tune.Tuner.can_restore(str(exp_dir)):
                    return _fit(state, train_fn, True, retry_errored, verbose, log)
                state = _stages(state, train_fn, log)
                return _fit(state, train_fn, False, False, verbose, log)


# --------------------------------------------------------------------------- steps


def _new_sweep_folder(store_dir: Path, name: str) -> Path:
    exp_dir = store_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    while exp_dir.exists():  # two runs within one second
        exp_dir = exp_dir.with_name(exp_dir.name + "x")
    exp_dir.mkdir(parents=True)
    return exp_dir


def _open_parent_run(state: SweepState) -> SweepState:
    """The sweep's MLflow parent run, with the plan's shape as params and the file itself."""
    plan = state.plan
    store = tracking.Store(state.tracking_uri)
    exp_id, parent = store.parent_run(
        plan.experiment,
        plan.name,
        state.exp_dir,
        {Tag.GIT_COMMIT: state.git_commit, **state.provenance, **state.source},
    )
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
    return state.replace(experiment_id=exp_id, parent_run_id=parent)


def _stages(state: SweepState, train_fn: TrainFn | None, log: Log) -> SweepState:
    """The stages, then the resolved plan written to the state and beside the sweep file, and
    the sweep's dataset(s) as inputs of its parent run (the UI's Dataset column)."""
    state = stages.run_stages(state, train_fn or default_train_fn(), log)
    state.write()
    parent = tracking.Store(state.tracking_uri).tracker(state.parent_run_id)
    parent.log_artifact(str(state.state_file))
    for root in sorted({c.config["data.dataset"] for c in state.plan.cells}):
        parent.log_dataset(root, load_manifest(root))
    return state


def _fit(
    state: SweepState,
    train_fn: TrainFn | None,
    restore: bool,
    retry_errored: bool,
    verbose: int,
    log: Log,
) -> SweepOutcome:
    outcome = fit(state, train_fn, restore=restore, retry_errored=retry_errored, verbose=verbose)
    probe.mark("driver.fit_end")
    try:
        # A stopped sweep crowns nothing: its best trial so far is not the sweep's champion
        # (resume records the table and the champion once every trial is done).
        outcome.champion = None if outcome.unfinished else results.finish(state, log)
    except Exception as e:  # noqa: BLE001 - the trials are done; this step can be redone
        log(
            f"warning: the trial table or the champion could not be recorded in MLflow ({e}); "
            f"`mdfr sweep resume {state.exp_dir}` tries again"
        )
    store = tracking.Store(state.tracking_uri)
    tracker = store.tracker(state.parent_run_id)
    tracker.log_metrics({f"sweep/{k}": float(v) for k, v in outcome.counts.items()}, step=0)
    if outcome.unfinished:  # stopped: resume reopens the parent run
        store.finish(state.parent_run_id, "KILLED", "interrupted")
        return outcome
    status = "ok" if not outcome.failed else "partial"
    store.finish(state.parent_run_id, "FINISHED" if status == "ok" else "FAILED", status)
    # Benchmarks read the driver's own timings here (its process ends with the command).
    probe.dump(Path(state.exp_dir) / probe.DRIVER_FILE, peak_rss_mb=probe.peak_rss_mb())
    return outcome


@contextlib.contextmanager
def _parent_on_failure(state: SweepState) -> Iterator[None]:
    """A sweep that stops early leaves its parent run KILLED/FAILED; resume reopens it."""
    try:
        yield
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        with contextlib.suppress(Exception):  # the original error matters more
            tracking.Store(state.tracking_uri).finish(state.parent_run_id, status, "interrupted")
        raise


def _fault_from_env() -> str:
    # Test-only fault injection, documented in mdfr.sweep.trainable.
    return os.environ.get("MDFR_TEST_FAULT", "")


TEST_TRAIN_FN_ENV = "MDFR_TEST_TRAIN_FN"


def test_train_fn() -> TrainFn | None:
    """Test-only: the trial function named by ``MDFR_TEST_TRAIN_FN=<mdfr module>:<function>``.

    A sweep started from the command line (``mdfr sweep run``, ``ray job submit``) then runs
    that function in every trial and pretraining stage instead of ``mdfr.engine.train_trial``:
    how ``mdfr bench scale`` runs a real sweep file with trials that only sleep. Only
    functions of mdfr modules are accepted; unset (the default), the engine trains.

    Raises:
        UsageError: the variable does not name a function of an mdfr module.
    """
    value = os.environ.get(TEST_TRAIN_FN_ENV, "")
    if not value:
        return None
    module, _, name = value.partition(":")
    if not (module == "mdfr" or module.startswith("mdfr.")) or not name:
        raise UsageError(
            f"{TEST_TRAIN_FN_ENV}={value!r}: expected <mdfr module>:<function>, e.g. "
            "mdfr.bench.scale:tiny_trial (a test-only hook; unset it to train)"
        )
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"{TEST_TRAIN_FN_ENV}={value!r}: {e}") from None
    if not callable(fn):
        raise UsageError(f"{TEST_TRAIN_FN_ENV}={value!r} is not a function")
    return fn


# --------------------------------------------------------------------------- checks


def _check_resources(plan: SweepPlan, local: bool, log: Log) -> None:
    """A trial that can never be placed would leave the sweep PENDING forever."""
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
                abs_path(plan.prepare.out, root),
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
    for path in sorted({abs_path(c.config[key], root) for c in plan.cells if c.config.get(key)}):
        file = path / "manifest.json" if key == "data.dataset" else path
        if skip_under is not None and path.is_relative_to(skip_under):
            continue
        if file.is_file():
            found.append(
                preflight.SharedPath(where, path, "read it", f"--set {where}={value}", file=file)
            )
    return found
