"""MLflow's system metrics (CPU, memory, disk, network, GPU) sampled into one run.

MLflow documents one switch for them, ``mlflow.start_run(log_system_metrics=True)``, which
needs the fluent "active run" this package avoids (trials run as threads of shared Ray worker
processes). What that switch starts is :class:`SystemMetricsMonitor`, bound to a run id and a
tracking URI; we start it the same way, around a trial. It is the one MLflow class used here
that the MLflow docs do not list, so it lives in this module alone, and
``tests/test_tracking.py::test_system_metrics_reach_the_run`` fails loudly if an upgrade moves
or changes it. Metrics land as ``system/*`` (``system/gpu_0_utilization_percentage`` with
``nvidia-ml-py`` on NVIDIA nodes), shown in the run's "System metrics" tab.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

SAMPLING_INTERVAL_S = 10.0  # MLflow's default


@contextlib.contextmanager
def system_metrics(
    run_id: str, tracking_uri: str, enabled: bool, interval: float = SAMPLING_INTERVAL_S
) -> Iterator[None]:
    """Sample system metrics into ``run_id`` while the block runs (nothing when not ``enabled``).

    A resumed run continues its ``system/*`` step numbering. Sampling stops by itself when the
    run stops being RUNNING.
    """
    if not enabled:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # "Started monitoring system metrics." per trial is noise in a sweep's output.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval, resume_logging=True, tracking_uri=tracking_uri
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
