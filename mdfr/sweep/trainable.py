"""What runs inside one Tune trial: rebuild the TrialConfig from paths, train, report.

Nothing big travels in the trial's closure: the trial reads the sweep state file (resolved
plan, tracking ids) from the absolute path in its config and builds everything itself.

Idempotence (one trial = one run of work, one MLflow child run):
- the output folder is ``<experiment dir>/trials/<trial key>``, the same for every attempt;
- the MLflow child run is found again by its ``mdfr.trial_key`` tag;
- a retry resumes from ``tune.get_checkpoint()``; a trial Tune re-created after a driver crash
  (handed out after the last experiment snapshot) resumes from the state the engine left in the
  output folder, and one that had already finished replays its saved result
  (``mdfr_result.json``) without training again.

Test-only fault injection: ``MDFR_TEST_FAULT=<trial key glob>@<epoch>`` in the *driver's*
environment (recorded in the sweep state, so workers need not inherit it) makes matching
trials raise once, right after reporting that epoch's checkpoint, to exercise Tune's retry path.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from mdfr.sweep.searcher import FINAL_KEY
from mdfr.sweep.spec import SweepPlan
from mdfr.sweep.stages import atomic_write_json

RESULT_FILE = "mdfr_result.json"
ATTEMPTS_FILE = "mdfr_attempts"
TrainFn = Callable[..., dict[str, Any]]


def load_state(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def default_train_fn() -> TrainFn:
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

    def __init__(self, epochs: int, key: str, out: Path, fault: str):
        self.epochs = epochs
        self.key = key
        self.out = out
        self.fault = fault
        self.held: tuple[dict[str, Any], str | None] | None = None

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        epoch = metrics.get("epoch")
        if epoch == self.epochs and metrics.get("status") != "diverged":
            self.held = (dict(metrics), checkpoint_dir)
            return
        tune.report(_scalars(metrics), checkpoint=_checkpoint(checkpoint_dir, epoch))
        self._maybe_fail(epoch)

    def final(self, result: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        metrics, ckpt_dir = self.held or ({}, None)
        final = dict(metrics)
        final.update({f"test/{k}": v for k, v in result.items() if k.startswith(("acc_", "bacc_"))})
        final["status"] = result.get("status", "ok")
        final[FINAL_KEY] = True
        return _scalars(final), _checkpoint(ckpt_dir, metrics.get("epoch"))

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
    from mdfr.tracking import Store

    # One line per persisted checkpoint per epoch would drown the progress table.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    state = load_state(config["mdfr_state"])
    plan = SweepPlan.from_dict(state["plan"])
    cell = plan.cells[int(config["cell"])]
    sample = int(config["sample"])
    key = cell.trial_key(sample)
    out = Path(state["exp_dir"]) / "trials" / key
    out.mkdir(parents=True, exist_ok=True)
    values = {name: config[name] for name in cell.search}
    overrides: dict[str, Any] = {**values, "output_dir": str(out)}
    if not cell.config.get("train.threads"):
        # Torch would otherwise use every core of the node, fighting the other trials.
        overrides["train.threads"] = plan.resources.cpu
    cfg = plan.cell_config(cell, overrides)

    store = Store(state["tracking_uri"])
    tags = {
        "mdfr.sweep": plan.name,
        "mdfr.setup": cfg.setup or "",
        "mdfr.backbone": cfg.model.backbone,
        "mdfr.seed": str(cfg.seed),
        "mdfr.mode": cfg.mode,
        "mdfr.cell": cell.key,
        "mdfr.sample": str(sample),
        "mdfr.git_commit": state["git_commit"],
        "mlflow.source.git.commit": state["git_commit"],
        "mdfr.dataset_hash": state["dataset_hash"],
        "mdfr.codec": state["codec"],
        "mdfr.output_dir": str(out),
    }
    done = _load_result(out)
    run_id, _ = store.child_run(
        state["experiment_id"], state["parent_run_id"], key, tags, reopen=done is None
    )
    if done is not None:
        # Finished in an earlier incarnation of this slot (before a driver crash): replay.
        tune.report(done)
        return

    tracker = store.tracker(run_id)
    attempts = _count_attempt(out)
    extra = {"mdfr.attempts": str(attempts), "mdfr.status": "running", **tags}
    reporter = _Reporter(cfg.train.epochs, key, out, state.get("fault", ""))
    with contextlib.ExitStack() as stack:
        resume_dir, resumed_epoch = _resume_point(out, stack)
        if resume_dir:
            extra["mdfr.resumed_from_epoch"] = str(resumed_epoch)
        tracker.set_tags(extra)
        # On an exception the run stays RUNNING: Tune retries, or the driver's RunCloser
        # records the final outcome (failed, or pruned when ASHA stopped the trial).
        result = train_fn(cfg, report=reporter, tracker=tracker, checkpoint=resume_dir)
    final, ckpt = reporter.final(result)
    if result.get("checkpoint"):
        tracker.set_tags({"mdfr.checkpoint": str(result["checkpoint"])})
    atomic_write_json(out / RESULT_FILE, final)
    store.finish(run_id, "FINISHED", str(final["status"]))
    tune.report(final, checkpoint=ckpt)


def _load_result(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None


def _count_attempt(out: Path) -> int:
    path = out / ATTEMPTS_FILE
    try:
        n = int(path.read_text()) + 1
    except (OSError, ValueError):
        n = 1
    path.write_text(str(n))
    return n


def _resume_point(out: Path, stack: contextlib.ExitStack) -> tuple[str | None, Any]:
    """Where this attempt resumes: Tune's latest checkpoint, else the engine's own state."""
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        # On local/shared storage as_directory() is the persisted folder itself (no copy).
        return stack.enter_context(ckpt.as_directory()), ckpt.get_metadata().get("epoch")
    own = out / "checkpoint"
    if (own / "state.pt").is_file():
        return str(own), "own-state"
    return None, None
