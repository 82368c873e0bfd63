"""Session fixture ``trained_trials``: one tiny trial folder per mode, trained by the real engine.

``{"pretrain": Path, "finetune": Path, "mdfr": Path}``: output folders (``config.yaml`` +
``checkpoint/state.pt``) on ``tiny_dataset``, test_remnet, width 4, one short epoch each
(~10 s in all), trained without a tracker. Tests that log or load models start from them.
Treat them as read-only.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def tiny_trial_config(dataset: Path, out: Path, **over):
    from mdfr.config import from_dict

    base = {
        "data": {"dataset": str(dataset), "batch_size": 8, "limit_train": 32, "limit_eval": 16},
        "model": {"backbone": "test_remnet", "width": 4, "depth": 2},
        "train": {"epochs": 1, "device": "cpu", "threads": 1},
        "optim": {"lr": 1e-3},
        "output_dir": str(out),
    }
    return from_dict(base).replace(**over)


@pytest.fixture(scope="session")
def trained_trials(tiny_dataset, tmp_path_factory) -> dict[str, Path]:
    from mdfr.config import setup_overrides
    from mdfr.engine import train_trial

    root = tmp_path_factory.mktemp("trained")
    pre = train_trial(tiny_trial_config(tiny_dataset, root / "pretrain", mode="pretrain"))
    cmi = {"model.cmi_checkpoint": pre.cmi_checkpoint}
    for setup in ("finetune", "proposed"):
        over = {**setup_overrides(setup), **cmi}
        train_trial(tiny_trial_config(tiny_dataset, root / setup, **over))
    return {"pretrain": root / "pretrain", "finetune": root / "finetune", "mdfr": root / "proposed"}
