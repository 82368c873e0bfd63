"""Typed, frozen configuration for one trial.

A trial is fully described by a :class:`TrialConfig`. Config files (YAML) and sweep files are
parsed with :func:`from_dict`, which rejects unknown keys, wrong types and non-finite or
out-of-range numbers with a message naming the dotted path, the value and what is allowed
(the declarative layer of :mod:`mdfr.validation`: field types, ``Field`` bounds and ``Literal``
choices here; the one rule that spans fields in :func:`_check`). Defaults are the paper's
settings (RMSprop, lr 2e-4, weight decay 1e-5, λ = 0.6/0.5/0.8, 64×64 patches). Each field's
docstring says what it does and why; ``docs/sweep-files.md`` is generated from them.

Table II setups are named bundles of overrides (:data:`SETUPS`), so a sweep axis ``setup`` and a
hand-written config mean exactly the same thing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic.dataclasses import dataclass

from mdfr.devices import DEVICE_HELP, DEVICE_PATTERN
from mdfr.errors import ConfigError
from mdfr.validation import (
    CONFIG,
    Bool,
    Float,
    Int,
    Str,
    did_you_mean,
    parse_override,
    read_yaml_mapping,
    unknown,
    validate,
)

Mode = Literal["pretrain", "finetune", "mdfr"]
PhaseLoss = Literal["flatness", "wrapped"]
Pooling = Literal["dual", "max", "avg"]

__all__ = [
    "SETUPS",
    "SETUP_ROWS",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "TrialConfig",
    "deep_merge",
    "field_paths",
    "flatten",
    "from_dict",
    "load_yaml",
    "parse_override",
    "read_yaml_mapping",
    "setup_overrides",
    "unflatten",
]


@dataclass(frozen=True, config=CONFIG)
class DataConfig:
    dataset: Str = "results/data/synth"
    """Prepared dataset folder (holds manifest.json, shards and the amplitude template); relative
    paths are resolved against the current directory when the trial starts.
    """
    batch_size: Int = Field(64, ge=1)
    """Patches per optimisation step."""
    num_workers: Int = Field(0, ge=0)
    """DataLoader worker processes; 0 loads in the training process (best for tiny CPU runs)."""
    limit_train: Int = Field(0, ge=0)
    """Use at most this many training patches (0 = all); for smoke runs and benchmarks."""
    limit_eval: Int = Field(0, ge=0)
    """Use at most this many validation/test patches each (0 = all)."""


@dataclass(frozen=True, config=CONFIG)
class ModelConfig:
    backbone: Str = "dpec_convnext"
    """CMI network (Table I): remnet, res2net50, resnet50, mobilenet, dpec_convnext, or a registered
    test_* variant. `mdfr train --help` / `mdfr.models.backbone_names()` list them.
    """
    pretrained: Bool = False
    """Load timm's ImageNet weights for the backbone (must already be in the local cache)."""
    width: Int = Field(64, ge=1)
    """Base width of the SFR and phase UNets (paper: 64); tests use 8."""
    depth: Int = Field(4, ge=1, le=6)
    """Encoder stages of each UNet (paper: 4); 64 / 2**depth must stay >= 1."""
    amplitude_mask: Bool = True
    """FFR amplitude restoration A' = max(A - M, 0) with the dataset's average increment M."""
    pooling: Pooling = "dual"
    """FFS channel-attention pooling: dual-pooling cross fusion, or a single pooling path."""
    phase_restore: Bool = True
    """FFR phase restoration through a UNet; off keeps the compressed phase."""
    sfr: Bool = True
    """The SFR branch (spatial restoration UNet); off only for ablations beyond the paper (one of
    sfr and ffr stays on)."""
    ffr: Bool = True
    """The FFR branch (amplitude mask and phase UNet); off only for ablations beyond the paper
    (one of sfr and ffr stays on)."""
    cmi_trainable: Bool = False
    """Train the CMI network together with MDFRNet (paper: frozen)."""
    identity_start: Bool = True
    """Start at the identity: zero-initialised output convs and restored = x + FFS(...), so an
    untrained MDFRNet returns its input (our reading; false = the paper's literal wiring).
    """
    cmi_checkpoint: Str = ""
    """Pretrained CMI checkpoint for mode finetune/mdfr; "" lets the sweep driver supply the one it
    pretrains (cached by content hash).
    """


