"""Checkpoint files: atomic writes, safe loads, content hashes.

A trial's resumable state lives in ``<dir>/state.pt``; a trained CMI network that other trials
start from is exported as a self-describing ``cmi.pt`` (backbone name, class names, weights)
and referenced everywhere by the SHA-256 of its bytes.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from mdfr.errors import DataError, UsageError
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
    """Load a checkpoint with ``weights_only=True`` (no pickled code runs).

    Raises:
        UsageError: no such file.
        DataError: not a checkpoint mdfr can load: damaged, not PyTorch's format, or holding
            Python objects beyond tensors. torch's own message for the last case advises
            retrying with ``weights_only=False``, which would run code from the file: it is
            not passed on.
    """
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    obj = load_weights(path)
    if not isinstance(obj, dict):
        raise DataError(f"checkpoint {path}: holds a {type(obj).__name__}, not an mdfr checkpoint")
    return obj


def load_weights(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one clean :class:`DataError`
    naming the file for every way a file can fail to load (see :func:`safe_load`)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise DataError(f"checkpoint {path}: {_why_unloadable(e)}") from None


def _why_unloadable(e: Exception) -> str:
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"holds Python objects besides tensors ({found.group(1)}); mdfr loads weights "
            "only and never runs code from a checkpoint: use a file written by mdfr"
        )
    if "zip archive" in text or "central directory" in text:
        return "damaged or truncated (not a complete PyTorch zip archive)"
    if "Weights only load failed" in text:
        return "not a PyTorch checkpoint (the weights-only loader cannot parse it)"
    return f"not a PyTorch checkpoint ({type(e).__name__}: {text.splitlines()[0] if text else ''})"


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
