"""Sweeps: sweep files -> Ray Tune trials (grid x Optuna) -> MLflow.

- :mod:`~mdfr.sweep.spec` reads and validates a sweep file into a :class:`SweepPlan`
  (:mod:`~mdfr.sweep.schema` declares its sections, :mod:`~mdfr.sweep.plan` is the plan;
  no Ray, no torch: ``mdfr sweep validate`` stays fast).
- :mod:`~mdfr.sweep.state`: the sweep folder's typed record (:class:`SweepState`).
- :mod:`~mdfr.sweep.driver` runs and resumes sweeps; :mod:`~mdfr.sweep.session` connects
  to Ray; :mod:`~mdfr.sweep.stages` prepares the dataset and pretrains shared CMI nets.
- :mod:`~mdfr.sweep.tuner` holds the only ``Tuner`` code, with :mod:`~mdfr.sweep.searcher`
  (grid x Optuna), :mod:`~mdfr.sweep.schedulers` (ASHA per grid cell),
  :mod:`~mdfr.sweep.progress` and :mod:`~mdfr.sweep.callbacks`.
- :mod:`~mdfr.sweep.trainable` is what runs inside each Tune trial.
- :mod:`~mdfr.sweep.results`: once the trials are done, the trial table on the parent run and
  the champion (logged and registered as ``models:/<experiment>@champion``).
- :mod:`~mdfr.sweep.ray_private`: the only uses of Ray internals.

Importing this package imports neither Ray nor MLflow.
"""

from __future__ import annotations

from mdfr.sweep.spec import SweepPlan, load_sweep

__all__ = ["SweepPlan", "load_sweep"]
