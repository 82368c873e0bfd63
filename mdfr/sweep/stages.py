"""Stages that run once per sweep before the Tuner: dataset preparation and shared pretraining.

Both are cached by content hash, so a rerun (or another sweep on the same storage) does not
repeat them:

- **prepare** runs in the driver process (``mdfr.data.patches.prepare`` reuses a folder that
  already holds a dataset with the same hash). It is I/O-bound and writes to a path every node
  must see anyway.
- **pretraining** of the CMI network runs once per distinct pretraining config — (backbone,
  seed, dataset content hash, data/optim/train settings and the sweep's ``pretrain:``
  overrides) — as Ray tasks with the sweep's per-trial resources, in parallel, so on a
  cluster they land on GPU nodes. Results live under ``<storage>/cache/pretrain/<key>/``; a
  ``result.json`` there marks a finished stage. Every finetune/mdfr cell needing that network
  gets its ``cmi.pt`` as ``model.cmi_checkpoint``. Each stage also gets one MLflow child run
  (``mdfr.kind=pretrain``) under the sweep, reused when the stage was cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mdfr.config import from_dict, unflatten
from mdfr.errors import MdfrError, UsageError
from mdfr.sweep.spec import PrepareSpec, SweepPlan, pretrain_base

RESULT_FILE = "result.json"


def atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- dataset


def prepare_dataset(spec: PrepareSpec, root: Path, log: Callable[[str], None] = print) -> Path:
    """Prepare (or reuse) the sweep's dataset; relative paths are taken from ``root``."""
    from mdfr.data.patches import prepare

    if spec.synthesize is not None:
        from mdfr.data.synthetic import synthesize

        synthesize(_abs(spec.images, root), log=log, **spec.synthesize)
    return prepare(
        images=_abs(spec.images, root),
        codec=spec.codec,
        out=_abs(spec.out, root),
        log=log,
        **spec.options,
    )


def dataset_info(path: str | Path) -> dict[str, str]:
    """Content hash and codec of a prepared dataset (``unknown`` when not readable)."""
    try:
        doc = json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {"hash": "unknown", "codec": "unknown"}
    codec = doc.get("identity", {}).get("codec", {}).get("spec") or doc.get("codec") or "unknown"
    if isinstance(codec, dict):
        codec = codec.get("spec", "unknown")
    return {
        "hash": str(doc.get("dataset_hash") or doc.get("hash") or "unknown"),
        "codec": str(codec),
    }


def _abs(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root / p).resolve()


# --------------------------------------------------------------------------- pretraining


def pretrain_config(plan: SweepPlan, cell_flat: dict[str, Any], threads: int) -> dict[str, Any]:
    """The flat TrialConfig of the pretraining stage a cell needs."""
    flat = {**pretrain_base(cell_flat), **(plan.pretrain or {})}
    flat["mode"] = "pretrain"
    if not flat.get("train.threads"):
        flat["train.threads"] = threads
    return flat


def pretrain_key(flat: dict[str, Any], dataset_hash: str) -> str:
    """Content key of a pretraining stage: its config with the dataset named by content."""
    cfg = from_dict(unflatten(flat))
    blob = f"{cfg.hash(exclude=('output_dir', 'data.dataset'))}/{dataset_hash}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def needs_pretraining(cell_flat: dict[str, Any]) -> bool:
    return cell_flat["mode"] in ("finetune", "mdfr") and not cell_flat["model.cmi_checkpoint"]


