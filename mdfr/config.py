"""Typed, frozen configuration for one trial.

A trial is fully described by a :class:`TrialConfig`. Config files (YAML) and sweep files are
parsed with :func:`from_dict`, which rejects unknown keys and wrong types with a message naming
the dotted path, the value and what is allowed. Defaults are the paper's settings (RMSprop,
lr 2e-4, weight decay 1e-5, λ = 0.6/0.5/0.8, 64×64 patches).

Table II setups are named bundles of overrides (:data:`SETUPS`), so a sweep axis ``setup`` and a
hand-written config mean exactly the same thing.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mdfr.errors import ConfigError

Mode = Literal["pretrain", "finetune", "mdfr"]
PhaseLoss = Literal["flatness", "wrapped"]
Pooling = Literal["dual", "max", "avg"]


def _bounded(
    default: Any, lo: float | None = None, hi: float | None = None, *, open_lo: bool = False
) -> Any:
    """A dataclass field with numeric bounds that :func:`from_dict` enforces."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "open_lo": open_lo})


@dataclass(frozen=True)
class DataConfig:
    # Prepared dataset folder (holds manifest.json, shards and the amplitude template);
    # relative paths are resolved against the current directory when the trial starts.
    dataset: str = "results/data/synth"
    # Patches per optimisation step.
    batch_size: int = _bounded(64, 1)
    # DataLoader worker processes; 0 loads in the training process (best for tiny CPU runs).
    num_workers: int = _bounded(0, 0)
    # Use at most this many training patches (0 = all); for smoke runs and benchmarks.
    limit_train: int = _bounded(0, 0)
    # Use at most this many validation/test patches each (0 = all).
    limit_eval: int = _bounded(0, 0)


@dataclass(frozen=True)
class ModelConfig:
    # CMI network (Table I): remnet, res2net50, resnet50, mobilenet, dpec_convnext, or a
    # registered test_* variant. `mdfr train --help` / `mdfr.models.backbone_names()` list them.
    backbone: str = "dpec_convnext"
    # Load timm's ImageNet weights for the backbone (must already be in the local cache).
    pretrained: bool = False
    # Base width of the SFR and phase UNets (paper: 64); tests use 8.
    width: int = _bounded(64, 1)
    # Encoder stages of each UNet (paper: 4); 64 / 2**depth must stay >= 1.
    depth: int = _bounded(4, 1, 6)
    # FFR amplitude restoration A' = max(A - M, 0) with the dataset's average increment M.
    amplitude_mask: bool = True
    # FFS channel-attention pooling: dual-pooling cross fusion, or a single pooling path.
    pooling: Pooling = "dual"
    # FFR phase restoration through a UNet; off keeps the compressed phase.
    phase_restore: bool = True
    # Branch switches, for ablations beyond the paper (at least one must stay on).
    sfr: bool = True
    ffr: bool = True
    # Train the CMI network together with MDFRNet (paper: frozen).
    cmi_trainable: bool = False
    # Start at the identity: zero-initialised output convs and restored = x + FFS(...), so an
    # untrained MDFRNet returns its input (our reading; false = the paper's literal wiring).
    identity_start: bool = True
    # Pretrained CMI checkpoint for mode finetune/mdfr; "" lets the sweep driver supply the
    # one it pretrains (cached by content hash).
    cmi_checkpoint: str = ""


@dataclass(frozen=True)
class LossConfig:
    # λ1: weight of the spatial MSE between SFR output and the original patch.
    lambda_spa: float = _bounded(0.6, 0.0)
    # λ2: weight of the phase term: the paper's flatness log(S_GM/S_AM) (subtracted: it is
    # <= 0), or our wrapped distance (added: it is >= 0), as `phase_loss` says.
    lambda_freq: float = _bounded(0.5, 0.0)
    # Phase term: "flatness" = the paper's log(S_GM/S_AM), which rewards a *flat* error
    # spectrum, not a small one; "wrapped" = amplitude-weighted 1 - cos(P_ori - P'), which is
    # 0 only for the right phase and blind to 2π wraps (our improvement; see mdfr.losses).
    phase_loss: PhaseLoss = "flatness"
    # λ3: weight of the CMI cross-entropy on the restored patch.
    lambda_cmi: float = _bounded(0.8, 0.0)
    # Guards the logs of the phase flatness term against zero spectra.
    eps: float = _bounded(1e-8, 0.0, open_lo=True)


@dataclass(frozen=True)
class OptimConfig:
    # Optimiser (paper: RMSprop).
    name: Literal["rmsprop", "adam", "adamw", "sgd"] = "rmsprop"
    # Initial learning rate (paper: 2e-4).
    lr: float = _bounded(2e-4, 0.0, open_lo=True)
    # L2 weight decay (paper: 1e-5).
    weight_decay: float = _bounded(1e-5, 0.0)
    # Learning-rate schedule over epochs ("none" = constant, as in the paper).
    scheduler: Literal["none", "cosine"] = "none"


