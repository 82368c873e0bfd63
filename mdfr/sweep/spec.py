"""Sweep files (YAML) -> a validated, frozen :class:`SweepPlan`. No Ray import.

A sweep file looks like this (every section but ``name`` is optional)::

    name: table2                       # [A-Za-z0-9][A-Za-z0-9_.-]*
    experiment: mdfr-table2            # MLflow experiment (default mdfr-<name>)
    base: {model: {backbone: dpec_convnext}, train: {epochs: 30}}   # a partial TrialConfig
    grid:                              # every combination runs exactly once per sample
      setup: [finetune, backbone, wo_res, wo_at, wo_phase_restore, proposed]
      seed: [0, 1, 2]
      model.width: [32, 64]            # any dotted TrialConfig key
    search:                            # sampled by Optuna inside each grid cell
      loss.lambda_spa: {float: [0.1, 1.0]}
      optim.lr: {float: [1.0e-5, 1.0e-3], log: true}
      train.epochs: {int: [5, 30]}
      optim.name: {choice: [rmsprop, adam]}
    search_alg: {name: optuna, sampler: tpe, seed: 0, num_samples: 20, metric: ..., mode: max}
    scheduler: {name: asha, metric: val/acc_restored, mode: max, max_t: 30, grace_period: 3,
                reduction_factor: 3}
    resources: {cpu: 4, gpu: 0.25}     # per trial; fractional GPUs below 1
    max_concurrent: 8
    failure: {max_failures: 2}         # retries per trial, each from its latest checkpoint
    checkpoint: {num_to_keep: 2}
    storage: results/ray               # a path every node sees (local disk, NFS)
    tracking_uri: sqlite:///results/mlflow.db
    prepare: {images: results/data/vision, codec: "jpeg:50", out: results/data, options: {}}
    pretrain: {train: {epochs: 5}, optim: {name: adam, lr: 1.0e-3}}  # the CMI pretraining
                                       # stage's own recipe (it does not inherit base.optim)
    finetune: {optim: {lr: 1.0e-4}}    # overrides for every cell of mode finetune (Table II #1)

Semantics: a grid cell is one combination of the grid axes; ``setup`` expands to that Table II
setup's switches (:data:`mdfr.config.SETUPS`, which win over ``base``). Each cell runs
``search_alg.num_samples`` trials whose ``search`` values Optuna proposes, or exactly one trial
when ``search`` is empty. A search axis that does not apply to a cell's mode (the λ weights for
``finetune``) is not sampled for that cell; a cell left with no search axis runs once. Every
cell is turned into a :class:`TrialConfig` here, so an impossible combination fails at
``mdfr sweep validate`` time, not on the cluster.

Stages have their own recipes: the shared CMI pretraining trains a classifier from scratch
and starts from :data:`PRETRAIN_RECIPE` (Adam, cosine schedule) rather than the MDFR phase's
``base.optim`` (the paper's RMSprop 2e-4, meant for restoring through a frozen network);
``pretrain:`` overrides it. ``finetune:`` overrides every fine-tuning cell (its own learning
rate, so the baseline is not run at whatever suits MDFRNet); precedence is
base < setup switches < ``finetune:`` < grid values < search values.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mdfr.config import (
    SETUPS,
    TrialConfig,
    deep_merge,
    field_paths,
    flatten,
    from_dict,
    parse_override,
    read_yaml_mapping,
    unflatten,
)
from mdfr.errors import ConfigError

# Per-epoch metrics the engine reports (``report(metrics, ...)``), usable as scheduler and
# search metrics. Kept in sync with mdfr.engine by tests/test_sweep_e2e.py.
EPOCH_METRICS: tuple[str, ...] = (
    "val/acc",
    "val/acc_restored",
    "val/acc_compressed",
    "val/acc_original",
    "train/loss",
    "epoch",
    "time/epoch_s",
    "train/patches_per_s",
)
# Test-split metrics of a trial's final result (the engine's acc_* once training is over);
# valid search metrics (the searcher reads the trial's last result), not scheduler metrics.
FINAL_METRICS: tuple[str, ...] = (
    "test/acc_restored",
    "test/acc_compressed",
    "test/acc_original",
)
# Metrics a pretrain trial does not have (it has no defence to measure).
NOT_IN_PRETRAIN: tuple[str, ...] = ("val/acc_restored", "test/acc_restored")

# The CMI pretraining stage's default recipe (a sweep's ``pretrain:`` section overrides it).
# Measured on the synthetic demo set (docs/science.md): Adam with a cosine schedule trains the
# classifier from scratch where the paper's MDFR-phase RMSprop (no bias correction: the first
# steps move weights by ~10x lr) stalls well below it.
PRETRAIN_RECIPE: dict[str, Any] = {
    "optim.name": "adam",
    "optim.lr": 1e-3,
    "optim.weight_decay": 0.0,
    "optim.scheduler": "cosine",
}

# Keys that only matter for MDFRNet trials (mode "mdfr"): search axes over them are not
# sampled for pretrain/finetune cells, and they do not enter the pretraining cache key.
MDFR_ONLY: tuple[str, ...] = (
    "loss.",
    "model.width",
    "model.depth",
    "model.amplitude_mask",
    "model.pooling",
    "model.phase_restore",
    "model.sfr",
    "model.ffr",
    "model.cmi_trainable",
    "model.identity_start",
)

TOP_KEYS = (
    "name",
    "experiment",
    "description",
    "base",
    "grid",
    "search",
    "search_alg",
    "scheduler",
    "resources",
    "max_concurrent",
    "failure",
    "checkpoint",
    "storage",
    "tracking_uri",
    "prepare",
    "pretrain",
    "finetune",
)
SAMPLERS = ("tpe", "random", "gp", "qmc")
SCHEDULERS = ("asha", "fifo")
DEFAULT_STORAGE = "results/ray"
DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class SearchAxis:
    """One Optuna-sampled dimension: ``kind`` float/int over [low, high], or a choice."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def applies_to(self, mode: str) -> bool:
        """Whether cells of ``mode`` sample this axis (λ and MDFRNet switches: mdfr only)."""
        return mode == "mdfr" or not is_mdfr_only(self.name)


