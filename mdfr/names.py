"""Names that cross module boundaries: metric names, MLflow tag keys, trial outcomes.

The engine reports metrics under these names, the sweep validates scheduler/search metrics
against them, tracking writes the tags and reports read both back. Renaming one here renames
it everywhere; nothing else spells a metric or an ``mdfr.*`` tag as a string literal.

Imports nothing from mdfr (every layer may import it) and no third-party package.
"""

from __future__ import annotations

from typing import Any

# --------------------------------------------------------------------------- metrics

# What a CMI network is evaluated on: original patches, AI-compressed patches, and compressed
# patches after the trial's defence (MDFRNet + CMI, or the fine-tuned network).
VIEWS: tuple[str, ...] = ("original", "compressed", "restored")

EPOCH = "epoch"  # 1-based; ASHA's time attribute (survives a resume, unlike Tune's iteration)
EPOCH_TIME = "time/epoch_s"
TRAIN_LOSS = "train/loss"
TRAIN_PATCHES_PER_S = "train/patches_per_s"
# The trial's primary validation accuracy: val/acc_original for pretrain (it has no defence),
# val/acc_restored otherwise. Reports select a seed's best run by it.
VAL_ACC = "val/acc"
STATUS = "status"  # "ok" | "diverged", in per-epoch reports and the final result
# Marks a trial's final Tune report (after test evaluation); anything else was cut short.
FINAL_KEY = "mdfr/final"


def result_key(view: str, *, balanced: bool = False) -> str:
    """Key of a test accuracy in the engine's result: ``acc_<view>`` or ``bacc_<view>``."""
    return f"{'bacc' if balanced else 'acc'}_{view}"


def train_metric(part: str) -> str:
    """Mean of a loss part over an epoch (``loss``, ``spa``, ``freq``, ``cmi``)."""
    return f"train/{part}"


def acc_metric(split: str, view: str, *, balanced: bool = False) -> str:
    """``val/acc_restored``, ``test/bacc_original``, ...: an accuracy on one split."""
    return f"{split}/{result_key(view, balanced=balanced)}"


def val_acc(view: str) -> str:
    return acc_metric("val", view)


def is_test_result(key: str) -> bool:
    """Whether a key of the engine's result is a test accuracy (``acc_*``, ``bacc_*``)."""
    return key.startswith(("acc_", "bacc_"))


