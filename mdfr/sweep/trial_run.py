"""A trial's MLflow child run, written by a background thread so MLflow never holds up training.

Opening a trial's run (importing MLflow, connecting to the store, finding the run by its trial
key or creating it) took seconds in a fresh trial process, and every epoch waited for its
metrics to be written: on a SQLite store shared by concurrent trials, or a busy tracking
server, that time came straight out of every slot of the sweep (``mdfr bench sweep``). Here
the trial's own thread only queues calls; one background thread per trial opens the run and
makes the calls in the order they were queued.

- :meth:`BackgroundRun.close` (the trial finished) waits for the queue to drain and closes the
  run, so the run is complete before Tune hears the trial's final result.
- Leaving the ``with`` block on an exception (a failure, or Tune stopping a pruned trial)
  writes what was queued but leaves the run open: Tune's retry reopens it, or the driver's
  :class:`~mdfr.sweep.callbacks.RunCloser` records the outcome. Tracking errors are not raised
  there: the trial's own exception matters more.
- A failed MLflow call is kept and raised by the trial's next tracker call or by ``close``, so
  a trial whose tracking fails still fails (and Tune retries it), as before.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from mdfr import probe
from mdfr.errors import MdfrError
from mdfr.names import Tag
from mdfr.tracking import BATCH_LIMITS, Store

log = logging.getLogger(__name__)

# How long a trial's end waits for its queued MLflow calls (a busy server, a locked SQLite).
CLOSE_TIMEOUT_S = 300.0
# After an exception, less: the run's remaining writes are nice to have.
ABORT_TIMEOUT_S = 30.0

OpenRun = Callable[[], tuple[Store, str]]


class BackgroundRun:
    """The engine's tracker protocol (``log_params``, ``log_metrics``, ``log_artifact``,
    ``set_tags``) on a run that ``open_run`` finds or creates in a background thread.

    Args:
        open_run: returns the store and the run id; called once, in the background thread.
    """

    def __init__(self, open_run: OpenRun):
        self._queue: queue.SimpleQueue[tuple[str, tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self.run_id: str | None = None
        self._opened = threading.Event()
        self._thread = threading.Thread(
            target=self._work, args=(open_run,), name="mdfr-trial-run", daemon=True
        )
        self._thread.start()

    # ----- the tracker protocol (mdfr.engine.Tracker)

    def log_params(self, params: dict[str, Any]) -> None:
        self._put("log_params", dict(params))

    def log_dataset(self, root: str, manifest: dict[str, Any]) -> None:
        self._put("log_dataset", str(root), manifest)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._put("log_metrics", dict(metrics), step)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._put("log_artifact", str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._put("set_tags", dict(tags))

    def call(self, fn: Callable[[Any, str], None]) -> None:
        """Queue ``fn(store, run_id)`` (logging a model, say): run in order with the rest."""
        self._put("call", fn)

    def wait_open(self, timeout: float = CLOSE_TIMEOUT_S) -> str:
        """The run's id, once the background thread has opened it (what needs it at once,
        such as MLflow's system-metrics sampler, waits here).

        Raises:
            MdfrError: opening the run failed or took longer than ``timeout``.
        """
        if not self._opened.wait(timeout) and self._error is None:
            self._error = TimeoutError(f"the trial's MLflow run not open after {timeout:.0f} s")
        self._raise()
        assert self.run_id is not None
        return self.run_id

    # ----- end of the trial

    def close(self, status: str, mdfr_status: str, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Write everything queued, then close the run with ``status`` and ``mdfr.status``.

        Raises:
            MdfrError: MLflow failed, or did not finish within ``timeout``.
        """
        self._queue.put(("set_tags", ({Tag.STATUS: mdfr_status},)))
        self._queue.put(("finish", (status,)))
        self._join(timeout)
        self._raise()

    def __enter__(self) -> BackgroundRun:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            return
        self._join(ABORT_TIMEOUT_S)
        if self._error is not None:
            log.warning("MLflow writes of a failed trial were lost: %s", self._error)

    # ----- internals

    def _put(self, name: str, *args: Any) -> None:
        self._raise()
        self._queue.put((name, args))

    def _raise(self) -> None:
        if self._error is not None:
            raise MdfrError(f"MLflow tracking failed for this trial: {self._error}")

    def _join(self, timeout: float) -> None:
        self._queue.put(None)  # "stop": ends the thread once it gets there (after "finish": unread)
        self._thread.join(timeout)
        if self._thread.is_alive() and self._error is None:
            self._error = TimeoutError(f"MLflow calls still pending after {timeout:.0f} s")

    def _work(self, open_run: OpenRun) -> None:
        try:
            with probe.span("trial.open_run"):
                store, run_id = open_run()
            self.run_id = run_id
            self._opened.set()
            tracker = store.tracker(run_id)
            while True:
                for name, args in _coalesce(self._next_items()):
                    if name == "stop":
                        return
                    if name == "finish":
                        store.finish(run_id, *args)
                        return
                    if name == "call":
                        args[0](store, run_id)
                        continue
                    getattr(tracker, name)(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the trial's thread
            self._error = e
            self._opened.set()

    def _next_items(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The next queued call (waiting for one) and every call queued behind it."""
        items = [self._queue.get()]
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [("stop", ()) if item is None else item for item in items]


_KIND = {"log_params": "params", "log_metrics": "metrics", "set_tags": "tags"}


def _coalesce(items: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, tuple[Any, ...]]]:
    """Consecutive params, metrics and tags as one ``log_batch`` call, within MLflow's limits.

    A trial queues several calls while its run is being opened (attempt tags, params, the
    first tags of the engine) and at its end (the last tags, the outcome): one MLflow request
    each time instead of three or four. Artifacts, ``finish`` and ``stop`` keep their place.
    """
    out: list[tuple[str, tuple[Any, ...]]] = []
    batch: list[tuple[str, tuple[Any, ...]]] = []
    for name, args in items:
        kind = _KIND.get(name)
        if kind is None or len(args[0]) > BATCH_LIMITS[kind]:
            # Not mergeable, or too big for one batch (the tracker splits it): as it came.
            out += _merged(batch)
            batch = []
            out.append((name, args))
            continue
        if not _fits([*batch, (name, args)]):
            out += _merged(batch)
            batch = []
        batch.append((name, args))
    return out + _merged(batch)


def _fits(batch: list[tuple[str, tuple[Any, ...]]]) -> bool:
    size = {"metrics": 0, "params": 0, "tags": 0}
    for name, args in batch:
        size[_KIND[name]] += len(args[0])
    return all(n <= BATCH_LIMITS[k] for k, n in size.items()) and (
        sum(size.values()) <= BATCH_LIMITS["total"]
    )


def _merged(batch: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, tuple[Any, ...]]]:
    if len(batch) <= 1:
        return batch
    metrics: list[tuple[str, float, int]] = []
    params: dict[str, Any] = {}
    tags: dict[str, str] = {}
    for name, args in batch:
        if name == "log_metrics":
            metrics += [(k, v, args[1]) for k, v in args[0].items()]
        else:
            (params if name == "log_params" else tags).update(args[0])
    return [("log_batch", (metrics, params, tags))]
