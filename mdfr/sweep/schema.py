"""The sweep file's sections, declared once: types, bounds, choices and defaults.

Each section is a frozen pydantic dataclass on :data:`mdfr.validation.CONFIG` (unknown keys,
non-finite numbers, bools-for-integers are refused); each field's docstring is its
documentation, and ``docs/sweep-files.md`` is generated from these classes
(``python -m mdfr.sweep.docs``; a test keeps the file in step). The validated sections are also
the plan's: :class:`SchedulerSpec`, :class:`SearchAlgSpec`, :class:`Resources` and
:class:`PrepareSpec` travel inside :class:`mdfr.sweep.plan.SweepPlan`.

``base``, ``grid``, ``search``, ``pretrain`` and ``finetune`` hold TrialConfig keys; their values
are checked against :class:`mdfr.config.TrialConfig` by :mod:`mdfr.sweep.spec`, which also
holds the rules that span sections (max_t against the epochs, metrics every cell reports, ...).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator
from pydantic.dataclasses import dataclass

from mdfr import names
from mdfr.errors import ConfigError
from mdfr.tracking import check_tracking_uri
from mdfr.validation import CONFIG, Bool, Float, Int, Str, did_you_mean

DEFAULT_STORAGE = "results/ray"
DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# Per-trial resources beyond these are typing errors, not plans (a trial is one process on one
# node); what the cluster really has is checked when the sweep starts (mdfr.sweep.driver).
MAX_CPUS_PER_TRIAL = 1024
MAX_GPUS_PER_TRIAL = 64
Mode = Literal["min", "max"]


def _metric(value: str | None, known: tuple[str, ...]) -> str | None:
    if value is not None and value not in known:
        raise ValueError(
            f"unknown metric {value!r}{did_you_mean(value, known)}; known: {', '.join(known)}"
        )
    return value


@dataclass(frozen=True, config=CONFIG)
class SearchAlgSpec:
    name: Literal["optuna"] = "optuna"
    """The searcher: Optuna, one study per grid cell (mdfr.sweep.searcher)."""
    sampler: Literal["tpe", "random", "gp", "qmc"] = "tpe"
    """Optuna sampler proposing the search values."""
    seed: Int = Field(0, ge=0)
    """Seeds the samplers (each cell's sampler gets its own seed derived from it)."""
    num_samples: Int = Field(1, ge=1)
    """Trials per grid cell; more than 1 needs a search section (or each would be the same)."""
    metric: Str | None = None
    """Metric the search optimises (default: scheduler.metric); required when search is set.
    Any per-epoch metric (val/acc, val/acc_restored, ...) or a test metric (test/acc_restored,
    test/bacc_restored, ...)."""
    mode: Mode | None = None
    """max or min (default: scheduler.mode, else max)."""
    n_startup_trials: Int | None = Field(None, ge=0)
    """Random trials per cell before the sampler models the landscape (default: Optuna's)."""

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        return _metric(value, names.EPOCH_METRICS + names.FINAL_METRICS)


@dataclass(frozen=True, config=CONFIG)
class SchedulerSpec:
    name: Literal["asha", "fifo"] = "fifo"
    """fifo runs every trial to the end; asha stops weak trials early, comparing each trial
    only with the other samples of its own grid cell (a cell is never dropped)."""
    metric: Str | None = None
    """Per-epoch metric ASHA compares (required for asha): val/acc, val/acc_restored, ..."""
    mode: Mode = "max"
    """max or min."""
    max_t: Int | None = Field(None, ge=1)
    """asha: the last rung, in epochs (default: the longest train.epochs; never below it)."""
    grace_period: Int = Field(1, ge=1)
    """asha: epochs every trial runs before it can be stopped (<= max_t)."""
    reduction_factor: Float = Field(3.0, gt=1.0)
    """asha: 1/reduction_factor of the trials at a rung go on to the next."""
    brackets: Int = Field(1, ge=1)
    """asha: number of brackets."""

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        return _metric(value, names.EPOCH_METRICS)


@dataclass(frozen=True, config=CONFIG)
class Resources:
    cpu: Int = Field(1, ge=1, le=MAX_CPUS_PER_TRIAL)
    """Whole CPUs per trial (also the trial's torch threads unless train.threads is set)."""
    gpu: Float = Field(0.0, ge=0.0, le=MAX_GPUS_PER_TRIAL)
    """GPUs per trial: a fraction of one GPU (0 < gpu <= 1: trials share it) or whole GPUs."""

    @field_validator("gpu")
    @classmethod
    def _fraction_or_whole(cls, value: float) -> float:
        if value > 1 and not float(value).is_integer():
            raise ValueError(
                f"got {value!r}: a trial takes a fraction of one GPU (0 < gpu <= 1) or whole GPUs"
            )
        return value


@dataclass(frozen=True, config=CONFIG)
class FailureSpec:
    max_failures: Int = Field(2, ge=0)
    """Retries per trial, each from its latest checkpoint."""


@dataclass(frozen=True, config=CONFIG)
class CheckpointSpec:
    num_to_keep: Int = Field(2, ge=1)
    """Checkpoints Tune keeps per trial."""
    tune_every: Int = Field(0, ge=0)
    """Also hand Tune a copy of the trial's checkpoint every this many epochs (0: only with the
    final result). The trial's own folder holds its latest state after every epoch whatever
    this says, and a retry resumes from there; Tune's copies cost a copy and an experiment
    snapshot each (mdfr bench sweep)."""


@dataclass(frozen=True, config=CONFIG)
class PrepareSpec:
    """Dataset preparation run once before any trial (``mdfr.data.patches.prepare``)."""

    images: Str = Field(min_length=1)
    """Camera images in the VISION layout (required)."""
    codec: Str | None = Field(None, min_length=1)
    """The attack: jpeg:Q, compressai:<zoo model>:<quality>, learned:<ckpt>, external:<dir>,
    or train:<key>=<value>,... (a codec `mdfr codec train` makes first, cached). Required
    unless the grid has an `attack` axis, which names one per grid cell instead."""
    out: Str = Field("results/data/prepared", min_length=1)
    """The prepared dataset's folder (reused when it holds the same content, replaced when it
    holds another); with a grid.attack axis, the folder holding one dataset per attack."""
    codec_train: dict[str, Any] = Field(default_factory=dict)
    """Defaults for every train: attack (mdfr codec train settings: arch, channels, lmbda,
    steps, batch, crop, lr, ...); a spec's own keys win. Each distinct codec is trained once
    on `images` and cached under <storage>/cache/codecs/."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of mdfr.data.patches.prepare (patches_per_image, seed, ...)."""
    synthesize: dict[str, Any] | None = None
    """When set, `images` is first made by mdfr.data.synthetic.synthesize(**synthesize)
    (cached by its arguments), so a sweep runs from a fresh clone."""


@dataclass(frozen=True, config=CONFIG)
class SearchRange:
    """One search axis: exactly one of ``float``, ``int`` or ``choice``."""

    float_range: list[Any] | None = Field(None, alias="float")
    """[low, high]: a real number sampled in the range (log: true for a log scale)."""
    int_range: list[Any] | None = Field(None, alias="int")
    """[low, high]: a whole number sampled in the range (both ends included)."""
    choice: list[Any] | None = Field(None, min_length=1)
    """[a, b, ...]: one of these values."""
    log: Bool = False
    """Sample float/int ranges on a log scale (both ends > 0)."""


def _mapping_or_bool(value: Any) -> Any:
    if value is not None and not isinstance(value, dict | bool):
        raise ValueError(f"expected a mapping (a partial TrialConfig) or false, got {value!r}")
    return value


@dataclass(frozen=True, config=CONFIG)
class SweepFile:
    """A sweep file as written (every section but ``name`` is optional)."""

    name: Str
    """The sweep's name: letters, digits, _ . - (names the sweep folder and MLflow runs)."""
    experiment: Str | None = Field(None, min_length=1)
    """MLflow experiment (default: mdfr-<name>)."""
    description: Str = ""
    """Free text, shown in reports."""
    base: dict[str, Any] | None = None
    """A partial TrialConfig every trial starts from (nested or dotted keys)."""
    grid: dict[str, list[Any]] | None = None
    """Axis -> non-empty list of values; every combination (a grid cell) runs. An axis is a
    dotted TrialConfig key, `setup` (a Table II setup and its switches) or `attack` (codec
    specs as in prepare.codec: each gets its own prepared dataset, while the CMI pretraining,
    which sees original patches only, is shared by all of them; needs a prepare section)."""
    search: dict[str, SearchRange] | None = None
    """Dotted TrialConfig key -> range, sampled by Optuna inside each grid cell."""
    search_alg: SearchAlgSpec | None = None
    """The searcher (see search_alg.*)."""
    scheduler: SchedulerSpec | None = None
    """Early stopping (see scheduler.*)."""
    resources: Resources | None = None
    """Per-trial resources (see resources.*)."""
    max_concurrent: Int | None = Field(None, ge=1)
    """Trials running at once (default: as many as the cluster fits)."""
    failure: FailureSpec | None = None
    """Retries (see failure.*)."""
    checkpoint: CheckpointSpec | None = None
    """Checkpoints kept (see checkpoint.*)."""
    storage: Str = DEFAULT_STORAGE
    """Folder for sweep folders, Tune state and the pretraining cache; on a cluster, a path
    every node sees (NFS). Object stores (s3://) are not supported."""
    tracking_uri: Str = DEFAULT_TRACKING_URI
    """MLflow tracking store: sqlite:///<file>.db on one machine, http(s)://HOST:PORT (a tracking
    server) on a cluster, or a database URI (postgresql://...). File stores (a folder,
    file://) are refused: MLflow 3.17 cannot use them."""
    prepare: PrepareSpec | None = None
    """Prepare the dataset before any trial (see prepare.*); or set base.data.dataset."""
    pretrain: Annotated[dict[str, Any] | Bool | None, BeforeValidator(_mapping_or_bool)] = None
    """The shared CMI pretraining stage: a partial TrialConfig over its own recipe (Adam,
    cosine; mdfr.sweep.plan.PRETRAIN_RECIPE), or false to give base.model.cmi_checkpoint
    instead."""
    finetune: dict[str, Any] | None = None
    """A partial TrialConfig applied to every cell of mode finetune (Table II #1)."""
    log_models: Literal["best", "all", "none"] = "best"
    """Trained networks as MLflow logged models (PyTorch, exported graph): best logs only the
    sweep's champion once every trial is done (the finished `proposed` trial with the best
    validation metric, mdfr.sweep.results), all logs every finished trial's and pretraining
    stage's network as it finishes, none logs none. Unless none, the champion is registered
    as models:/<experiment>@champion."""
    system_metrics: Bool | Str = "auto"
    """MLflow system metrics (CPU, memory, disk, network, GPU) sampled into every trial's run:
    auto (on when trials take GPUs), true or false."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.match(NAME_PATTERN, value):
            raise ValueError(f"expected a name matching {NAME_PATTERN}, got {value!r}")
        return value

    @field_validator("system_metrics")
    @classmethod
    def _auto_or_bool(cls, value: bool | str) -> bool | str:
        if value != "auto" and not isinstance(value, bool):
            raise ValueError(f"expected auto, true or false, got {value!r}")
        return value

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        return check_storage(value)

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, value: str) -> str:
        return check_tracking_uri(value)


def check_storage(value: Any, where: str = "storage") -> str:
    """A validated ``storage`` value (``file://`` dropped), from the file or ``--storage``.

    Args:
        value: what the user gave.
        where: how the user gave it, named in the error (``storage``, ``--storage``).

    Raises:
        ConfigError: not a non-empty path, or an object-store URI.
    """
    if not isinstance(value, str) or not value.removeprefix("file://"):
        raise ConfigError(where, f"expected a directory path, got {value!r}")
    if "://" in value and not value.startswith("file://"):
        raise ConfigError(
            where,
            f"got {value!r}: object-store storage is not supported yet (the Optuna study, "
            "pretraining cache and trial state need a filesystem); use a path every node "
            "sees, e.g. an NFS mount",
        )
    return value.removeprefix("file://")
