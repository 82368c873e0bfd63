"""Sweeps: sweep files -> Ray Tune trials (grid x Optuna) -> MLflow.

- :mod:`mdfr.sweep.spec` reads and validates a sweep file into a :class:`SweepPlan` (no Ray).
- :mod:`mdfr.sweep.searcher` is the grid x Optuna Tune searcher.
- :mod:`mdfr.sweep.stages` prepares the dataset and pretrains shared CMI nets (cached).
- :mod:`mdfr.sweep.trainable` is what runs inside each Tune trial.
- :mod:`mdfr.sweep.driver` holds the only ``Tuner`` code (run, resume).

Importing this package imports neither Ray nor MLflow.
"""

from __future__ import annotations

from mdfr.sweep.spec import SweepPlan, load_sweep

__all__ = ["SweepPlan", "load_sweep"]