@dataclass(frozen=True)
class Cell:
    """One grid combination. ``config`` is the flat, validated TrialConfig of the cell."""

    index: int
    key: str
    values: dict[str, Any]
    config: dict[str, Any]
    search: tuple[str, ...]

    @property
    def mode(self) -> str:
        return str(self.config["mode"])

    def trial_key(self, sample: int) -> str:
        """The deterministic name of sample ``sample`` of this cell (stable across resume)."""
        return f"{self.key}-n{sample}"


@dataclass(frozen=True)
class SchedulerSpec:
    name: str = "fifo"
    metric: str | None = None
    mode: str = "max"
    max_t: int = 1
    grace_period: int = 1
    reduction_factor: float = 3.0
    brackets: int = 1


@dataclass(frozen=True)
class SearchAlgSpec:
    name: str = "optuna"
    sampler: str = "tpe"
    seed: int = 0
    num_samples: int = 1
    metric: str | None = None
    mode: str = "max"
    n_startup_trials: int | None = None


@dataclass(frozen=True)
class Resources:
    cpu: int = 1
    gpu: float = 0.0


@dataclass(frozen=True)
class PrepareSpec:
    """Dataset preparation run once before any trial (``mdfr.data.patches.prepare``)."""

    images: str
    codec: str
    out: str = "results/data/prepared"
    options: dict[str, Any] = field(default_factory=dict)
    # When set, ``images`` is first made by ``mdfr.data.synthetic.synthesize(**synthesize)``
    # (cached by its arguments), so a sweep runs from a fresh clone.
    synthesize: dict[str, Any] | None = None


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: everything the driver needs, as plain data (JSON round-trips)."""

    name: str
    experiment: str
    source: str
    description: str
    base: dict[str, Any]
    axes: tuple[str, ...]
    cells: tuple[Cell, ...]
    search: tuple[SearchAxis, ...]
    search_alg: SearchAlgSpec
    scheduler: SchedulerSpec
    resources: Resources
    max_concurrent: int | None
    max_failures: int
    num_to_keep: int
    storage: str
    tracking_uri: str
    prepare: PrepareSpec | None
    pretrain: dict[str, Any] | None
    finetune: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def num_samples(self) -> int:
        """Trials per grid cell."""
        return self.search_alg.num_samples if self.search else 1

    def samples_of(self, cell: Cell) -> int:
        """Trials of ``cell``: a cell no search axis applies to (λ for finetune) runs once,
        as its samples would all be the same trial."""
        return self.num_samples if cell.search else 1

    def slots(self) -> list[tuple[Cell, int]]:
        """Every (cell, sample) the sweep runs, sample-major so all cells advance together."""
        return [
            (c, n) for n in range(self.num_samples) for c in self.cells if n < self.samples_of(c)
        ]

    @property
    def num_trials(self) -> int:
        return sum(self.samples_of(c) for c in self.cells)

    def trial_keys(self) -> list[str]:
        return [c.trial_key(n) for c, n in self.slots()]

    def axis(self, name: str) -> SearchAxis:
        return next(a for a in self.search if a.name == name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepPlan:
        d = dict(d)
        d["axes"] = tuple(d["axes"])
        d["cells"] = tuple(Cell(**{**c, "search": tuple(c["search"])}) for c in d["cells"])
        d["search"] = tuple(
            SearchAxis(**{**a, "choices": tuple(a["choices"])}) for a in d["search"]
        )
        d["search_alg"] = SearchAlgSpec(**d["search_alg"])
        d["scheduler"] = SchedulerSpec(**d["scheduler"])
        d["resources"] = Resources(**d["resources"])
        d["prepare"] = PrepareSpec(**d["prepare"]) if d.get("prepare") else None
        d["warnings"] = tuple(d.get("warnings", ()))
        return cls(**d)

    def with_cells(self, cells: list[Cell]) -> SweepPlan:
        return _replace(self, cells=tuple(cells))

    def replace(self, **changes: Any) -> SweepPlan:
        return _replace(self, **changes)

    def cell_config(self, cell: Cell, values: dict[str, Any] | None = None) -> TrialConfig:
        """The TrialConfig of ``cell`` with sampled ``values`` (dotted keys) applied."""
        flat = {**cell.config, **(values or {})}
        return from_dict(unflatten(flat))


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


def is_mdfr_only(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in MDFR_ONLY)


# --------------------------------------------------------------------------- loading


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepPlan:
    """Read and validate a sweep file.

    Args:
        path: the YAML file.
        overrides: ``dotted.key=value`` items applied to the file first; ``grid.<axis>`` and
            ``search.<axis>`` take the rest of the key as the axis name
            (``grid.model.backbone=[remnet]``).

    Raises:
        ConfigError: naming the file, the dotted path, the value and what is allowed.
    """
    source = str(path)
    raw = read_yaml_mapping(path)
    try:
        for item in overrides or []:
            key, value = parse_override(item)
            raw = apply_override(raw, key, value)
        return build_plan(raw, source)
    except ConfigError as e:
        raise e.with_source(source) from None


def apply_override(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``raw`` with ``key`` (dotted; axis names inside grid/search kept whole) set to ``value``."""
    top, _, rest = key.partition(".")
    if top in ("grid", "search") and rest:
        section = dict(raw.get(top) or {})
        section[rest] = value
        return {**raw, top: section}
    return deep_merge(raw, unflatten({key: value}))