@dataclass(frozen=True, config=CONFIG)
class LossConfig:
    lambda_spa: Float = Field(0.6, ge=0.0)
    """λ1: weight of the spatial MSE between SFR output and the original patch."""
    lambda_freq: Float = Field(0.5, ge=0.0)
    """λ2: weight of the phase term: the paper's flatness log(S_GM/S_AM) (subtracted: it is <= 0),
    or our wrapped distance (added: it is >= 0), as `phase_loss` says.
    """
    phase_loss: PhaseLoss = "flatness"
    """Phase term: "flatness" = the paper's log(S_GM/S_AM), which rewards a *flat* error spectrum,
    not a small one; "wrapped" = amplitude-weighted 1 - cos(P_ori - P'), which is 0 only for the
    right phase and blind to 2π wraps (our improvement; see mdfr.losses).
    """
    lambda_cmi: Float = Field(0.8, ge=0.0)
    """λ3: weight of the CMI cross-entropy on the restored patch."""
    eps: Float = Field(1e-8, gt=0.0)
    """Guards the logs of the phase flatness term against zero spectra."""


@dataclass(frozen=True, config=CONFIG)
class OptimConfig:
    name: Literal["rmsprop", "adam", "adamw", "sgd"] = "rmsprop"
    """Optimiser (paper: RMSprop)."""
    lr: Float = Field(2e-4, gt=0.0)
    """Initial learning rate (paper: 2e-4)."""
    weight_decay: Float = Field(1e-5, ge=0.0)
    """L2 weight decay (paper: 1e-5)."""
    scheduler: Literal["none", "cosine"] = "none"
    """Learning-rate schedule over epochs ("none" = constant, as in the paper)."""


