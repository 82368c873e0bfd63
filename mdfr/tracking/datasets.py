"""A prepared patch dataset as MLflow dataset inputs of a run.

The UI's "Datasets used" (and the runs table's Dataset column) then says which attack a run
saw. One prepared folder becomes two inputs, because MLflow keeps one input per (name,
digest) and run, so one dataset cannot carry two contexts:

- ``<folder>/train``, context ``train``: the training split;
- ``<folder>/eval``, context ``eval``: the validation split (per-epoch metrics, model
  selection) and the test split (the reported accuracies).

Both have digest = the dataset's content hash (``dataset_hash`` of its manifest, the same
value as the runs' ``mdfr.dataset_hash`` tag), source = the folder (``local``), a tensor schema
of what the loader yields, and a profile with the codec, patch and image counts and the mean
bpp/PSNR of the compressed images. Codec, bpp and PSNR are also input tags, which the UI shows
beside the context.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mdfr.names import Tag

CONTEXT_TAG = Tag.MLFLOW_DATA_CONTEXT  # MLflow's own key (mlflow.utils.mlflow_tags)
SPLITS = {"train": ("train",), "eval": ("val", "test")}


def _mean(summary: Any) -> float | None:
    return summary.get("mean") if isinstance(summary, dict) else None


def _schema(patch: int) -> str:
    import numpy as np
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.types import Schema, TensorSpec

    shape = (-1, 3, patch, patch)
    features = Schema(
        [
            TensorSpec(np.dtype(np.uint8), shape, "original"),
            TensorSpec(np.dtype(np.uint8), shape, "compressed"),
        ]
    )
    targets = Schema([TensorSpec(np.dtype(np.int64), (-1,), "label")])
    return json.dumps(TensorDatasetSchema(features, targets).to_dict())


def _codec(manifest: dict[str, Any]) -> str:
    codec = manifest.get("codec")
    return str(codec.get("spec") if isinstance(codec, dict) else codec or "unknown")


def profile(manifest: dict[str, Any], context: str) -> dict[str, Any]:
    """What one input says about its splits: codec, counts, mean bpp and PSNR (dB)."""
    splits = manifest.get("splits", {})
    out: dict[str, Any] = {
        "codec": _codec(manifest),
        "classes": len(manifest.get("classes", [])),
        "patch": manifest.get("patch"),
    }
    for name in SPLITS[context]:
        s = splits.get(name, {})
        out[name] = {
            "patches": s.get("patches"),
            "images": s.get("images"),
            "bpp": _mean(s.get("bpp")),
            "psnr": _mean(s.get("psnr")),
        }
    return out


def dataset_inputs(root: str | Path, manifest: dict[str, Any]) -> list[Any]:
    """The ``mlflow.entities.DatasetInput`` list for a prepared dataset folder."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    root = Path(root).expanduser().resolve()
    source = json.dumps({"uri": str(root)})
    schema = _schema(int(manifest.get("patch") or 64))
    stats = manifest.get("stats", {})
    common = {"mdfr.codec": _codec(manifest)}
    for key in ("bpp", "psnr"):
        value = _mean(stats.get(key))
        if value is not None:
            common[f"mdfr.{key}"] = f"{value:.4g}"
    inputs = []
    for context in SPLITS:
        ds = Dataset(
            name=f"{root.name}/{context}",
            digest=str(manifest["dataset_hash"]),
            source_type="local",
            source=source,
            schema=schema,
            profile=json.dumps(profile(manifest, context)),
        )
        tags = [InputTag(CONTEXT_TAG, context)] + [InputTag(k, v) for k, v in common.items()]
        inputs.append(DatasetInput(ds, tags))
    return inputs
