"""What runs inside one Tune trial: rebuild the TrialConfig from paths, train, report.

Nothing big travels in the trial's closure: the trial reads the sweep state file (resolved
plan, tracking ids) from the absolute path in its config and builds everything itself.

Idempotence (one trial = one run of work, one MLflow child run):
- the output folder is ``<experiment dir>/trials/<trial key>``, the same for every attempt;
- the MLflow child run is created by the first attempt and found again by its
  ``mdfr.trial_key`` tag by later ones (``mdfr_attempts`` counts them);
- the output folder is also the checkpoint of record: after every reported epoch it names the
  state the engine just wrote (``mdfr_checkpoint.json``), and every attempt (Tune's retry, or
  a trial Tune re-created after a driver crash) resumes from there; one that had already
  finished replays its saved result (``mdfr_result.json``) without training again.

Tune gets a copy of the checkpoint with the trial's final result only, or also every
``checkpoint.tune_every`` epochs. Every copy Tune takes costs the trial a copy of the state
and the driver an experiment snapshot when ``num_to_keep`` is reached; on the shared storage
a sweep needs anyway, the output folder already holds the same state. Handing Tune one per
epoch made the reports mdfr's largest in-trial cost over bare Tune (``mdfr bench sweep``).

Test-only fault injection: ``MDFR_TEST_FAULT=<trial key glob>@<epoch>`` in the *driver's*
environment (recorded in the sweep state, so workers need not inherit it) makes matching
trials raise once, right after reporting that epoch's checkpoint, to exercise Tune's retry path.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune

from mdfr import probe
from mdfr.config import TrialConfig
from mdfr.names import EPOCH, FINAL_KEY, STATUS, Outcome, Tag
from mdfr.results import TrialResult
from mdfr.sweep.plan import Cell
from mdfr.sweep.results import log_trial_model, model_tags
from mdfr.sweep.state import TRIAL_RESULT_FILE, SweepState, atomic_write_json, read_json
from mdfr.sweep.trial_run import BackgroundRun
from mdfr.tracking import Store, resolve_uri
from mdfr.tracking.system import system_metrics

ATTEMPTS_FILE = "mdfr_attempts"
RESUME_FILE = "mdfr_checkpoint.json"  # {"dir": the latest state's folder, "epoch": its epoch}
TrainFn = Callable[..., TrialResult | dict[str, Any]]


def default_train_fn() -> TrainFn:
    # Lazy: the engine imports torch and the models; a sweep's driver and a trial given its own
    # train_fn (benchmarks) never need them.
    from mdfr.engine import train_trial

    return train_trial


def make_trainable(train_fn: TrainFn | None) -> Callable[[dict[str, Any]], None]:
    """The Tune function trainable; ``train_fn`` defaults to ``mdfr.engine.train_trial``."""

    def mdfr_trial(config: dict[str, Any]) -> None:
        run_trial(config, train_fn or default_train_fn())

    return mdfr_trial


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, str | bool) or (isinstance(v, int | float) and math.isfinite(v))
    }


class _Reporter:
    """The engine's ``report(metrics, checkpoint_dir)``, forwarded to Tune.

    The last epoch's report is held back and sent together with the test metrics once
    ``train_fn`` returns, so the trial's final Tune result (the one the searcher and ASHA's
    last rung see) carries everything and the trial is never stopped between its last epoch
    and its test evaluation.
    """

    def __init__(
        self,
        epochs: int,
        key: str,
        out: Path,
        fault: str,
        tune_every: int = 0,
        send: Callable[..., None] = tune.report,
    ):
        self.epochs = epochs
        self.key = key
        self.out = out
        self.fault = fault
        self.tune_every = tune_every
        self.send = send
        self.held: tuple[dict[str, Any], str | None] | None = None

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        epoch = metrics.get(EPOCH)
        if checkpoint_dir:
            atomic_write_json(self.out / RESUME_FILE, {"dir": checkpoint_dir, "epoch": epoch})
        if epoch == self.epochs and metrics.get(STATUS) != Outcome.DIVERGED:
            self.held = (dict(metrics), checkpoint_dir)
            return
        copy = self.tune_every > 0 and isinstance(epoch, int) and epoch % self.tune_every == 0
        with probe.span("trial.report"):
            self.send(
                _scalars(metrics), checkpoint=_checkpoint(checkpoint_dir, epoch) if copy else None
            )
        self._maybe_fail(epoch)

    def final(self, result: TrialResult) -> tuple[dict[str, Any], Any]:
        metrics, ckpt_dir = self.held or ({}, None)
        final = {**metrics, **result.test_metrics, STATUS: result.status, FINAL_KEY: True}
        return _scalars(final), _checkpoint(ckpt_dir, metrics.get(EPOCH))

    def _maybe_fail(self, epoch: Any) -> None:
        if not self.fault or "@" not in self.fault:
            return
        pattern, _, at = self.fault.rpartition("@")
        marker = self.out / f".fault-injected-{at}"
        if fnmatch.fnmatch(self.key, pattern) and str(epoch) == at and not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected fault (MDFR_TEST_FAULT) in {self.key} at epoch {at}")


def _checkpoint(path: str | None, epoch: Any) -> tune.Checkpoint | None:
    if not path:
        return None
    ckpt = tune.Checkpoint.from_directory(path)
    ckpt.set_metadata({"epoch": epoch})
    return ckpt


def run_trial(config: dict[str, Any], train_fn: TrainFn) -> None:
    """One Tune trial: the slot ``config['cell'], config['sample']`` of the sweep."""
    started = time.time()
    # One line per persisted checkpoint per epoch would drown the progress output.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    with probe.span("trial.setup"):
        state = SweepState.read(config["mdfr_state"])
        cell = state.plan.cells[int(config["cell"])]
        sample = int(config["sample"])
        key = cell.trial_key(sample)
        out = Path(state.exp_dir) / "trials" / key
        out.mkdir(parents=True, exist_ok=True)
        cfg = _trial_config(state, cell, config, out)
        dataset = str(cfg.data.dataset)
        tags = state.tracking.tags(
            cfg, cell=cell.key, sample=sample, output_dir=str(out), **state.dataset_tags(dataset)
        )
        done = read_json(out / TRIAL_RESULT_FILE)
    if done is not None:
        # Finished in an earlier incarnation of this slot (before a driver crash): replay. Its
        # run may still be open: the result file is written before the background close, and
        # a SIGKILL can fall in between.
        store = Store(state.tracking_uri)
        run_id, _ = store.child_run(state.experiment_id, state.parent_run_id, key, tags)
        store.finish_if_open(run_id, str(done.get(STATUS, Outcome.OK)))
        tune.report(done)
        return

    # Counted before the run is opened: on the first attempt no run can exist yet (the attempt
    # file is written before anything creates one), so the run is created without a search.
    attempt = _count_attempt(out)

    def open_run() -> tuple[Store, str]:
        store = Store(state.tracking_uri)
        run_id, _ = store.child_run(
            state.experiment_id, state.parent_run_id, key, tags, reopen=True, new=attempt == 1
        )
        return store, run_id

    reporter = _Reporter(cfg.train.epochs, key, out, state.fault, state.plan.tune_checkpoint_every)
    # The run is opened and written in the background (mdfr.sweep.trial_run); on an exception
    # it stays RUNNING: Tune retries, or the driver's RunCloser records the final outcome
    # (failed, or pruned when ASHA stopped the trial).
    with BackgroundRun(open_run) as run, contextlib.ExitStack() as stack:
        with probe.span("trial.attempt"):
            resume_dir = _start_attempt(out, attempt, run, tags, stack)
        if attack := state.attack_metrics(dataset):
            run.log_metrics(attack, step=0)  # what the attack cost, beside what it did
        if state.plan.system_metrics:  # MLflow's sampler needs the run now
            stack.enter_context(
                system_metrics(run.wait_open(), resolve_uri(state.tracking_uri), True)
            )
        with probe.span("trial.train_fn"):
            result = TrialResult.coerce(
                train_fn(cfg, report=reporter, tracker=run, checkpoint=resume_dir)
            )
        with probe.span("trial.finish"):
            final, ckpt = reporter.final(result)
            if result.checkpoint:
                run.set_tags({Tag.CHECKPOINT: result.checkpoint})
            if state.plan.log_models == "all" and result.ok:
                run.call(lambda store, run_id: log_trial_model(
                    store, run_id, out, key, model_tags(tags), cfg.train.epochs))  # fmt: skip
            atomic_write_json(out / TRIAL_RESULT_FILE, final)
            run.close("FINISHED", result.status)
    with probe.span("trial.report"):
        tune.report(final, checkpoint=ckpt)
    if probe.enabled():
        probe.dump(out / probe.TRIAL_FILE, start=started, end=time.time(), **_placement())


def _placement() -> dict[str, Any]:
    """Where this trial ran: node, the GPUs Ray gave it and what CUDA was told (probing)."""
    return {
        "node": ray.get_runtime_context().get_node_id(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
    }


def _trial_config(state: SweepState, cell: Cell, config: dict[str, Any], out: Path) -> TrialConfig:
    """The cell's config with this sample's search values, its output folder and threads."""
    overrides: dict[str, Any] = {name: config[name] for name in cell.search}
    overrides["output_dir"] = str(out)
    if not cell.config.get("train.threads"):
        # Torch would otherwise use every core of the node, fighting the other trials.
        overrides["train.threads"] = state.plan.resources.cpu
    return state.plan.cell_config(cell, overrides)


def _start_attempt(
    out: Path,
    attempt: int,
    tracker: BackgroundRun,
    tags: dict[str, str],
    stack: contextlib.ExitStack,
) -> str | None:
    """Find where this attempt resumes, and tag the run with it and the attempt's number."""
    extra = {Tag.ATTEMPTS: str(attempt), Tag.STATUS: Outcome.RUNNING, **tags}
    resume_dir, resumed_epoch = _resume_point(out, stack)
    if resume_dir:
        extra[Tag.RESUMED_FROM_EPOCH] = str(resumed_epoch)
    tracker.set_tags(extra)
    return resume_dir


def _count_attempt(out: Path) -> int:
    """This attempt's number (1 for the first). A count file that exists but cannot be read
    (a crash while writing it) means an earlier attempt: never 1, which skips the run search."""
    path = out / ATTEMPTS_FILE
    try:
        n = int(path.read_text()) + 1
    except FileNotFoundError:
        n = 1
    except (OSError, ValueError):
        n = 2
    path.write_text(str(n))
    return n


def _resume_point(out: Path, stack: contextlib.ExitStack) -> tuple[str | None, Any]:
    """Where this attempt resumes: the latest state the trial reported (never older than
    Tune's copy, which is taken from it), else Tune's checkpoint, else an engine state left
    by an attempt that reported nothing (killed between saving and reporting)."""
    latest = read_json(out / RESUME_FILE)
    if latest is not None and Path(str(latest.get("dir"))).is_dir():
        return str(latest["dir"]), latest.get("epoch")
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        # On local/shared storage as_directory() is the persisted folder itself (no copy).
        return stack.enter_context(ckpt.as_directory()), ckpt.get_metadata().get("epoch")
    own = out / "checkpoint"
    if (own / "state.pt").is_file():
        return str(own), "own-state"
    return None, None