@dataclass(frozen=True, config=CONFIG)
class TrainConfig:
    epochs: Int = Field(30, ge=1)
    """Training epochs over the (possibly limited) training split."""
    device: Str = "auto"
    """auto (CUDA when available, else CPU), cpu, cuda or cuda:<index>."""
    amp: Literal["none", "bf16"] = "none"
    """Mixed precision on CUDA; the FFT always runs in fp32."""
    channels_last: Bool = False
    """Store activations channels-last (faster convolutions on tensor cores)."""
    compile: Bool = False
    """Wrap the model in torch.compile."""
    max_steps_per_epoch: Int = Field(0, ge=0)
    """Stop each epoch after this many steps (0 = full epoch); for smoke runs."""
    threads: Int = Field(0, ge=0)
    """Torch intra-op threads (0 = torch's default); Ray sets this from the trial's CPUs."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.match(DEVICE_PATTERN, value):
            raise ValueError(f"expected {DEVICE_HELP}, got {value!r}")
        return value


@dataclass(frozen=True, config=CONFIG)
class TrialConfig:
    mode: Mode = "mdfr"
    """pretrain: CMI net on originals; finetune: Table II #1; mdfr: MDFRNet before the CMI net."""
    seed: Int = Field(0, ge=0)
    """Seeds Python, NumPy and torch; the same seed and config give the same metrics on CPU."""
    setup: Str = ""
    """Table II label this trial stands for ("" when not part of Table II); see SETUPS."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: Str = ""
    """Where the trial writes checkpoints and artifacts ("" = a fresh folder under results/runs)."""

    @field_validator("setup")
    @classmethod
    def _setup(cls, value: str) -> str:
        if value and value not in SETUPS:
            allowed = ", ".join(repr(n) for n in SETUPS)
            raise ValueError(
                f"expected '' or one of {allowed}, got {value!r}{did_you_mean(value, SETUPS)}"
            )
        return value

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_flat_dict(self) -> dict[str, Any]:
        """Dotted keys -> scalar values, as MLflow params want them."""
        return flatten(self.to_dict())

    def hash(self, exclude: tuple[str, ...] = ("output_dir",)) -> str:
        """A stable 16-hex-digit content hash of the config (output location excluded)."""
        flat = {k: v for k, v in self.to_flat_dict().items() if k not in exclude}
        blob = json.dumps(flat, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def replace(self, **dotted: Any) -> TrialConfig:
        """A copy with dotted keys replaced (``cfg.replace(**{"model.width": 8})``), validated."""
        merged = flatten(self.to_dict())
        for key, value in dotted.items():
            if key not in merged:
                raise unknown(key, key, list(merged))
            merged[key] = value
        return from_dict(unflatten(merged))


# Table II: each setup is a bundle of dotted overrides; "mode" lives at the top level.
SETUPS: dict[str, dict[str, Any]] = {
    "finetune": {"mode": "finetune"},
    "backbone": {"mode": "mdfr", "model.amplitude_mask": False, "model.pooling": "max"},
    "wo_res": {"mode": "mdfr", "model.amplitude_mask": False},
    "wo_at": {"mode": "mdfr", "model.pooling": "max"},
    "wo_phase_restore": {"mode": "mdfr", "model.phase_restore": False},
    "proposed": {"mode": "mdfr"},
    # Not in the paper: #6 with our wrapped, amplitude-weighted phase loss instead of the
    # paper's flatness term (mdfr.losses), reported beside the paper's rows.
    "proposed_wrapped": {"mode": "mdfr", "loss.phase_loss": "wrapped"},
}
# Paper row numbers, for reports (our extra variants have none).
SETUP_ROWS: dict[str, int] = {name: i + 1 for i, name in enumerate(list(SETUPS)[:6])}


def setup_overrides(name: str, path: str = "setup") -> dict[str, Any]:
    """The dotted overrides of Table II setup ``name`` (plus ``setup`` itself)."""
    if name not in SETUPS:
        allowed = ", ".join(repr(n) for n in SETUPS)
        raise ConfigError(
            path, f"expected one of {allowed}, got {name!r}{did_you_mean(name, SETUPS)}"
        )
    return {"setup": name, **SETUPS[name]}


# --------------------------------------------------------------------------- parsing


def _check(cfg: TrialConfig) -> TrialConfig:
    """The rule that spans fields: no single field can say it."""
    if not (cfg.model.sfr or cfg.model.ffr):
        raise ConfigError("model.sfr", "at least one of model.sfr and model.ffr must be true")
    return cfg


def from_dict(data: dict[str, Any] | None, source: str | None = None) -> TrialConfig:
    """Build a validated :class:`TrialConfig` from nested plain data.

    Args:
        data: nested mapping as read from YAML; missing keys take defaults. A top-level
            ``setup`` key also applies that Table II setup's switches (explicit keys win).
        source: file name to put in error messages.

    Raises:
        ConfigError: unknown key, wrong type, non-finite or out-of-range value, naming the
            dotted path.
    """
    try:
        if data is not None and not isinstance(data, dict):
            raise ConfigError("", f"expected a mapping of TrialConfig fields, got {data!r}")
        data = dict(data or {})
        setup = data.get("setup")
        if setup and isinstance(setup, str):
            data = deep_merge(unflatten(setup_overrides(setup)), data)
        return _check(validate(TrialConfig, data))
    except ConfigError as e:
        if source:
            raise e.with_source(source) from None
        raise


def load_yaml(path: str | Path, overrides: list[str] | None = None) -> TrialConfig:
    """Read a trial config file, apply ``--set`` overrides and validate."""
    data = read_yaml_mapping(path)
    try:
        for item in overrides or []:
            key, value = parse_override(item)
            data = deep_merge(data, unflatten({key: value}))
    except ConfigError as e:
        raise e.with_source(str(path)) from None
    return from_dict(data, source=str(path))


# --------------------------------------------------------------------------- dict helpers


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(dotted, f"{p!r} is a value, not a section")
        node[leaf] = value
    return out


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, recursively; neither input is modified."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def field_paths() -> list[str]:
    """Every dotted leaf key a TrialConfig accepts (for sweep-file validation)."""
    return sorted(TrialConfig().to_flat_dict())
