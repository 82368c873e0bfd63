"""Stages that run once per sweep before the Tuner: dataset preparation and shared pretraining.

Both are cached by content hash, so a rerun (or another sweep on the same storage) does not
repeat them:

- **prepare** (:mod:`mdfr.sweep.attacks`): codecs a ``train:`` spec names are trained first,
  then one dataset per attack is prepared in the driver process (``mdfr.data.patches.prepare``
  reuses a folder that already holds a dataset with the same hash). It is I/O-bound and
  writes to a path every node must see anyway.
- **pretraining** of the CMI network runs once per distinct pretraining config — (backbone,
  seed, the content hash of the dataset's *original* patches, data/optim/train settings and
  the sweep's ``pretrain:`` overrides) — as Ray tasks with the sweep's per-trial resources, in
  parallel, so on a cluster they land on GPU nodes. The network sees original patches only, so
  the codec is not part of the key: a sweep over several attacks of the same images (a
  ``grid.attack`` axis) pretrains once, and so does a later sweep with another attack.
  Results live under ``<storage>/cache/pretrain/<key>/``; a ``result.json`` there marks a
  finished stage, published whole after training in a folder private to the sweep
  (:mod:`mdfr.sweep.cache`), so concurrent sweeps never share one in progress. Every
  finetune/mdfr cell needing that network
  gets its ``cmi.pt`` as ``model.cmi_checkpoint``. Each stage also gets one MLflow child run
  (``mdfr.kind=pretrain``) under the sweep, reused when the stage was cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from mdfr.config import from_dict, unflatten
from mdfr.data.manifest import require_splits
from mdfr.errors import MdfrError, UsageError
from mdfr.names import Kind, Tag
from mdfr.results import TrialResult
from mdfr.sweep import cache
from mdfr.sweep.attacks import prepare_attacks
from mdfr.sweep.plan import Cell, SweepPlan, pretrain_base
from mdfr.sweep.results import log_trial_model, model_tags
from mdfr.sweep.state import (
    SweepState,
    TrackingContext,
    read_json,
)
from mdfr.tracking import Store
from mdfr.tracking.system import system_metrics

RESULT_FILE = "result.json"
TrainFn = Callable[..., TrialResult | dict[str, Any]]


def run_stages(state: SweepState, train_fn: TrainFn, log: Callable[[str], None]) -> SweepState:
    """Dataset and pretraining stages; the state with every cell resolved, in phase ``tune``.

    Every cell gets absolute paths (Tune changes the trials' working directory) and, when it
    needs one, the ``cmi.pt`` of its pretraining stage.
    """
    plan = state.plan
    made = prepare_attacks(plan, Path(state.root), Path(state.storage), log, state.parent_run_id)
    cells = [_absolute(c, state, made.get(plan.attack_of(c))) for c in plan.cells]
    paths = list(dict.fromkeys(c.config["data.dataset"] for c in cells))
    check_datasets(set(paths))
    attack_at = {str(path): attack for attack, path in made.items()}
    datasets = {p: dataset_info(p, attack_at.get(p, "")) for p in paths}
    first = datasets[paths[0]]
    state = state.replace(dataset_hash=first["hash"], codec=first["codec"], datasets=datasets)
    if plan.pretrain is not None:
        cells = _with_pretrained(cells, state, train_fn, log)
    return state.replace(plan=plan.with_cells(cells), phase="tune")


def _absolute(cell: Cell, state: SweepState, dataset: Path | None) -> Cell:
    ckpt = cell.config["model.cmi_checkpoint"]
    return cell.with_config(
        **{
            "data.dataset": str(dataset or state.path(cell.config["data.dataset"])),
            "model.cmi_checkpoint": str(state.path(ckpt)) if ckpt else "",
        }
    )


def check_datasets(paths: set[str]) -> None:
    """Every dataset a trial reads is prepared (fails before any trial starts)."""
    for path in sorted(paths):
        if not (Path(path) / "manifest.json").is_file():
            raise UsageError(
                f"dataset {path} is not prepared (no manifest.json): run `mdfr data prepare` "
                "or add a prepare: section to the sweep file"
            )
        require_splits(path)  # an empty split would fail every trial after its first epoch


def _with_pretrained(
    cells: list[Cell], state: SweepState, train_fn: TrainFn, log: Callable[[str], None]
) -> list[Cell]:
    """Cells that need a pretrained CMI net, pointed at the one their stage produced."""
    plan = state.plan
    jobs: dict[str, dict[str, Any]] = {}
    needs: dict[int, str] = {}
    for cell in cells:
        if needs_pretraining(cell.config):
            flat = pretrain_config(plan, cell.config, plan.resources.cpu)
            info = state.datasets.get(flat["data.dataset"]) or dataset_info(flat["data.dataset"])
            key = pretrain_key(flat, info["originals"])
            # Cells of several attacks share the key: the first one's dataset is read (its
            # original patches are the same in all of them).
            jobs.setdefault(key, flat)
            needs[cell.index] = key
    entries = Path(state.storage) / "cache" / "pretrain"
    paths = pretrain_all(jobs, entries, plan, train_fn, _contexts(jobs, state), log)
    return [
        c.with_config(**{"model.cmi_checkpoint": paths[needs[c.index]]}) if c.index in needs else c
        for c in cells
    ]


def _contexts(jobs: dict[str, dict[str, Any]], state: SweepState) -> dict[str, TrackingContext]:
    """Each stage's runs are tagged with the dataset it read, not the sweep's first one."""
    out = {}
    for key, flat in jobs.items():
        tags = state.dataset_tags(flat["data.dataset"])
        out[key] = dataclasses.replace(
            state.tracking, dataset_hash=tags["dataset_hash"], codec=tags["codec"]
        )
    return out


# --------------------------------------------------------------------------- dataset


def dataset_info(path: str | Path, attack: str = "") -> dict[str, Any]:
    """What a prepared dataset's manifest says about it (``unknown`` when not readable).

    Keys: ``hash`` (content hash), ``originals`` (hash of its original patches only; the
    content hash for datasets prepared before it was recorded), ``codec`` (the spec it was
    prepared with), ``attack`` (as the sweep names it: ``attack`` or the codec), ``bpp`` and
    ``psnr`` (means over its images, from the real bitstreams; None when unknown).
    """
    doc = read_json(Path(path) / "manifest.json")
    if doc is None:
        return {"hash": "unknown", "originals": "unknown", "codec": "unknown", "attack": attack}
    codec = doc.get("identity", {}).get("codec", {}).get("spec") or doc.get("codec") or "unknown"
    if isinstance(codec, dict):
        codec = codec.get("spec", "unknown")
    digest = str(doc.get("dataset_hash") or doc.get("hash") or "unknown")
    stats = doc.get("stats") or {}
    return {
        "hash": digest,
        "originals": str(doc.get("originals_hash") or digest),
        "codec": str(codec),
        "attack": attack or str(codec),
        "bpp": (stats.get("bpp") or {}).get("mean"),
        "psnr": (stats.get("psnr") or {}).get("mean"),
    }


# --------------------------------------------------------------------------- pretraining


def pretrain_config(plan: SweepPlan, cell_flat: dict[str, Any], threads: int) -> dict[str, Any]:
    """The flat TrialConfig of the pretraining stage a cell needs."""
    flat = {**pretrain_base(cell_flat), **(plan.pretrain or {})}
    flat["mode"] = "pretrain"
    if not flat.get("train.threads"):
        flat["train.threads"] = threads
    return flat


def pretrain_key(flat: dict[str, Any], originals_hash: str) -> str:
    """Content key of a pretraining stage: its config, with the dataset named by the content
    of its original patches (the only ones it trains on), so the attack is not part of it."""
    cfg = from_dict(unflatten(flat))
    blob = f"{cfg.hash(exclude=('output_dir', 'data.dataset'))}/originals/{originals_hash}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def needs_pretraining(cell_flat: dict[str, Any]) -> bool:
    return cell_flat["mode"] in ("finetune", "mdfr") and not cell_flat["model.cmi_checkpoint"]


def run_pretrain_stage(
    flat: dict[str, Any], out: str, train_fn: TrainFn, tracking: TrackingContext
) -> dict[str, Any]:
    """Train one CMI network (inside a Ray task) and publish it under ``out``.

    It trains in a folder private to this sweep and resumes an interrupted run of this sweep
    only (:mod:`mdfr.sweep.cache`: concurrent sweeps never share an entry in progress).
    """
    outp = Path(out)
    done = read_json(outp / RESULT_FILE)
    if done is not None:
        return done
    work = cache.work_dir(outp, tracking.parent_run_id)
    cfg = from_dict(unflatten({**flat, "output_dir": str(work)}))
    store = Store(tracking.uri)
    run_id, _ = store.child_run(
        tracking.experiment_id,
        tracking.parent_run_id,
        f"pretrain-{outp.name}",
        tracking.tags(cfg),
        kind=Kind.PRETRAIN,
        reopen=True,
    )
    state = work / "checkpoint" / "state.pt"
    try:
        with system_metrics(run_id, store.uri, tracking.system_metrics):
            result = TrialResult.coerce(
                train_fn(
                    cfg,
                    report=None,
                    tracker=store.tracker(run_id),
                    checkpoint=str(state.parent) if state.is_file() else None,
                )
            )
    except BaseException:
        store.finish(run_id, "FAILED", "failed")
        raise
    if not result.ok or not result.cmi_checkpoint:
        store.finish(run_id, "FAILED", result.status)
        raise MdfrError(
            f"pretraining {cfg.model.backbone} (seed {cfg.seed}) ended with status "
            f"{result.status!r}; see {work}"
        )
    if tracking.log_models == "all":  # from the work folder, before it is published
        tags = model_tags(tracking.tags(cfg))
        log_trial_model(store, run_id, work, f"pretrain-{outp.name}", tags, cfg.train.epochs)
    keep = {**result.scalars(), "run_id": run_id}
    keep = cache.publish(work, outp, keep)
    store.finish(run_id, "FINISHED", result.status)
    return keep


def pretrain_all(
    jobs: dict[str, dict[str, Any]],
    cache: Path,
    plan: SweepPlan,
    train_fn: TrainFn,
    tracking: dict[str, TrackingContext],
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Run the missing pretraining stages as parallel Ray tasks; key -> ``cmi.pt`` path.

    ``tracking`` holds each stage's tracking context (by key).

    Cached stages are not rerun; they still get a (cached-tagged) child run in this sweep so
    the parent run lists every network its trials started from.
    """
    paths: dict[str, str] = {}
    pending: dict[str, Any] = {}
    remote = ray.remote(run_pretrain_stage).options(
        num_cpus=plan.resources.cpu, num_gpus=plan.resources.gpu, max_retries=plan.max_failures
    )
    for key, flat in sorted(jobs.items()):
        out = cache / key
        done = read_json(out / RESULT_FILE)
        if done is not None:
            paths[key] = done["cmi_checkpoint"]
            _record_cached(Store(tracking[key].uri), key, flat, done, tracking[key])
            log(f"pretraining {flat['model.backbone']} seed {flat['seed']}: cached ({out})")
            continue
        log(f"pretraining {flat['model.backbone']} seed {flat['seed']} -> {out}")
        pending[key] = remote.remote(flat, str(out), train_fn, tracking[key])
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
    store: Store, key: str, flat: dict[str, Any], done: dict[str, Any], tracking: TrackingContext
) -> None:
    cfg = from_dict(unflatten(flat))
    run_id, created = store.child_run(
        tracking.experiment_id,
        tracking.parent_run_id,
        f"pretrain-{key}",
        {**tracking.tags(cfg), Tag.CACHED: "true"},
        kind=Kind.PRETRAIN,
    )
    if not created:
        return
    result = TrialResult.from_dict(done)
    tracker = store.tracker(run_id)
    tracker.set_tags({Tag.CMI_CHECKPOINT: result.cmi_checkpoint})
    tracker.log_metrics(result.test_metrics, step=result.epochs)
    store.finish(run_id, "FINISHED", "ok")