def final_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The test accuracies of an engine result under their metric names (``test/acc_*``)."""
    return {f"test/{k}": v for k, v in result.items() if is_test_result(k)}


def primary_view(mode: str) -> str:
    """The view ``val/acc`` stands for in ``mode``."""
    return "original" if mode == "pretrain" else "restored"


# Per-epoch metrics every trial reports: usable as scheduler and search metrics.
EPOCH_METRICS: tuple[str, ...] = (
    VAL_ACC,
    *(val_acc(v) for v in ("restored", "compressed", "original")),
    TRAIN_LOSS,
    EPOCH,
    EPOCH_TIME,
    TRAIN_PATCHES_PER_S,
)
# Test-split metrics of a trial's final result (accuracy and balanced accuracy per view):
# valid search metrics (the searcher reads the last result), never scheduler metrics.
FINAL_METRICS: tuple[str, ...] = tuple(
    acc_metric("test", v, balanced=b)
    for b in (False, True)
    for v in ("restored", "compressed", "original")
)
# What the attack did to a trial's dataset, from the real bitstreams (the dataset manifest's
# mean over all its images): logged once per trial run of a sweep, read by `mdfr report attack`.
ATTACK_BPP = "attack/bpp"
ATTACK_PSNR = "attack/psnr"
# Metrics a pretrain trial does not report (it has no defence to measure).
NOT_IN_PRETRAIN: tuple[str, ...] = (
    val_acc("restored"),
    acc_metric("test", "restored"),
    acc_metric("test", "restored", balanced=True),
)

# --------------------------------------------------------------------------- MLflow tags


class Tag:
    """MLflow tag keys: ``mdfr.*`` are ours, ``mlflow.*`` MLflow's own."""

    KIND = "mdfr.kind"  # sweep | trial | pretrain | train (values: Kind)
    SWEEP = "mdfr.sweep"  # the sweep's name
    SWEEP_ID = "mdfr.sweep_id"  # hash of the sweep folder: finds the parent run again
    SWEEP_DIR = "mdfr.sweep_dir"
    SWEEP_TRIAL = "mdfr.sweep_trial"  # Tune's trial id, on runs the driver had to open
    TRIAL_KEY = "mdfr.trial_key"  # <cell key>-n<sample>: finds a trial's run again on retry
    CELL = "mdfr.cell"
    SAMPLE = "mdfr.sample"
    SETUP = "mdfr.setup"  # Table II label
    BACKBONE = "mdfr.backbone"
    SEED = "mdfr.seed"
    MODE = "mdfr.mode"
    CONFIG_HASH = "mdfr.config_hash"
    DATASET_HASH = "mdfr.dataset_hash"
    CODEC = "mdfr.codec"  # the codec spec the dataset was prepared with
    ATTACK = "mdfr.attack"  # the attack as the sweep file names it (grid.attack, prepare.codec)
    GIT_COMMIT = "mdfr.git_commit"
    OUTPUT_DIR = "mdfr.output_dir"
    STATUS = "mdfr.status"  # the trial's outcome (values: Outcome), set when its run closes
    ATTEMPTS = "mdfr.attempts"
    RESUMED_FROM_EPOCH = "mdfr.resumed_from_epoch"
    CHECKPOINT = "mdfr.checkpoint"
    CMI_CHECKPOINT = "mdfr.cmi_checkpoint"
    CMI_SHA256 = "mdfr.cmi_sha256"
    CACHED = "mdfr.cached"  # a pretraining stage reused from the cache
    BENCH = "mdfr.bench"
    CHAMPION = "mdfr.champion"  # "true" on the run whose model a sweep registered
    CHAMPION_RUN = "mdfr.champion_run"  # on a sweep's parent run
    CHAMPION_MODEL = "mdfr.champion_model"  # on a sweep's parent run: models:/<name>@champion
    MODEL_ERROR = "mdfr.model_error"  # why a finished trial's model could not be logged
    MLFLOW_PARENT = "mlflow.parentRunId"
    MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
    MLFLOW_SOURCE_NAME = "mlflow.source.name"
    MLFLOW_SOURCE_TYPE = "mlflow.source.type"
    MLFLOW_USER = "mlflow.user"
    MLFLOW_EXPERIMENT_KIND = "mlflow.experimentKind"  # an experiment tag
    MLFLOW_DATA_CONTEXT = "mlflow.data.context"  # a dataset input's tag: train | eval


class Kind:
    """Values of :attr:`Tag.KIND`."""

    SWEEP = "sweep"
    TRIAL = "trial"
    PRETRAIN = "pretrain"
    TRAIN = "train"


class Outcome:
    """Values of :attr:`Tag.STATUS` (and of ``status`` in a sweep's trial list)."""

    RUNNING = "running"
    OK = "ok"
    DIVERGED = "diverged"
    PRUNED = "pruned"  # stopped early by the scheduler
    FAILED = "failed"  # failed for good after its retries
    ERROR = "error"  # Tune's word for FAILED, in a sweep's trial list
    UNFINISHED = "unfinished"  # the driver stopped (Ctrl-C, SIGTERM) before the trial ended


def trial_tags(
    cfg: Any,
    *,
    sweep: str = "",
    git_commit: str = "",
    dataset_hash: str = "",
    codec: str = "",
    attack: str = "",
    cell: str = "",
    sample: int | None = None,
    output_dir: str = "",
) -> dict[str, str]:
    """The tags that make a trial's (or a pretraining stage's) run findable in reports.

    Args:
        cfg: the trial's :class:`mdfr.config.TrialConfig`.
        sweep, git_commit, dataset_hash, codec, attack, cell, sample, output_dir: what the
            caller knows; empty ones are left out.
    """
    tags = {Tag.MODE: cfg.mode, Tag.BACKBONE: cfg.model.backbone, Tag.SEED: str(cfg.seed)}
    optional = {
        Tag.SETUP: cfg.setup,
        Tag.SWEEP: sweep,
        Tag.GIT_COMMIT: git_commit,
        Tag.MLFLOW_GIT_COMMIT: git_commit,
        Tag.DATASET_HASH: dataset_hash,
        Tag.CODEC: codec,
        Tag.ATTACK: attack,
        Tag.CELL: cell,
        Tag.SAMPLE: "" if sample is None else str(sample),
        Tag.OUTPUT_DIR: output_dir,
    }
    tags.update({k: str(v) for k, v in optional.items() if v})
    return tags
