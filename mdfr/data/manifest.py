"""A prepared dataset's identity (content hash) and its ``manifest.json``.

The dataset hash covers everything that determines the shards' bytes and the amplitude
template: the dataset format, the patch size, every content option (subsets, selection, split,
seed, ...), the codec's spec *and* fingerprint (weights, encoder version), the names of all
images found and the SHA-256 of every image used. It excludes where the images or the dataset
live, so moving folders keeps the hash and tracking tags stay comparable across machines.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mdfr.errors import DataError
from mdfr.hashing import file_sha256

FORMAT = "mdfr-patches/1"
MANIFEST = "manifest.json"
INCREMENT = "amplitude_increment.npy"


def inputs_digest(listing: list[str], used: list[tuple[str, Path]]) -> str:
    """Digest of the image listing (names) and of the used images' bytes.

    Args:
        listing: relative paths of every image found (the selection depends on them).
        used: ``(relative path, file)`` of each image that enters the dataset.
    """
    h = hashlib.sha256()
    for rel in listing:
        h.update(f"L {rel}\n".encode())
    for rel, path in used:
        try:
            digest = file_sha256(path)
        except OSError as e:
            raise DataError(f"{path}: unreadable image ({e.strerror or e})") from None
        h.update(f"U {rel} {digest}\n".encode())
    return h.hexdigest()


def dataset_hash(identity: dict[str, Any]) -> str:
    """16-hex-digit hash of a JSON-able identity document."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def originals_hash(identity: dict[str, Any], images: list[dict[str, Any]]) -> str:
    """16-hex-digit hash of a dataset's *original* patches only: its identity without the
    codec, and which images ended up in which split with how many patches.

    Datasets of the same images and options under different attacks share it; a network
    trained on original patches alone (CMI pretraining) depends on nothing else. The image
    table is part of it because an attack that fails on an image (``skip_bad``) drops that
    image's originals too.
    """
    used = [(r["path"], r.get("split"), r.get("patches", 0)) for r in images]
    return dataset_hash({**{k: v for k, v in identity.items() if k != "codec"}, "used": used})


def summary(values: list[float]) -> dict[str, float | int | None]:
    """count/mean/std/min/median/max of the finite values (``None`` when there are none)."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return {"count": 0, "mean": None, "std": None, "min": None, "median": None, "max": None}
    return {
        "count": int(finite.size),
        "mean": round(float(finite.mean()), 4),
        "std": round(float(finite.std()), 4),
        "min": round(float(finite.min()), 4),
        "median": round(float(np.median(finite)), 4),
        "max": round(float(finite.max()), 4),
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def load_manifest(root: str | Path) -> dict[str, Any]:
    """Read a prepared dataset's manifest.

    Raises:
        DataError: the folder is not a (complete) prepared dataset.
    """
    path = Path(root).expanduser() / MANIFEST
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path.parent}: not a prepared dataset (no {MANIFEST}; run `mdfr data prepare`)"
        ) from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else None
        raise DataError(f"{path}: unsupported dataset format {got!r} (expected {FORMAT!r})")
    return doc


def require_splits(root: str | Path, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a dataset whose train, val and test splits all hold patches.

    Datasets prepared before ``mdfr data prepare`` refused empty splits may have one; a trial
    on it would train an epoch and then fail on the missing validation metrics.

    Raises:
        DataError: naming the dataset, the empty split(s) and how it was prepared.
    """
    doc = load_manifest(root) if doc is None else doc
    splits = doc.get("splits") or {}
    empty = [s for s in ("train", "val", "test") if not (splits.get(s) or {}).get("patches")]
    if empty:
        opts = doc.get("options") or {}
        how = ", ".join(
            f"{k}={opts[k]}" for k in ("val_frac", "test_frac", "split_by") if k in opts
        )
        raise DataError(
            f"dataset {Path(root).expanduser()}: split(s) {', '.join(empty)} hold no patches "
            f"(prepared with {how or 'unknown options'}); prepare it again with "
            "`mdfr data prepare` (val and test fractions above 0, at least 3 images per model)"
        )
    return doc


def is_complete(root: Path, expected_hash: str) -> bool:
    """Whether ``root`` holds a finished dataset with ``expected_hash`` and all its files."""
    try:
        doc = load_manifest(root)
    except DataError:
        return False
    if doc.get("dataset_hash") != expected_hash or not (root / INCREMENT).is_file():
        return False
    files = [f for s in doc.get("splits", {}).values() for f in s.get("shards", [])]
    return all((root / f).is_file() for f in files)
