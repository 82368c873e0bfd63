"""The attack stage of a sweep: codecs trained first, then one prepared dataset per attack.

A sweep names its attack in ``prepare.codec`` or, as a grid axis, in ``grid.attack`` (one
codec spec per value). Before any trial:

1. the camera images are made when ``prepare.synthesize`` asks for it (cached by arguments);
2. every ``train:`` spec (:mod:`mdfr.data.codec_specs`) becomes a trained codec: the missing
   ones train as parallel Ray tasks with the sweep's per-trial resources (GPU nodes on a
   cluster), cached by content under ``<storage>/cache/codecs/<key>/``, so the same settings
   on the same images are never trained twice, by this sweep or any other on that storage.
   The cache works as the pretraining one does (:mod:`mdfr.sweep.cache`): a codec trains in
   a folder private to its sweep and is published whole by a rename;
3. each attack is prepared into its own dataset, ``<prepare.out>/<attack slug>/`` with an
   attack axis, ``<prepare.out>`` itself for the single ``prepare.codec``; a folder that
   already holds the same content (same hash) is reused as by ``mdfr data prepare``.

Preparation runs in the driver (I/O-bound, and its output is on a path every node reads).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from mdfr.data.codec_specs import (
    CHECKPOINT,
    attack_slug,
    images_digest,
    is_train_spec,
    train_config,
    train_into,
    train_key,
)
from mdfr.data.codec_train import CodecTrainConfig
from mdfr.data.patches import prepare
from mdfr.data.synthetic import synthesize
from mdfr.errors import MdfrError, UsageError
from mdfr.sweep import cache
from mdfr.sweep.plan import ATTACK, SweepPlan
from mdfr.sweep.state import abs_path

Log = Callable[[str], None]


def prepare_attacks(
    plan: SweepPlan, root: Path, storage: Path, log: Log = print, owner: str = "local"
) -> dict[str, Path]:
    """Attack -> its prepared dataset folder, for every attack of ``plan`` (in order).

    ``owner`` names the sweep (its MLflow parent run id) whose private folders codecs train in.
    """
    spec = plan.prepare
    if spec is None:
        return {}
    images = abs_path(spec.images, root)
    if spec.synthesize is not None:
        synthesize(images, log=log, **spec.synthesize)
    codecs = resolve_codecs(plan, images, storage / "cache" / "codecs", log, owner)
    out = abs_path(spec.out, root)
    several = ATTACK in plan.axes
    made = {}
    for attack in plan.attacks:
        folder = out / attack_slug(attack) if several else out
        log(f"attack {attack}: dataset {folder}")
        made[attack] = prepare(
            images=images, codec=codecs[attack], out=folder, log=log, **spec.options
        )
    return made


def resolve_codecs(
    plan: SweepPlan, images: Path, codecs: Path, log: Log = print, owner: str = "local"
) -> dict[str, str]:
    """Attack -> the codec spec it is prepared with: ``train:`` specs become
    ``learned:<cached checkpoint>`` (trained here when missing), the others stay as written."""
    assert plan.prepare is not None
    out = {a: a for a in plan.attacks}
    configs = {a: _full_config(a, plan.prepare.codec_train) for a in out if is_train_spec(a)}
    if not configs:
        return out
    digest = images_digest(images)
    entries = {a: codecs / train_key(cfg, digest) for a, cfg in configs.items()}
    pending: dict[str, Any] = {}
    started: set[Path] = set()
    remote = ray.remote(train_codec_task).options(
        num_cpus=plan.resources.cpu, num_gpus=plan.resources.gpu, max_retries=plan.max_failures
    )
    for attack, entry in entries.items():
        if cache.finished(entry) is not None:
            log(f"codec {attack}: cached ({entry})")
        elif entry not in started:  # two specs with the same settings train once
            started.add(entry)
            log(f"codec {attack}: training on {images} -> {entry}")
            pending[attack] = remote.remote(
                attack, configs[attack], str(images), str(entry), owner, plan.resources.cpu
            )
    for attack, ref in pending.items():
        try:
            info = ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, MdfrError) else None
            if isinstance(cause, UsageError):
                raise cause from None
            raise MdfrError(f"training codec {attack} failed: {cause or e}") from None
        stats = info["stats"]
        log(
            f"codec {attack}: trained in {stats['seconds']:.0f} s, bpp {stats['bpp']:.3f}, "
            f"PSNR {stats['psnr']:.2f} dB"
        )
    for attack, entry in entries.items():
        out[attack] = f"learned:{entry / CHECKPOINT}"
    return out


def _full_config(attack: str, defaults: dict[str, Any]) -> CodecTrainConfig:
    """The spec's settings, checked in full (CompressAI's tables too) before anything trains."""
    cfg = train_config(attack, defaults)
    try:
        cfg.validate()
    except UsageError as e:
        raise UsageError(f"codec spec {attack!r}: {e}") from None
    return cfg


def train_codec_task(
    spec: str, cfg: CodecTrainConfig, images: str, entry: str, owner: str, threads: int
) -> dict[str, Any]:
    """Train one codec (inside a Ray task) and publish it as cache ``entry``; its info."""
    # Lazy: torch only in the task's process; the driver never trains.
    import torch

    # CompressAI's import warns about torch.jit.script; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")
    torch.set_num_threads(max(1, int(threads)))
    done = cache.finished(Path(entry))  # another sweep published it meanwhile
    if done is not None:
        return done
    work = cache.work_dir(Path(entry), owner)
    shutil.rmtree(work, ignore_errors=True)  # a half-trained codec does not resume: start over
    work.mkdir(parents=True)
    return cache.publish(work, Path(entry), train_into(spec, cfg, Path(images), work))