def build_plan(raw: dict[str, Any], source: str = "") -> SweepPlan:
    """Validate the parsed sweep mapping ``raw``; see the module docstring for the format."""
    _check_keys(raw, TOP_KEYS, "")
    warnings: list[str] = []
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            "name", f"expected a name matching {_NAME_RE.pattern} (required), got {name!r}"
        )
    experiment = _str(raw, "experiment", f"mdfr-{name}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("description", f"expected a string, got {description!r}")
    base = _base(raw.get("base"))
    grid = _grid(raw.get("grid"))
    finetune = _finetune(raw.get("finetune"), base)
    setups = _setups_in_use(base, grid)
    search = _search(raw.get("search"), base, grid, setups)
    backbones = {base.get("model.backbone", TrialConfig().model.backbone)}
    backbones.update(grid.get("model.backbone", []))
    _check_backbones(
        backbones,
        "grid.model.backbone" if "model.backbone" in grid else "base.model.backbone",
        warnings,
    )
    cells = _cells(base, grid, search, finetune)
    if finetune and not any(c.mode == "finetune" for c in cells):
        warnings.append("the finetune section changes nothing: no grid cell runs mode 'finetune'")
    for axis in search:
        if not any(axis.name in c.search for c in cells):
            raise ConfigError(
                f"search.{axis.name}",
                "applies only to mode 'mdfr' cells and no grid cell runs mode 'mdfr'",
            )
    search_alg = _search_alg(raw.get("search_alg"), bool(search), raw.get("scheduler"))
    max_epochs = max(int(c.config["train.epochs"]) for c in cells)
    scheduler = _scheduler(raw.get("scheduler"), max_epochs)
    prepare = _prepare(raw.get("prepare"), base, warnings)
    pretrain = _pretrain(raw.get("pretrain"), base)
    _check_cross(cells, search_alg, scheduler, pretrain)
    _warn_inert_axes(grid, warnings)
    return SweepPlan(
        name=name,
        experiment=experiment,
        source=source,
        description=description,
        base=base,
        axes=tuple(grid),
        cells=tuple(cells),
        search=tuple(search),
        search_alg=search_alg,
        scheduler=scheduler,
        resources=_resources(raw.get("resources")),
        max_concurrent=_opt_int(raw, "max_concurrent", 1),
        max_failures=_int_in(
            _section(raw, "failure", ("max_failures",)), "failure.max_failures", 2, 0
        ),
        num_to_keep=_int_in(
            _section(raw, "checkpoint", ("num_to_keep",)), "checkpoint.num_to_keep", 2, 1
        ),
        storage=check_storage(raw.get("storage", DEFAULT_STORAGE)),
        tracking_uri=check_tracking_uri(raw.get("tracking_uri", DEFAULT_TRACKING_URI)),
        prepare=prepare,
        pretrain=pretrain,
        finetune=finetune,
        warnings=tuple(warnings),
    )


# --------------------------------------------------------------------------- sections


def _check_keys(data: dict[str, Any], allowed: tuple[str, ...] | list[str], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            _unknown(f"{prefix}{key}", list(allowed))


def _unknown(path: str, allowed: list[str], what: str = "key", name: str | None = None) -> None:
    leaf = name if name is not None else path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(path, f"unknown {what}{hint}; allowed: {', '.join(sorted(allowed))}")


def _section(raw: dict[str, Any], key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping with keys {', '.join(allowed)}, got {value!r}")
    _check_keys(value, allowed, f"{key}.")
    return {f"{key}.{k}": v for k, v in value.items()}


def _str(raw: dict[str, Any], key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a non-empty string, got {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int_in(d: dict[str, Any], path: str, default: int, lo: int) -> int:
    value = d.get(path, default)
    if not _is_int(value) or value < lo:
        raise ConfigError(path, f"expected an integer >= {lo}, got {value!r}")
    return value


def _opt_int(raw: dict[str, Any], key: str, lo: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if not _is_int(value) or value < lo:
        raise ConfigError(key, f"expected an integer >= {lo} (or leave it out), got {value!r}")
    return value


def _number(value: Any, path: str) -> float:
    # PyYAML reads `1e-3` as a string (YAML 1.1); users write it that way.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if not _is_num(value):
        raise ConfigError(path, f"expected a number, got {value!r}")
    return value


def _config_error(e: ConfigError, prefix: str, context: str = "") -> ConfigError:
    path = f"{prefix}{e.path}" if e.path else prefix.rstrip(".")
    return ConfigError(path, f"{context}{e.message}")


def _base(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("base", f"expected a mapping (a partial TrialConfig), got {value!r}")
    flat = flatten(unflatten(flatten(value)))  # accepts nested and dotted keys alike
    try:
        from_dict(unflatten(flat))
    except ConfigError as e:
        raise _config_error(e, "base.") from None
    return flat


def _grid(value: Any) -> dict[str, list[Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("grid", f"expected a mapping of axis -> list of values, got {value!r}")
    allowed = ["setup", *field_paths()]
    grid: dict[str, list[Any]] = {}
    for axis, values in value.items():
        path = f"grid.{axis}"
        if axis not in allowed:
            _unknown(path, allowed, "grid axis", axis)
        if axis == "output_dir":
            raise ConfigError(path, "output_dir is set per trial by the driver; not a grid axis")
        if not isinstance(values, list) or not values:
            raise ConfigError(path, f"expected a non-empty list of values, got {values!r}")
        for v in values:
            if isinstance(v, dict | list):
                raise ConfigError(path, f"expected scalar values, got {v!r}")
        dupes = sorted({repr(v) for v in values if values.count(v) > 1})
        if dupes:
            raise ConfigError(path, f"duplicate values {', '.join(dupes)}: each would run twice")
        if axis == "setup":
            for v in values:
                if v not in SETUPS:
                    close = difflib.get_close_matches(str(v), list(SETUPS), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ConfigError(
                        path, f"unknown setup {v!r}{hint}; allowed: {', '.join(SETUPS)}"
                    )
        grid[axis] = list(values)
    return grid


def _setups_in_use(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[str]:
    if "setup" in grid:
        return list(grid["setup"])
    return [base["setup"]] if base.get("setup") else []


def _setup_keys(setups: list[str]) -> set[str]:
    return {k for s in setups for k in SETUPS[s] if k != "mode"} | ({"mode"} if setups else set())


def _search(
    value: Any, base: dict[str, Any], grid: dict[str, list[Any]], setups: list[str]
) -> list[SearchAxis]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ConfigError("search", f"expected a mapping of key -> range, got {value!r}")
    allowed = [p for p in field_paths() if p not in ("output_dir", "setup", "seed")]
    fixed_by_setup = _setup_keys(setups)
    types = _field_types()
    axes = []
    for key, spec in value.items():
        path = f"search.{key}"
        if key in ("setup", "seed"):
            raise ConfigError(path, f"{key} is a grid axis (grid.{key}: [...]), not a search axis")
        if key not in allowed:
            _unknown(path, allowed, "search axis", key)
        if key in grid:
            raise ConfigError(path, f"{key} is both a grid axis and a search axis; keep one")
        if key in fixed_by_setup:
            raise ConfigError(
                path, f"{key} is set by the Table II setups in this sweep ({', '.join(setups)})"
            )
        axes.append(_search_axis(key, spec, path, types[key], base))
    return axes


def _field_types() -> dict[str, type]:
    return {k: type(v) for k, v in TrialConfig().to_flat_dict().items()}


def _search_axis(key: str, spec: Any, path: str, ftype: type, base: dict[str, Any]) -> SearchAxis:
    kinds = ("float", "int", "choice")
    if not isinstance(spec, dict) or not any(k in spec for k in kinds):
        raise ConfigError(
            path,
            f"expected one of {{float: [lo, hi], log: bool}}, {{int: [lo, hi]}}, "
            f"{{choice: [...]}}, got {spec!r}",
        )
    _check_keys(spec, ("float", "int", "choice", "log"), f"{path}.")
    given = [k for k in kinds if k in spec]
    if len(given) > 1:
        raise ConfigError(path, f"expected exactly one of float/int/choice, got {', '.join(given)}")
    kind = given[0]
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{path}.log", f"expected true or false, got {log!r}")
    if kind == "choice":
        if log:
            raise ConfigError(f"{path}.log", "log applies to float/int ranges, not choice")
        choices = spec["choice"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{path}.choice", f"expected a non-empty list, got {choices!r}")
        if len({repr(c) for c in choices}) != len(choices):
            raise ConfigError(f"{path}.choice", f"duplicate values in {choices!r}")
        for c in choices:
            if isinstance(c, dict | list):
                raise ConfigError(f"{path}.choice", f"expected scalar values, got {c!r}")
            _try_value(base, key, c, f"{path}.choice")
        if key == "model.backbone":
            _check_backbones(set(choices), f"{path}.choice", [])
        return SearchAxis(key, "choice", choices=tuple(choices))
    if kind == "float" and ftype is not float:
        raise ConfigError(path, f"{key} is {ftype.__name__}-valued; use int: or choice:")
    if kind == "int" and ftype is not int:
        raise ConfigError(path, f"{key} is {ftype.__name__}-valued; use float: or choice:")
    rng = spec[kind]
    rpath = f"{path}.{kind}"
    if not isinstance(rng, list) or len(rng) != 2:
        raise ConfigError(rpath, f"expected [low, high], got {rng!r}")
    lo, hi = (_number(v, rpath) for v in rng)
    if kind == "int" and not (float(lo).is_integer() and float(hi).is_integer()):
        raise ConfigError(rpath, f"expected integer bounds, got {rng!r}")
    if not lo < hi:
        raise ConfigError(rpath, f"empty range {rng!r}: expected low < high")
    if log and lo <= 0:
        raise ConfigError(rpath, f"log range {rng!r} must be > 0 at both ends (low is {lo!r})")
    if kind == "int":
        lo, hi = int(lo), int(hi)
    for v in (lo, hi):
        _try_value(base, key, v, rpath)
    return SearchAxis(key, kind, low=lo, high=hi, log=log)


def _try_value(base: dict[str, Any], key: str, value: Any, path: str) -> None:
    try:
        from_dict(unflatten({**base, key: value}))
    except ConfigError as e:
        if e.path == key:
            raise ConfigError(path, e.message) from None
        raise _config_error(e, "base.") from None


def _cells(
    base: dict[str, Any],
    grid: dict[str, list[Any]],
    search: list[SearchAxis],
    finetune: dict[str, Any] | None = None,
) -> list[Cell]:
    cells = []
    for index, combo in enumerate(itertools.product(*grid.values()) if grid else [()]):
        values = dict(zip(grid, combo, strict=True))
        flat = dict(base)
        if "setup" in values:
            # The setup is the ablation being measured: its switches win over base.
            for k, v in SETUPS[values["setup"]].items():
                flat[k] = v
            flat["setup"] = values["setup"]
        elif base.get("setup"):
            for k, v in SETUPS[base["setup"]].items():
                flat.setdefault(k, v)
        if values.get("mode", flat.get("mode", TrialConfig.mode)) == "finetune":
            flat.update(finetune or {})
        flat.update({k: v for k, v in values.items() if k != "setup"})
        try:
            cfg = from_dict(unflatten(flat))
        except ConfigError as e:
            where = f"grid.{e.path}" if e.path in values else f"base.{e.path}"
            raise ConfigError(where, f"in grid cell {_describe(values)}: {e.message}") from None
        resolved = cfg.to_flat_dict()
        cells.append(
            Cell(
                index=index,
                key=_cell_key(index, values),
                values=values,
                config=resolved,
                search=tuple(a.name for a in search if a.applies_to(cfg.mode)),
            )
        )
    return cells


def _describe(values: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in values.items()) + "}" if values else "{}"


def _cell_key(index: int, values: dict[str, Any]) -> str:
    parts = [f"{index:03d}"]
    for axis, v in values.items():
        leaf = axis.rsplit(".", 1)[-1]
        parts.append(str(v) if axis in ("setup", "model.backbone") else f"{leaf}{v}")
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(parts))[:120]


def _check_backbones(names: set[Any], path: str, warnings: list[str]) -> None:
    try:
        from mdfr.registry import backbone_names

        known = backbone_names()
    except Exception as e:  # noqa: BLE001 - the model package may not be importable yet
        warnings.append(f"backbone names not checked (mdfr.models not importable: {e})")
        return
    if not known:
        warnings.append("backbone names not checked (no backbone registered)")
        return
    for name in sorted(map(str, names)):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(path, f"unknown backbone {name!r}{hint}; known: {', '.join(known)}")


def _metric(value: Any, path: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), list(allowed), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(path, f"unknown metric {value!r}{hint}; known: {', '.join(allowed)}")
    return str(value)


def _mode(value: Any, path: str) -> str:
    if value not in ("min", "max"):
        raise ConfigError(path, f"expected 'min' or 'max', got {value!r}")
    return str(value)


def _search_alg(value: Any, has_search: bool, scheduler: Any) -> SearchAlgSpec:
    d = _section({"search_alg": value}, "search_alg", tuple(SearchAlgSpec.__dataclass_fields__))
    d = {k.split(".", 1)[1]: v for k, v in d.items()}
    name = d.get("name", "optuna")
    if name != "optuna":
        raise ConfigError("search_alg.name", f"expected 'optuna', got {name!r}")
    sampler = d.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        _unknown_value("search_alg.sampler", sampler, SAMPLERS)
    seed = _int_in(d, "seed", 0, 0) if _is_int(d.get("seed", 0)) else -1
    if seed < 0:
        raise ConfigError("search_alg.seed", f"expected an integer >= 0, got {d.get('seed')!r}")
    num_samples = d.get("num_samples", 1)
    if not _is_int(num_samples) or num_samples < 1:
        raise ConfigError(
            "search_alg.num_samples",
            f"expected an integer >= 1 (trials per grid cell), got {num_samples!r}",
        )
    if num_samples > 1 and not has_search:
        raise ConfigError(
            "search_alg.num_samples",
            f"got {num_samples} but search is empty, so every sample of a cell would be the "
            "same trial; add a seed grid axis to repeat runs",
        )
    startup = d.get("n_startup_trials")
    if startup is not None and (not _is_int(startup) or startup < 0):
        raise ConfigError(
            "search_alg.n_startup_trials", f"expected an integer >= 0, got {startup!r}"
        )
    sched = scheduler if isinstance(scheduler, dict) else {}
    metric = d.get("metric", sched.get("metric"))
    mode = _mode(d.get("mode", sched.get("mode", "max")), "search_alg.mode")
    if has_search:
        if metric is None:
            raise ConfigError(
                "search_alg.metric",
                "search needs a metric to optimise: set search_alg.metric (or scheduler.metric)",
            )
        metric = _metric(metric, "search_alg.metric", EPOCH_METRICS + FINAL_METRICS)
    return SearchAlgSpec("optuna", sampler, seed, num_samples, metric, mode, startup)


def _unknown_value(path: str, value: Any, allowed: tuple[str, ...]) -> None:
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(path, f"unknown value {value!r}{hint}; allowed: {', '.join(allowed)}")


def _scheduler(value: Any, max_epochs: int) -> SchedulerSpec:
    d = _section({"scheduler": value}, "scheduler", tuple(SchedulerSpec.__dataclass_fields__))
    d = {k.split(".", 1)[1]: v for k, v in d.items()}
    name = d.get("name", "fifo")
    if name not in SCHEDULERS:
        _unknown_value("scheduler.name", name, SCHEDULERS)
    if name == "fifo":
        extra = sorted(set(d) - {"name", "metric", "mode"})
        if extra:
            raise ConfigError(f"scheduler.{extra[0]}", "only applies to scheduler name 'asha'")
        return SchedulerSpec("fifo", d.get("metric"), _mode(d.get("mode", "max"), "scheduler.mode"))
    if "metric" not in d:
        raise ConfigError(
            "scheduler.metric", f"asha needs a metric; known: {', '.join(EPOCH_METRICS)}"
        )
    metric = _metric(d["metric"], "scheduler.metric", EPOCH_METRICS)
    mode = _mode(d.get("mode", "max"), "scheduler.mode")
    max_t = d.get("max_t", max_epochs)
    if not _is_int(max_t) or max_t < 1:
        raise ConfigError("scheduler.max_t", f"expected an integer >= 1 (epochs), got {max_t!r}")
    if max_t < max_epochs:
        raise ConfigError(
            "scheduler.max_t",
            f"got {max_t}, below train.epochs ({max_epochs}): every trial would be cut at epoch "
            f"{max_t}; lower train.epochs or raise max_t",
        )
    grace = d.get("grace_period", 1)
    if not _is_int(grace) or grace < 1:
        raise ConfigError("scheduler.grace_period", f"expected an integer >= 1, got {grace!r}")
    if grace > max_t:
        raise ConfigError(
            "scheduler.grace_period",
            f"got {grace}, must be <= scheduler.max_t ({max_t})",
        )
    rf = _number(d.get("reduction_factor", 3), "scheduler.reduction_factor")
    if rf <= 1:
        raise ConfigError("scheduler.reduction_factor", f"expected a number > 1, got {rf!r}")
    brackets = d.get("brackets", 1)
    if not _is_int(brackets) or brackets < 1:
        raise ConfigError("scheduler.brackets", f"expected an integer >= 1, got {brackets!r}")
    return SchedulerSpec("asha", metric, mode, max_t, grace, float(rf), brackets)


def _resources(value: Any) -> Resources:
    d = _section({"resources": value}, "resources", ("cpu", "gpu"))
    cpu = d.get("resources.cpu", 1)
    if not _is_int(cpu) or cpu < 1:
        raise ConfigError(
            "resources.cpu", f"expected a whole number of CPUs >= 1 per trial, got {cpu!r}"
        )
    gpu = _number(d.get("resources.gpu", 0), "resources.gpu")
    if gpu < 0:
        raise ConfigError("resources.gpu", f"expected a number >= 0, got {gpu!r}")
    if gpu > 1 and not float(gpu).is_integer():
        raise ConfigError(
            "resources.gpu",
            f"got {gpu!r}: a trial takes a fraction of one GPU (0 < gpu <= 1) or whole GPUs",
        )
    return Resources(int(cpu), float(gpu))


def check_storage(value: Any, where: str = "storage") -> str:
    """A validated ``storage`` value (``file://`` dropped), from the file or ``--storage``.

    Args:
        value: what the user gave.
        where: how the user gave it, named in the error (``storage``, ``--storage``).

    Raises:
        ConfigError: not a non-empty path, or an object-store URI.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(where, f"expected a directory path, got {value!r}")
    if "://" in value and not value.startswith("file://"):
        raise ConfigError(
            where,
            f"got {value!r}: object-store storage is not supported yet (the Optuna study, "
            "pretraining cache and trial state need a filesystem); use a path every node "
            "sees, e.g. an NFS mount",
        )
    path = value.removeprefix("file://")
    if not path:
        raise ConfigError(where, f"expected a directory path, got {value!r}")
    return path


def check_tracking_uri(value: Any, where: str = "tracking_uri") -> str:
    """A validated MLflow tracking URI, from the file or ``--tracking-uri``.

    Args:
        value: what the user gave.
        where: how the user gave it, named in the error (``tracking_uri``, ``--tracking-uri``).

    Raises:
        ConfigError: empty, an unsupported scheme or a malformed ``sqlite:`` URI.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(where, f"expected an MLflow tracking URI, got {value!r}")
    scheme = value.split("://", 1)[0] if "://" in value else ""
    allowed = ("sqlite", "http", "https", "file", "postgresql", "mysql", "databricks")
    if scheme and scheme.split("+", 1)[0] not in allowed:
        raise ConfigError(
            where,
            f"unsupported scheme {scheme!r} in {value!r}; allowed: {', '.join(allowed)} "
            "or a directory path",
        )
    if scheme == "sqlite" and not value.startswith("sqlite:///"):
        raise ConfigError(where, f"expected sqlite:///<path to .db>, got {value!r}")
    return value


def _prepare(value: Any, base: dict[str, Any], warnings: list[str]) -> PrepareSpec | None:
    if value is None:
        return None
    d = _section({"prepare": value}, "prepare", ("images", "codec", "out", "options", "synthesize"))
    for key in ("images", "codec"):
        v = d.get(f"prepare.{key}")
        if not isinstance(v, str) or not v:
            raise ConfigError(
                f"prepare.{key}", f"expected a non-empty string (required), got {v!r}"
            )
    out = d.get("prepare.out", PrepareSpec.out)
    if not isinstance(out, str) or not out:
        raise ConfigError("prepare.out", f"expected a directory path, got {out!r}")
    options = d.get("prepare.options") or {}
    if not isinstance(options, dict):
        raise ConfigError("prepare.options", f"expected a mapping, got {options!r}")
    synth = d.get("prepare.synthesize")
    if synth is not None and not isinstance(synth, dict):
        raise ConfigError("prepare.synthesize", f"expected a mapping, got {synth!r}")
    _check_kwargs("mdfr.data.patches", "prepare", options, "prepare.options", warnings)
    if synth is not None:
        _check_kwargs("mdfr.data.synthetic", "synthesize", synth, "prepare.synthesize", warnings)
    if "data.dataset" in base:
        raise ConfigError("base.data.dataset", "is set by the prepare section; remove one of them")
    codec = d["prepare.codec"]
    scheme = codec.split(":", 1)[0]
    try:
        from mdfr.registry import codec_names

        known = codec_names()
    except Exception as e:  # noqa: BLE001 - the data package may not be importable yet
        warnings.append(f"codec names not checked (mdfr.data.codecs not importable: {e})")
    else:
        if scheme not in known:
            close = difflib.get_close_matches(scheme, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                "prepare.codec", f"unknown codec {codec!r}{hint}; known schemes: {', '.join(known)}"
            )
    return PrepareSpec(
        d["prepare.images"], codec, out, dict(options), dict(synth) if synth is not None else None
    )


def _check_kwargs(
    module: str, func: str, kwargs: dict[str, Any], path: str, warnings: list[str]
) -> None:
    """Option names must be parameters of the data function that receives them."""
    import importlib
    import inspect

    try:
        fn = getattr(importlib.import_module(module), func)
    except Exception as e:  # noqa: BLE001 - the data package may not be importable yet
        warnings.append(f"{path} not checked ({module}.{func} not importable: {e})")
        return
    fixed = {"images", "codec", "out", "log", "progress", "force"}
    known = sorted(set(inspect.signature(fn).parameters) - fixed)
    for key in kwargs:
        if key not in known:
            _unknown(f"{path}.{key}", known, "option", key)


def _pretrain(value: Any, base: dict[str, Any]) -> dict[str, Any] | None:
    """``pretrain: false`` turns the stage off; a mapping overrides the stage's TrialConfig."""
    if value is False:
        return None
    if value is None or value is True:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(
            "pretrain", f"expected a mapping (a partial TrialConfig) or false, got {value!r}"
        )
    flat = flatten(unflatten(flatten(value)))
    for key in ("mode", "setup", "output_dir"):
        if key in flat:
            raise ConfigError(f"pretrain.{key}", "is set by the pretraining stage itself")
    try:
        from_dict(unflatten({**pretrain_base(base), **flat}))
    except ConfigError as e:
        raise _config_error(e, "pretrain.") from None
    return flat


def pretrain_base(flat: dict[str, Any]) -> dict[str, Any]:
    """The keys of a (cell) config that the shared pretraining stage inherits, on top of
    :data:`PRETRAIN_RECIPE` (the optimiser is the stage's own, never the cell's)."""
    keep = ("data.", "train.", "seed", "model.backbone", "model.pretrained")
    out = {k: v for k, v in flat.items() if k.startswith(keep) and not is_mdfr_only(k)}
    return {**PRETRAIN_RECIPE, **out, "mode": "pretrain"}


def _finetune(value: Any, base: dict[str, Any]) -> dict[str, Any]:
    """Overrides for every fine-tuning cell (a partial TrialConfig)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("finetune", f"expected a mapping (a partial TrialConfig), got {value!r}")
    flat = flatten(unflatten(flatten(value)))
    for key in flat:
        if key in ("mode", "setup", "output_dir"):
            raise ConfigError(f"finetune.{key}", "is set per cell by the grid and the driver")
        if is_mdfr_only(key):
            raise ConfigError(
                f"finetune.{key}", "only matters for MDFRNet cells (mode 'mdfr'), not fine-tuning"
            )
    try:
        from_dict(unflatten({**base, **flat, "mode": "finetune", "setup": ""}))
    except ConfigError as e:
        raise _config_error(e, "finetune.") from None
    return flat


def _check_cross(
    cells: list[Cell], alg: SearchAlgSpec, sched: SchedulerSpec, pretrain: dict[str, Any] | None
) -> None:
    """Rules that span sections: metrics every cell reports, checkpoints every cell needs."""
    modes = {c.mode for c in cells}
    if "pretrain" in modes:
        for path, metric in (("scheduler.metric", sched.metric), ("search_alg.metric", alg.metric)):
            if metric in NOT_IN_PRETRAIN:
                raise ConfigError(
                    path, f"{metric!r} is not reported by mode 'pretrain' cells; use 'val/acc'"
                )
    if pretrain is None:
        for c in cells:
            if c.mode != "pretrain" and not c.config["model.cmi_checkpoint"]:
                raise ConfigError(
                    "pretrain",
                    f"is false, but grid cell {_describe(c.values)} (mode {c.mode!r}) needs a "
                    "pretrained CMI net: set base.model.cmi_checkpoint or drop 'pretrain: false'",
                )


def _warn_inert_axes(grid: dict[str, list[Any]], warnings: list[str]) -> None:
    modes = {SETUPS[s]["mode"] for s in grid.get("setup", [])}
    if "finetune" in modes:
        inert = [a for a in grid if is_mdfr_only(a)]
        if inert:
            warnings.append(
                f"grid axes {', '.join(inert)} do not change finetune cells: those cells run "
                "identical trials once per value"
            )
