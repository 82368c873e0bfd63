"""One trial, as a pure function: ``train_trial(cfg) -> TrialResult``.

Ray calls it from a sweep, ``mdfr train`` calls it by hand; it imports neither Ray nor MLflow.
Progress leaves through two optional callables: ``report(metrics, checkpoint_dir)`` once per
epoch (the sweep driver forwards it to Ray Tune) and a ``tracker`` (MLflow, from
``mdfr.tracking``).

Modes (``cfg.mode``):
    pretrain  the CMI network on original patches; exports ``cmi.pt`` for the other modes.
    finetune  Table II #1: the pretrained CMI network trained further on compressed patches.
    mdfr      MDFRNet in front of the pretrained CMI network (frozen unless
              ``model.cmi_trainable``), trained with λ1·L_spa − λ2·L_freq + λ3·L_CMI.

Test accuracies (``TrialResult.accuracy``; ``test/<key>`` as metrics), all on the test split
(each ``acc_*`` also as ``bacc_*``, balanced accuracy: the mean per-class recall, which class
imbalance cannot inflate):
    acc_original    the CMI network the trial started from (pretrain: the one it trained) on
                    original patches — Table I column 1;
    acc_compressed  the same network on AI-compressed patches — Table I column 2;
    acc_restored    the trial's defence on compressed patches: MDFRNet + CMI (mdfr) or the
                    fine-tuned network (finetune) — Table I column 3 and Table II. Absent for
                    pretrain, which has no defence.

Determinism: all training randomness comes from torch's generator (saved in checkpoints) and
the epoch's shuffle seed ``(seed, epoch)``, so a resumed trial follows the uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from tqdm import tqdm

from mdfr import checkpoints as ckpt
from mdfr import evaluate
from mdfr.config import TrialConfig
from mdfr.data.loader import load_amplitude_increment, make_loader
from mdfr.data.manifest import load_manifest, require_splits
from mdfr.devices import resolve_device
from mdfr.errors import UsageError
from mdfr.hashing import file_sha256
from mdfr.losses import cmi_cross_entropy, mdfr_loss
from mdfr.models import create_backbone, create_model
from mdfr.names import (
    EPOCH,
    EPOCH_TIME,
    STATUS,
    TRAIN_PATCHES_PER_S,
    VAL_ACC,
    VIEWS,
    Outcome,
    Tag,
    primary_view,
    result_key,
    train_metric,
    trial_tags,
    val_acc,
)
from mdfr.results import TrialResult

# Steps between host reads of the loss on CUDA (a read waits for the GPU to drain).
SYNC_EVERY = 32

ReportFn = Callable[[dict[str, Any], "str | None"], None]


class Tracker(Protocol):
    """What the engine needs from an experiment tracker (``mdfr.tracking.Tracker`` is one)."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_dataset(self, root: str, manifest: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...


@dataclass
class _Trial:
    """Everything built for one trial; the training loop reads from it."""

    cfg: TrialConfig
    device: torch.device
    root: Path
    out: Path
    classes: list[str]
    dataset_hash: str
    cmi: torch.nn.Module  # the network the trial started from, or trains (pretrain/finetune)
    net: torch.nn.Module  # what is optimised: cmi (pretrain/finetune) or MDFRNet (mdfr)
    baseline: torch.nn.Module | None  # an untouched copy of the starting CMI net for acc_*
    cmi_sha256: str | None

    @property
    def state_dir(self) -> Path:
        """Where the resumable training state (``state.pt``) is written after every epoch."""
        return self.out / "checkpoint"


def _device(name: str) -> torch.device:
    dev = torch.device(resolve_device(name, "train.device"))
    if dev.type == "cuda":
        # Fixed 64x64 shapes: let cuDNN pick its fastest kernels once (determinism is a CPU
        # promise; on CUDA the chosen algorithms may differ between runs).
        torch.backends.cudnn.benchmark = True
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_output_dir(cfg: TrialConfig) -> Path:
    return Path("results/runs") / f"{cfg.mode}-{cfg.hash()}"


# --------------------------------------------------------------------------- building


