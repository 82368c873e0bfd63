"""A finished trial's network, rebuilt from its output folder (no Ray, no MLflow).

A trial folder holds ``config.yaml`` (the resolved trial config) and ``checkpoint/state.pt``
(the last epoch's weights, written by :func:`mdfr.engine.train_trial`); the dataset's manifest
names the classes. That is enough to rebuild the trained network at any later time, which is
how a sweep logs only its best trial's model once every trial has finished (``log_models:
best``) instead of every model on the way.

:class:`TrainedModel` pairs the :class:`~mdfr.models.identifier.CameraIdentifier` with its
``info``: JSON-able facts (class names, views, backbone, setup, dataset hash, codec, ...) that
travel with the logged model as its metadata, so ``mdfr identify`` can name camera models from
the model alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdfr.errors import UsageError

CONFIG_FILE = "config.yaml"


@dataclass
class TrainedModel:
    """A trained network ready for inference, and what it is."""

    module: Any  # CameraIdentifier, in eval mode, on the CPU
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def views(self) -> list[str]:
        return list(self.info["views"])


def is_trial_folder(path: str | Path) -> bool:
    p = Path(path)
    return (p / CONFIG_FILE).is_file() and (p / "checkpoint" / "state.pt").is_file()


def load_trial(out: str | Path) -> TrainedModel:
    """Rebuild the network a trial trained from its output folder.

    Raises:
        UsageError: ``out`` is not a finished trial's folder, or its dataset is gone.
    """
    # Lazy: torch and the model code, only when a network is rebuilt (the sweep driver and
    # `mdfr identify --model models:/...` import this module without needing them).
    from mdfr import checkpoints as ckpt
    from mdfr.config import load_yaml
    from mdfr.data.loader import load_manifest
    from mdfr.models import create_backbone, create_model
    from mdfr.models.identifier import PATCH, CameraIdentifier

    out = Path(out).expanduser().resolve()
    if not is_trial_folder(out):
        raise UsageError(f"{out}: not a trial folder (needs {CONFIG_FILE} and checkpoint/state.pt)")
    cfg = load_yaml(out / CONFIG_FILE)
    manifest = load_manifest(cfg.data.dataset)
    classes = list(manifest["classes"])
    state = ckpt.safe_load(out / "checkpoint")
    cmi = create_backbone(cfg.model.backbone, num_classes=len(classes), pretrained=False)
    net = cmi
    if cfg.mode == "mdfr":
        net = create_model("mdfrnet", cfg.model, num_classes=len(classes), cmi=cmi)
    net.load_state_dict(state["model"])
    module = CameraIdentifier(net).eval()
    codec = manifest.get("codec", {})
    info = {
        "kind": cfg.mode,
        "views": list(module.views),
        "classes": classes,
        "patch": PATCH,
        "input": f"(N, 3, {PATCH}, {PATCH}) float32 RGB in [0, 1]",
        "output": "(N, views, classes) float32 logits",
        "backbone": cfg.model.backbone,
        "setup": cfg.setup or "",
        "seed": cfg.seed,
        "epochs": int(state.get("epoch", -1)) + 1,
        "config_hash": cfg.hash(),
        "dataset_hash": str(manifest.get("dataset_hash", "")),
        "codec": str(codec.get("spec", "") if isinstance(codec, dict) else codec),
        "selection": str(manifest.get("options", {}).get("selection", "grid")),
    }
    return TrainedModel(module, info)