def cached_result(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None


def run_pretrain_stage(
    flat: dict[str, Any],
    out: str,
    train_fn: Callable[..., dict[str, Any]],
    tracking: dict[str, str],
) -> dict[str, Any]:
    """Train one CMI network (inside a Ray task); resumes an interrupted run from its state."""
    from mdfr.tracking import Store

    outp = Path(out)
    done = cached_result(outp)
    if done is not None:
        return done
    cfg = from_dict(unflatten({**flat, "output_dir": out}))
    store = Store(tracking["uri"])
    key = outp.name
    run_id, _ = store.child_run(
        tracking["experiment_id"],
        tracking["parent_run_id"],
        f"pretrain-{key}",
        _stage_tags(cfg.model.backbone, cfg.seed, tracking),
        kind="pretrain",
        reopen=True,
    )
    state = outp / "checkpoint" / "state.pt"
    try:
        result = train_fn(
            cfg,
            report=None,
            tracker=store.tracker(run_id),
            checkpoint=str(state.parent) if state.is_file() else None,
        )
    except BaseException:
        store.finish(run_id, "FAILED", "failed")
        raise
    if result.get("status") != "ok" or not result.get("cmi_checkpoint"):
        store.finish(run_id, "FAILED", str(result.get("status", "failed")))
        raise MdfrError(
            f"pretraining {cfg.model.backbone} (seed {cfg.seed}) ended with status "
            f"{result.get('status')!r}; see {out}"
        )
    keep = {k: v for k, v in result.items() if isinstance(v, str | int | float | bool)}
    keep["run_id"] = run_id
    atomic_write_json(outp / RESULT_FILE, keep)
    store.finish(run_id, "FINISHED", "ok")
    return keep


def _stage_tags(backbone: str, seed: int, tracking: dict[str, str]) -> dict[str, str]:
    return {
        "mdfr.sweep": tracking["sweep"],
        "mdfr.backbone": backbone,
        "mdfr.seed": str(seed),
        "mdfr.git_commit": tracking["git_commit"],
        "mdfr.dataset_hash": tracking["dataset_hash"],
        "mdfr.codec": tracking["codec"],
        "mdfr.mode": "pretrain",
    }


def pretrain_all(
    jobs: dict[str, dict[str, Any]],
    cache: Path,
    plan: SweepPlan,
    train_fn: Callable[..., dict[str, Any]],
    tracking: dict[str, str],
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Run the missing pretraining stages as parallel Ray tasks; key -> ``cmi.pt`` path.

    Cached stages are not rerun; they still get a (cached-tagged) child run in this sweep so
    the parent run lists every network its trials started from.
    """
    import ray

    from mdfr.tracking import Store

    paths: dict[str, str] = {}
    pending: dict[str, Any] = {}
    remote = ray.remote(run_pretrain_stage).options(
        num_cpus=plan.resources.cpu, num_gpus=plan.resources.gpu, max_retries=plan.max_failures
    )
    for key, flat in sorted(jobs.items()):
        out = cache / key
        done = cached_result(out)
        if done is not None:
            paths[key] = done["cmi_checkpoint"]
            _record_cached(Store(tracking["uri"]), key, flat, done, tracking)
            log(f"pretraining {flat['model.backbone']} seed {flat['seed']}: cached ({out})")
            continue
        log(f"pretraining {flat['model.backbone']} seed {flat['seed']} -> {out}")
        pending[key] = remote.remote(flat, str(out), train_fn, tracking)
    for key, ref in pending.items():
        try:
            paths[key] = ray.get(ref)["cmi_checkpoint"]
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, MdfrError) else None
            if isinstance(cause, UsageError):
                raise cause from None
            raise MdfrError(f"pretraining stage {key} failed: {cause or e}") from None
    return paths


def _record_cached(
    store: Any, key: str, flat: dict[str, Any], done: dict[str, Any], tracking: dict[str, str]
) -> None:
    tags = {**_stage_tags(flat["model.backbone"], flat["seed"], tracking), "mdfr.cached": "true"}
    run_id, created = store.child_run(
        tracking["experiment_id"],
        tracking["parent_run_id"],
        f"pretrain-{key}",
        tags,
        kind="pretrain",
    )
    if not created:
        return
    tracker = store.tracker(run_id)
    tracker.set_tags({"mdfr.cmi_checkpoint": str(done.get("cmi_checkpoint"))})
    tracker.log_metrics(
        {f"test/{k}": v for k, v in done.items() if k.startswith(("acc_", "bacc_"))},
        step=int(done.get("epochs", 0)),
    )
    store.finish(run_id, "FINISHED", "ok")