def _build(cfg: TrialConfig) -> _Trial:
    device = _device(cfg.train.device)
    root = Path(cfg.data.dataset).expanduser().resolve()
    manifest = require_splits(root)
    classes = list(manifest["classes"])
    out = Path(cfg.output_dir or default_output_dir(cfg)).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    cmi = create_backbone(
        cfg.model.backbone, num_classes=len(classes), pretrained=cfg.model.pretrained
    )
    cmi_sha = None
    if cfg.mode != "pretrain":
        if not cfg.model.cmi_checkpoint:
            raise UsageError(
                f"mode {cfg.mode!r} needs model.cmi_checkpoint (a cmi.pt from a pretrain trial)"
            )
        state = ckpt.load_cmi(cfg.model.cmi_checkpoint, cfg.model.backbone, classes)
        cmi.load_state_dict(state["state_dict"])
        cmi_sha = file_sha256(cfg.model.cmi_checkpoint)

    baseline = None
    if cfg.mode == "mdfr":
        increment = load_amplitude_increment(root) if cfg.model.amplitude_mask else None
        net = create_model(
            "mdfrnet", cfg.model, num_classes=len(classes), amplitude_increment=increment, cmi=cmi
        )
        if cfg.model.cmi_trainable:
            baseline = _frozen_copy(cmi)
    else:
        net = cmi
        if cfg.mode == "finetune":
            baseline = _frozen_copy(cmi)

    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    net.to(device, memory_format=memory_format)
    if baseline is not None:
        baseline.to(device, memory_format=memory_format)
    return _Trial(
        cfg, device, root, out, classes, manifest["dataset_hash"], cmi, net, baseline, cmi_sha
    )


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    twin = copy.deepcopy(model).eval()
    twin.requires_grad_(False)
    return twin


def _optimizer(cfg: TrialConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay, momentum=0.9)


