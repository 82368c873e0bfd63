"""Checkpoint files: atomic writes, safe loads, content hashes.

A trial's resumable state lives in ``<dir>/state.pt``; a trained CMI network that other trials
start from is exported as a self-describing ``cmi.pt`` (backbone name, class names, weights)
and referenced everywhere by the SHA-256 of its bytes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from mdfr.errors import MdfrError, UsageError
from mdfr.hashing import file_sha256

STATE_FILE = "state.pt"
CMI_FILE = "cmi.pt"


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, then rename: a crash mid-write never
    leaves a truncated checkpoint under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def safe_load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no pickled code runs)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise MdfrError(f"cannot read checkpoint {path}: {e}") from e


def export_cmi(
    path: str | Path,
    model: torch.nn.Module,
    backbone: str,
    classes: list[str],
    dataset_hash: str,
) -> str:
    """Write a trained CMI network for later trials; returns its content hash."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save(
        {
            "backbone": backbone,
            "classes": list(classes),
            "dataset_hash": dataset_hash,
            "state_dict": state,
        },
        path,
    )
    return file_sha256(path)


def load_cmi(path: str | Path, backbone: str, classes: list[str]) -> dict[str, Any]:
    """Read an exported CMI network and check it fits the trial (same backbone and classes)."""
    ckpt = safe_load(path)
    if ckpt.get("backbone") != backbone:
        raise UsageError(
            f"model.cmi_checkpoint {path}: trained backbone {ckpt.get('backbone')!r}, "
            f"but the trial uses {backbone!r}"
        )
    if list(ckpt.get("classes", [])) != list(classes):
        raise UsageError(
            f"model.cmi_checkpoint {path}: trained on classes {ckpt.get('classes')}, "
            f"the dataset has {classes}"
        )
    return ckpt