@dataclass(frozen=True)
class TrainConfig:
    # Training epochs over the (possibly limited) training split.
    epochs: int = _bounded(30, 1)
    # "auto" picks CUDA when available, else CPU.
    device: str = "auto"
    # Mixed precision on CUDA; the FFT always runs in fp32.
    amp: Literal["none", "bf16"] = "none"
    # Store activations channels-last (faster convolutions on tensor cores).
    channels_last: bool = False
    # Wrap the model in torch.compile.
    compile: bool = False
    # Stop each epoch after this many steps (0 = full epoch); for smoke runs.
    max_steps_per_epoch: int = _bounded(0, 0)
    # Torch intra-op threads (0 = torch's default); Ray sets this from the trial's CPUs.
    threads: int = _bounded(0, 0)


@dataclass(frozen=True)
class TrialConfig:
    # pretrain: CMI net on originals; finetune: Table II #1; mdfr: MDFRNet before the CMI net.
    mode: Mode = "mdfr"
    # Seeds Python, NumPy and torch; the same seed and config give the same metrics on CPU.
    seed: int = _bounded(0, 0)
    # Table II label this trial stands for ("" when not part of Table II); see SETUPS.
    setup: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Where the trial writes checkpoints and artifacts ("" = a fresh folder under results/runs).
    output_dir: str = ""

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
                _unknown(key, list(merged))
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
        raise ConfigError(path, f"expected one of {_quoted(SETUPS)}, got {name!r}")
    return {"setup": name, **SETUPS[name]}


# --------------------------------------------------------------------------- parsing


def _quoted(names: Any) -> str:
    return ", ".join(repr(n) for n in names)


def _unknown(path: str, allowed: list[str]) -> typing.NoReturn:
    key = path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(path, f"unknown key{hint}; allowed: {', '.join(sorted(allowed))}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> Any:
    """Check ``value`` against the annotation ``tp``; returns the (possibly widened) value."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
            raise ConfigError(path, f"expected one of {_quoted(choices)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, path, meta)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
    elif tp is float:
        # PyYAML (YAML 1.1) reads `1e-3` as a string; users write it that way, so accept it.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    else:  # pragma: no cover - a new field type without a rule here
        raise TypeError(f"{path}: unsupported config type {_type_name(tp)}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("open_lo") else value < lo):
        op = ">" if meta.get("open_lo") else ">="
        raise ConfigError(path, f"expected a value {op} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(path, f"expected a value <= {hi}, got {value!r}")
    return value


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping of {cls.__name__} fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            _unknown(sub, list(fields))
        kwargs[key] = _coerce(hints[key], value, sub, fields[key].metadata)
    return cls(**kwargs)


def _check(cfg: TrialConfig) -> TrialConfig:
    """Cross-field rules that no single field can express."""
    if cfg.setup and cfg.setup not in SETUPS:
        raise ConfigError("setup", f"expected '' or one of {_quoted(SETUPS)}, got {cfg.setup!r}")
    if not (cfg.model.sfr or cfg.model.ffr):
        raise ConfigError("model.sfr", "at least one of model.sfr and model.ffr must be true")
    if cfg.train.device not in ("auto", "cpu") and not cfg.train.device.startswith("cuda"):
        raise ConfigError(
            "train.device", f"expected 'auto', 'cpu' or 'cuda[:N]', got {cfg.train.device!r}"
        )
    return cfg


def from_dict(data: dict[str, Any] | None, source: str | None = None) -> TrialConfig:
    """Build a validated :class:`TrialConfig` from nested plain data.

    Args:
        data: nested mapping as read from YAML; missing keys take defaults. A top-level
            ``setup`` key also applies that Table II setup's switches (explicit keys win).
        source: file name to put in error messages.

    Raises:
        ConfigError: unknown key, wrong type or value out of range, naming the dotted path.
    """
    try:
        data = dict(data or {})
        setup = data.get("setup")
        if setup:
            base = unflatten(setup_overrides(setup))
            data = deep_merge(base, data)
        return _check(_build(TrialConfig, data, ""))
    except ConfigError as e:
        if source:
            raise e.with_source(source) from None
        raise


def load_yaml(path: str | Path, overrides: list[str] | None = None) -> TrialConfig:
    """Read a trial config file, apply ``--set`` overrides and validate."""
    data = read_yaml_mapping(path)
    for item in overrides or []:
        key, value = parse_override(item)
        data = deep_merge(data, unflatten({key: value}))
    return from_dict(data, source=str(path))


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a YAML file that must hold a mapping; errors name the file (and line)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("", "file not found", str(p))
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError("", f"invalid YAML: {where}{problem}", str(p)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            "", f"expected a mapping at the top level, got {type(data).__name__}", str(p)
        )
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``"model.width=8"`` -> ``("model.width", 8)``; values are parsed as YAML scalars."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError("", f"override {item!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


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