def _scheduler(
    cfg: TrialConfig, opt: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.optim.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.train.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


# --------------------------------------------------------------------------- data


def _batches(
    t: _Trial, split: str, *, shuffle: bool, epoch: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(original, compressed, label) batches on the device, as float in [0, 1]."""
    d = t.cfg.data
    limit = d.limit_train if split == "train" else d.limit_eval
    loader = make_loader(
        t.root,
        split,
        batch_size=d.batch_size,
        shuffle=shuffle,
        # A seed per epoch: resuming at epoch k replays epoch k's order without loader state.
        seed=t.cfg.seed * 100_003 + epoch,
        limit=limit,
        num_workers=d.num_workers,
        pin_memory=t.device.type == "cuda",
        drop_last=False,
    )
    mf = torch.channels_last if t.cfg.train.channels_last else torch.contiguous_format
    for ori, comp, label in loader:
        yield (
            ori.to(t.device, non_blocking=True).float().div_(255).contiguous(memory_format=mf),
            comp.to(t.device, non_blocking=True).float().div_(255).contiguous(memory_format=mf),
            label.to(t.device, non_blocking=True),
        )


def _autocast(t: _Trial):
    if t.cfg.train.amp == "bf16":
        return torch.autocast(t.device.type, dtype=torch.bfloat16)
    return nullcontext()


# --------------------------------------------------------------------------- steps


def _loss(t: _Trial, model: torch.nn.Module, ori, comp, label) -> dict[str, torch.Tensor]:
    with _autocast(t):
        if t.cfg.mode == "mdfr":
            out = model(comp)
            return mdfr_loss(out, ori, label, t.cfg.loss)
        x = ori if t.cfg.mode == "pretrain" else comp
        ce = cmi_cross_entropy(model(x).float(), label)
        return {"loss": ce, "cmi": ce}


def _defence(t: _Trial, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """images -> logits for what the trial trains (the restored pipeline for mdfr)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        with _autocast(t):
            out = model(x)
        return (out["logits"] if isinstance(out, dict) else out).float()

    return fn


def _evaluate(t: _Trial, model: torch.nn.Module, split: str) -> dict[str, Any]:
    """Accuracies on ``split``: keys original / compressed / restored with (pred, true)."""
    model.eval()
    start = t.baseline if t.baseline is not None else (t.cmi if t.cfg.mode != "pretrain" else model)
    start_fn = _defence(t, start)
    defence_fn = _defence(t, model)
    pairs: dict[str, tuple[list, list]] = {k: ([], []) for k in VIEWS}
    with torch.no_grad():
        for ori, comp, label in _batches(t, split, shuffle=False):
            views = {"original": start_fn(ori), "compressed": start_fn(comp)}
            if t.cfg.mode != "pretrain":
                views["restored"] = defence_fn(comp)
            for k, logits in views.items():
                pairs[k][0].append(logits.argmax(1).cpu())
                pairs[k][1].append(label.cpu())
    _train_mode(t)
    return {k: (torch.cat(p).numpy(), torch.cat(y).numpy()) for k, (p, y) in pairs.items() if p}


def _train_mode(t: _Trial) -> None:
    t.net.train()
    if t.cfg.mode == "mdfr" and not t.cfg.model.cmi_trainable:
        t.cmi.eval()  # a frozen CMI net keeps its BatchNorm statistics too


# --------------------------------------------------------------------------- the trial


def train_trial(
    cfg: TrialConfig,
    report: ReportFn | None = None,
    tracker: Tracker | None = None,
    checkpoint: str | Path | None = None,
    *,
    progress: bool = False,
) -> TrialResult:
    """Train and evaluate one trial.

    Args:
        cfg: the validated trial config.
        report: called after every epoch with that epoch's metrics and the folder holding the
            checkpoint just written (Ray Tune's hook; ``None`` outside a sweep).
        tracker: experiment tracker for params, per-epoch metrics, tags and artifacts.
        checkpoint: a checkpoint folder (or ``state.pt``) to resume from.
        progress: show a progress bar per epoch (for interactive ``mdfr train``).

    Returns:
        The :class:`~mdfr.results.TrialResult`: ``status`` ("ok" or "diverged"), the test
        accuracies (see module docstring), per-model accuracy, confusion-matrix files, the
        folder of the last state, ``cmi_checkpoint`` (pretrain/finetune: the exported network).
    """
    # Set-up: threads, seeds, the networks, the optimiser and its schedule.
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    t = _build(cfg)
    opt = _optimizer(cfg, [p for p in t.net.parameters() if p.requires_grad])
    sched = _scheduler(cfg, opt)
    model: torch.nn.Module = torch.compile(t.net) if cfg.train.compile else t.net
    # A retry or a resumed run continues from its last epoch: weights, optimiser, RNG.
    first_epoch = 0 if checkpoint is None else _resume(t, opt, sched, checkpoint)
    # The resolved config beside the weights: enough to rebuild the trained network later
    # (mdfr.trained.load_trial), with or without a tracker.
    (t.out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if tracker is not None:
        _start_tracking(t, tracker)

    history: dict[str, float] = {}
    _train_mode(t)
    for epoch in range(first_epoch, cfg.train.epochs):
        metrics, finite = _train_epoch(t, model, opt, epoch, progress)
        sched.step()
        if not finite:
            # A non-finite loss ends the trial: reported as such, nothing is saved or tested.
            return _diverged(t, metrics, tracker, report)
        metrics.update(_validate(t, model))
        _save_state(t, opt, sched, epoch)
        history = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        if tracker is not None:
            tracker.log_metrics(
                {k: v for k, v in history.items() if math.isfinite(v)}, step=epoch + 1
            )
        if report is not None:
            report(metrics, str(t.state_dir))

    # The test split: accuracies, confusion matrices, and the network other trials start from.
    return _finish(t, model, tracker, history)


def _resume(
    t: _Trial,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    checkpoint: str | Path,
) -> int:
    """Restore a trial's state from ``checkpoint``; returns the first epoch still to run."""
    state = ckpt.safe_load(checkpoint)
    if state.get("cfg_hash") != t.cfg.hash():
        raise UsageError(
            f"checkpoint {checkpoint} belongs to another config (hash {state.get('cfg_hash')})"
        )
    t.net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if t.device.type == "cuda" and state.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(state["rng_cuda"], t.device)
    return int(state["epoch"]) + 1


def _start_tracking(t: _Trial, tracker: Tracker) -> None:
    """Params, the dataset as the run's input, tags and the resolved config file, once per
    run."""
    cfg = t.cfg
    tracker.log_params(cfg.to_flat_dict())
    tracker.log_dataset(str(t.root), load_manifest(t.root))
    tags = {**trial_tags(cfg, dataset_hash=t.dataset_hash), Tag.CONFIG_HASH: cfg.hash()}
    if t.cmi_sha256:
        tags[Tag.CMI_SHA256] = t.cmi_sha256
    tracker.set_tags(tags)
    tracker.log_artifact(str(t.out / "config.yaml"))


def _train_epoch(
    t: _Trial, model: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int, progress: bool
) -> tuple[dict[str, Any], bool]:
    """One pass over the training split: (the epoch's train metrics, whether the loss stayed
    finite)."""
    cfg = t.cfg
    sync_every = 1 if t.device.type == "cpu" else SYNC_EVERY
    t0 = time.perf_counter()
    sums: dict[str, torch.Tensor] = {}
    steps = seen = 0
    finite = torch.ones((), dtype=torch.bool, device=t.device)
    batches = _batches(t, "train", shuffle=True, epoch=epoch)
    if progress:
        batches = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False)
    for ori, comp, label in batches:
        parts = _loss(t, model, ori, comp, label)
        loss = parts["loss"]
        # Reading a CUDA value stalls the pipeline, so the finiteness flag and the loss sums
        # stay on the device and are read every SYNC_EVERY steps (every step on CPU).
        finite &= torch.isfinite(loss.detach())
        if (steps + 1) % sync_every == 0 and not bool(finite):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float()
        steps += 1
        seen += len(label)
        if cfg.train.max_steps_per_epoch and steps >= cfg.train.max_steps_per_epoch:
            break
    elapsed = time.perf_counter() - t0
    metrics: dict[str, Any] = {train_metric(k): float(v) / max(steps, 1) for k, v in sums.items()}
    metrics[EPOCH] = epoch + 1
    metrics[EPOCH_TIME] = elapsed
    metrics[TRAIN_PATCHES_PER_S] = seen / elapsed if elapsed > 0 else 0.0
    return metrics, bool(finite)


def _validate(t: _Trial, model: torch.nn.Module) -> dict[str, float]:
    """Validation accuracy per view, and ``val/acc`` for the one the trial is judged by."""
    out = {val_acc(k): evaluate.accuracy(p, y) for k, (p, y) in _evaluate(t, model, "val").items()}
    out[VAL_ACC] = out[val_acc(primary_view(t.cfg.mode))]
    return out


def _save_state(
    t: _Trial,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
) -> None:
    """Everything a resumed trial needs to follow the uninterrupted one exactly."""
    ckpt.atomic_save(
        {
            "epoch": epoch,
            "cfg_hash": t.cfg.hash(),
            "model": t.net.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(t.device) if t.device.type == "cuda" else None,
        },
        t.state_dir / ckpt.STATE_FILE,
    )


def _diverged(
    t: _Trial, metrics: dict[str, Any], tracker: Tracker | None, report: ReportFn | None
) -> TrialResult:
    metrics[STATUS] = Outcome.DIVERGED
    if tracker is not None:
        tracker.set_tags({Tag.STATUS: Outcome.DIVERGED})
    if report is not None:
        report(metrics, None)
    return TrialResult(
        status=Outcome.DIVERGED,
        epochs=int(metrics[EPOCH]),
        output_dir=str(t.out),
        dataset_hash=t.dataset_hash,
    )


def _finish(
    t: _Trial, model: torch.nn.Module, tracker: Tracker | None, history: dict[str, float]
) -> TrialResult:
    """Test-split metrics, per-model accuracy, confusion matrices; exports trained CMI nets."""
    accuracy: dict[str, float] = {}
    per_model: dict[str, dict[str, float]] = {}
    files: dict[str, str] = {}
    n = len(t.classes)
    views = _evaluate(t, model, "test")
    for view, (p, y) in views.items():
        accuracy[result_key(view)] = evaluate.accuracy(p, y)
        accuracy[result_key(view, balanced=True)] = evaluate.balanced_accuracy(p, y, n)
        cm = evaluate.confusion_matrix(p, y, n)
        per_model[view] = evaluate.per_class_accuracy(cm, t.classes)
        npy = t.out / f"confusion_{view}.npy"
        np.save(npy, cm)
        png = evaluate.plot_confusion(
            cm, t.classes, t.out / f"confusion_{view}.png", f"CMI on {view} patches"
        )
        files[view] = str(png)
        if tracker is not None:
            tracker.log_artifact(str(npy))
            tracker.log_artifact(str(png))
    cmi_path = cmi_sha = ""
    if t.cfg.mode in ("pretrain", "finetune"):
        path = t.out / ckpt.CMI_FILE
        cmi_sha = ckpt.export_cmi(path, t.net, t.cfg.model.backbone, t.classes, t.dataset_hash)
        cmi_path = str(path)
    result = TrialResult(
        status=Outcome.OK,
        epochs=t.cfg.train.epochs,
        output_dir=str(t.out),
        dataset_hash=t.dataset_hash,
        checkpoint=str(t.state_dir),
        accuracy=accuracy,
        per_model=per_model,
        confusion=files,
        test_patches=int(len(next(iter(views.values()))[1])) if views else 0,
        cmi_checkpoint=cmi_path,
        cmi_sha256=cmi_sha,
        last_epoch=history,
    )
    if tracker is not None:
        metrics = {k: v for k, v in result.test_metrics.items() if math.isfinite(v)}
        tracker.log_metrics(metrics, step=t.cfg.train.epochs)
    return result
