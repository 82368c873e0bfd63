"""Sweep files (YAML) -> a validated, frozen :class:`SweepPlan`. Imports neither Ray nor torch.

Every key of a sweep file, its type, allowed values and default: ``docs/sweep-files.md``
(generated from :mod:`mdfr.sweep.schema`, which declares them). A sweep file looks like::

    name: table2
    base: {model: {backbone: dpec_convnext}, train: {epochs: 30}}   # a partial TrialConfig
    grid:                              # every combination runs exactly once per sample
      setup: [finetune, backbone, wo_res, wo_at, wo_phase_restore, proposed]
      seed: [0, 1, 2]
    search:                            # sampled by Optuna inside each grid cell
      optim.lr: {float: [1.0e-5, 1.0e-3], log: true}
    search_alg: {sampler: tpe, num_samples: 20, metric: val/acc_restored}
    scheduler: {name: asha, metric: val/acc_restored, grace_period: 3}

Semantics: a grid cell is one combination of the grid axes; ``setup`` expands to that Table II
setup's switches (:data:`mdfr.config.SETUPS`, which win over ``base``); ``attack`` lists codec
specs, each prepared into its own dataset (the cell's ``data.dataset``) from ``prepare.images``
(see :mod:`mdfr.data.codec_specs` for the ``train:`` codecs a sweep trains first). Each cell runs
``search_alg.num_samples`` trials whose ``search`` values Optuna proposes, or exactly one trial
when ``search`` is empty. A search axis that does not apply to a cell's mode (the λ weights for
``finetune``) is not sampled for that cell; a cell left with no search axis runs once. ASHA
compares a trial only with the other samples of its own cell, so no cell (no Table II row) is
ever dropped. Every cell is turned into a :class:`TrialConfig` here, so an impossible
combination fails at ``mdfr sweep validate`` time, not on the cluster.

Models: ``log_models`` (default ``best``) chooses which trained networks become MLflow logged
models, and the sweep's champion is registered as ``models:/<experiment>@champion``; the rule
is in :mod:`mdfr.sweep.results`. ``system_metrics`` samples MLflow's system metrics.

Stages have their own recipes: the shared CMI pretraining trains a classifier from scratch
and starts from :data:`PRETRAIN_RECIPE` (Adam, cosine schedule) rather than the MDFR phase's
``base.optim``; ``pretrain:`` overrides it. ``finetune:`` overrides every fine-tuning cell;
precedence is base < setup switches < ``finetune:`` < grid values < search values.

What is declared (types, bounds, choices) lives in :mod:`mdfr.sweep.schema`; what is written
here by hand are the rules that span sections or need the TrialConfig: grid and search axes
are TrialConfig keys with valid values, max_t against the epochs, metrics every cell reports,
λ axes inert for fine-tuning.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import itertools
import re
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
from mdfr.data.codec_specs import check_spec, train_config
from mdfr.errors import ConfigError, UsageError
from mdfr.names import EPOCH_METRICS, NOT_IN_PRETRAIN
from mdfr.registry import known_backbone_names
from mdfr.sweep.plan import (
    ATTACK,
    MDFR_ONLY,
    PRETRAIN_RECIPE,
    Cell,
    SearchAxis,
    SweepPlan,
    is_mdfr_only,
    pretrain_base,
)
from mdfr.sweep.schema import (
    DEFAULT_STORAGE,
    DEFAULT_TRACKING_URI,
    CheckpointSpec,
    FailureSpec,
    PrepareSpec,
    Resources,
    SchedulerSpec,
    SearchAlgSpec,
    SearchRange,
    SweepFile,
    check_storage,
)
from mdfr.tracking import check_tracking_uri
from mdfr.validation import Float, unknown, validate

__all__ = [
    "DEFAULT_STORAGE",
    "DEFAULT_TRACKING_URI",
    "MDFR_ONLY",
    "PRETRAIN_RECIPE",
    "Cell",
    "PrepareSpec",
    "Resources",
    "SchedulerSpec",
    "SearchAlgSpec",
    "SearchAxis",
    "SweepPlan",
    "apply_override",
    "build_plan",
    "check_storage",
    "check_tracking_uri",
    "is_mdfr_only",
    "load_sweep",
    "pretrain_base",
]

# Keys the driver sets per trial or per cell; never a grid or search axis.
_NOT_AN_AXIS = ("output_dir",)


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
    f: SweepFile = validate(SweepFile, raw)
    warnings: list[str] = []
    base = _partial(f.base, "base")
    grid = _grid(f.grid or {})
    finetune = _finetune(f.finetune, base)
    setups = (
        list(grid["setup"]) if "setup" in grid else ([base["setup"]] if base.get("setup") else [])
    )
    search = _search(f.search or {}, base, grid, setups)
    backbones = {
        base.get("model.backbone", TrialConfig().model.backbone),
        *grid.get("model.backbone", []),
    }
    where = "grid.model.backbone" if "model.backbone" in grid else "base.model.backbone"
    _check_backbones(backbones, where)
    cells = _cells(base, grid, search, finetune)
    _check_search_used(search, cells)
    if finetune and not any(c.mode == "finetune" for c in cells):
        warnings.append("the finetune section changes nothing: no grid cell runs mode 'finetune'")
    scheduler = _scheduler(f.scheduler, raw.get("scheduler"), cells)
    search_alg = _search_alg(f.search_alg or SearchAlgSpec(), bool(search), scheduler)
    prepare = _prepare(f.prepare, base, grid, warnings)
    pretrain = _pretrain(f.pretrain, base)
    _check_cross(cells, search_alg, scheduler, pretrain)
    _warn_inert_axes(grid, warnings)
    plan = SweepPlan(
        name=f.name,
        experiment=f.experiment or f"mdfr-{f.name}",
        source=source,
        description=f.description,
        base=base,
        axes=tuple(grid),
        cells=tuple(cells),
        search=tuple(search),
        search_alg=search_alg,
        scheduler=scheduler,
        resources=f.resources or Resources(),
        max_concurrent=f.max_concurrent,
        max_failures=(f.failure or FailureSpec()).max_failures,
        num_to_keep=(f.checkpoint or CheckpointSpec()).num_to_keep,
        tune_checkpoint_every=(f.checkpoint or CheckpointSpec()).tune_every,
        storage=check_storage(f.storage),
        tracking_uri=f.tracking_uri,
        prepare=prepare,
        pretrain=pretrain,
        finetune=finetune,
        log_models=f.log_models,
        system_metrics=_system_metrics(f.system_metrics, f.resources or Resources()),
    )
    return plan.replace(warnings=tuple(warnings + _scheduler_warnings(plan)))


def _system_metrics(value: str | bool, resources: Resources) -> bool:
    """``auto`` samples system metrics when trials take GPUs (what they are for); CPU-only
    sweeps (the demo) stay lean."""
    return resources.gpu > 0 if value == "auto" else bool(value)


def describe_scheduler(plan: SweepPlan) -> str:
    """How the plan's scheduler treats grid cells, for ``sweep validate``."""
    s = plan.scheduler
    if s.name == "fifo":
        return "fifo (every trial runs to the end)"
    return (
        f"asha on {s.metric} ({s.mode}) within each grid cell: a trial competes only with the "
        f"{plan.num_samples} samples of its own cell, so no cell is ever dropped"
    )


def _scheduler_warnings(plan: SweepPlan) -> list[str]:
    if plan.scheduler.name == "asha" and max(plan.samples_of(c) for c in plan.cells) < 2:
        return [
            "scheduler asha stops nothing: it compares trials within a grid cell and every "
            "cell runs one trial (raise search_alg.num_samples, or use fifo)"
        ]
    return []


# --------------------------------------------------------------------------- TrialConfig keys


def _partial(value: dict[str, Any] | None, path: str) -> dict[str, Any]:
    """A partial TrialConfig (nested or dotted keys), flattened and checked."""
    flat = flatten(unflatten(flatten(value or {})))  # accepts nested and dotted keys alike
    _try_config(flat, path)
    return flat


def _try_config(flat: dict[str, Any], path: str) -> TrialConfig:
    try:
        return from_dict(unflatten(flat))
    except ConfigError as e:
        raise _under(e, f"{path}.") from None


def _under(e: ConfigError, prefix: str, context: str = "") -> ConfigError:
    path = f"{prefix}{e.path}" if e.path else prefix.rstrip(".")
    return ConfigError(path, f"{context}{e.message}")


def _grid(value: dict[str, list[Any]]) -> dict[str, list[Any]]:
    allowed = ["setup", ATTACK, *field_paths()]
    for axis, values in value.items():
        path = f"grid.{axis}"
        if axis not in allowed:
            raise unknown(path, axis, allowed, "grid axis")
        if axis in _NOT_AN_AXIS:
            raise ConfigError(path, f"{axis} is set per trial by the driver; not a grid axis")
        if not values:
            raise ConfigError(path, f"expected a non-empty list of values, got {values!r}")
        for v in values:
            if isinstance(v, dict | list):
                raise ConfigError(path, f"expected scalar values, got {v!r}")
        dupes = sorted({repr(v) for v in values if values.count(v) > 1})
        if dupes:
            raise ConfigError(path, f"duplicate values {', '.join(dupes)}: each would run twice")
        for v in values if axis == "setup" else ():
            if v not in SETUPS:
                raise unknown(path, v, SETUPS, "setup")
        for i, v in enumerate(values if axis == ATTACK else ()):
            if not isinstance(v, str):
                raise ConfigError(f"{path}[{i}]", f"expected a codec spec (a string), got {v!r}")
    return dict(value)


def _setup_keys(setups: list[str]) -> set[str]:
    return {k for s in setups for k in SETUPS[s] if k != "mode"} | ({"mode"} if setups else set())


def _search(
    value: dict[str, SearchRange],
    base: dict[str, Any],
    grid: dict[str, list[Any]],
    setups: list[str],
) -> list[SearchAxis]:
    allowed = [p for p in field_paths() if p not in ("output_dir", "setup", "seed")]
    fixed_by_setup = _setup_keys(setups)
    types = {k: type(v) for k, v in TrialConfig().to_flat_dict().items()}
    axes = []
    for key, spec in value.items():
        path = f"search.{key}"
        if key in ("setup", "seed"):
            raise ConfigError(path, f"{key} is a grid axis (grid.{key}: [...]), not a search axis")
        if key not in allowed:
            raise unknown(path, key, allowed, "search axis")
        if key in grid:
            raise ConfigError(path, f"{key} is both a grid axis and a search axis; keep one")
        if key in fixed_by_setup:
            raise ConfigError(
                path, f"{key} is set by the Table II setups in this sweep ({', '.join(setups)})"
            )
        axes.append(_search_axis(key, spec, path, types[key], base))
    return axes


def _search_axis(
    key: str, spec: SearchRange, path: str, ftype: type, base: dict[str, Any]
) -> SearchAxis:
    given = {
        k: v
        for k, v in (("float", spec.float_range), ("int", spec.int_range), ("choice", spec.choice))
        if v is not None
    }
    if len(given) != 1:
        raise ConfigError(
            path,
            "expected exactly one of {float: [lo, hi], log: bool}, {int: [lo, hi]}, "
            f"{{choice: [...]}}, got {', '.join(given) or 'none'}",
        )
    ((kind, values),) = given.items()
    if kind == "choice":
        return _choice_axis(key, values, spec.log, path, base)
    if ftype is not (float if kind == "float" else int):
        other = "int:" if ftype is int else "float:"
        raise ConfigError(path, f"{key} is {ftype.__name__}-valued; use {other} or choice:")
    rpath = f"{path}.{kind}"
    if len(values) != 2:
        raise ConfigError(rpath, f"expected [low, high], got {values!r}")
    lo, hi = (validate(Float, v, rpath) for v in values)
    if kind == "int" and not (float(lo).is_integer() and float(hi).is_integer()):
        raise ConfigError(rpath, f"expected integer bounds, got {values!r}")
    if not lo < hi:
        raise ConfigError(rpath, f"empty range {values!r}: expected low < high")
    if spec.log and lo <= 0:
        raise ConfigError(rpath, f"log range {values!r} must be > 0 at both ends (low is {lo!r})")
    if kind == "int":
        lo, hi = int(lo), int(hi)
    for v in (lo, hi):
        _try_value(base, key, v, rpath)
    return SearchAxis(key, kind, low=lo, high=hi, log=spec.log)


def _choice_axis(
    key: str, choices: list[Any], log: bool, path: str, base: dict[str, Any]
) -> SearchAxis:
    if log:
        raise ConfigError(f"{path}.log", "log applies to float/int ranges, not choice")
    if len({repr(c) for c in choices}) != len(choices):
        raise ConfigError(f"{path}.choice", f"duplicate values in {choices!r}")
    for c in choices:
        if isinstance(c, dict | list):
            raise ConfigError(f"{path}.choice", f"expected scalar values, got {c!r}")
        _try_value(base, key, c, f"{path}.choice")
    if key == "model.backbone":
        _check_backbones(set(choices), f"{path}.choice")
    return SearchAxis(key, "choice", choices=tuple(choices))


def _try_value(base: dict[str, Any], key: str, value: Any, path: str) -> None:
    try:
        from_dict(unflatten({**base, key: value}))
    except ConfigError as e:
        if e.path == key:
            raise ConfigError(path, e.message) from None
        raise _under(e, "base.") from None


def _check_search_used(search: list[SearchAxis], cells: list[Cell]) -> None:
    for axis in search:
        if not any(axis.name in c.search for c in cells):
            raise ConfigError(
                f"search.{axis.name}",
                "applies only to mode 'mdfr' cells and no grid cell runs mode 'mdfr'",
            )


# --------------------------------------------------------------------------- cells


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
            flat.update(SETUPS[values["setup"]])
            flat["setup"] = values["setup"]
        elif base.get("setup"):
            for k, v in SETUPS[base["setup"]].items():
                flat.setdefault(k, v)
        if values.get("mode", flat.get("mode", TrialConfig.mode)) == "finetune":
            flat.update(finetune or {})
        flat.update({k: v for k, v in values.items() if k not in ("setup", ATTACK)})
        try:
            cfg = from_dict(unflatten(flat))
        except ConfigError as e:
            where = f"grid.{e.path}" if e.path in values else f"base.{e.path}"
            raise ConfigError(where, f"in grid cell {_describe(values)}: {e.message}") from None
        cells.append(
            Cell(
                index=index,
                key=_cell_key(index, values),
                values=values,
                config=cfg.to_flat_dict(),
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
        parts.append(str(v) if axis in ("setup", ATTACK, "model.backbone") else f"{leaf}{v}")
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(parts))[:120]


def _check_backbones(names: set[Any], path: str) -> None:
    known = known_backbone_names()
    for name in sorted(map(str, names)):
        if name not in known:
            raise unknown(path, name, known, "backbone")


# --------------------------------------------------------------------------- sections


def _search_alg(alg: SearchAlgSpec, has_search: bool, sched: SchedulerSpec) -> SearchAlgSpec:
    if alg.num_samples > 1 and not has_search:
        raise ConfigError(
            "search_alg.num_samples",
            f"got {alg.num_samples} but search is empty, so every sample of a cell would be "
            "the same trial; add a seed grid axis to repeat runs",
        )
    metric = alg.metric or sched.metric
    if has_search and metric is None:
        raise ConfigError(
            "search_alg.metric",
            "search needs a metric to optimise: set search_alg.metric (or scheduler.metric)",
        )
    return dataclasses.replace(
        alg, metric=metric if has_search else alg.metric, mode=alg.mode or sched.mode
    )


def _scheduler(s: SchedulerSpec | None, raw: Any, cells: list[Cell]) -> SchedulerSpec:
    s = s or SchedulerSpec()
    max_epochs = max(int(c.config["train.epochs"]) for c in cells)
    if s.name == "fifo":
        extra = sorted(set(raw if isinstance(raw, dict) else {}) - {"name", "metric", "mode"})
        if extra:
            raise ConfigError(f"scheduler.{extra[0]}", "only applies to scheduler name 'asha'")
        return s
    if s.metric is None:
        raise ConfigError(
            "scheduler.metric", f"asha needs a metric; known: {', '.join(EPOCH_METRICS)}"
        )
    max_t = max_epochs if s.max_t is None else s.max_t
    if max_t < max_epochs:
        raise ConfigError(
            "scheduler.max_t",
            f"got {max_t}, below train.epochs ({max_epochs}): every trial would be cut at epoch "
            f"{max_t}; lower train.epochs or raise max_t",
        )
    if s.grace_period > max_t:
        raise ConfigError(
            "scheduler.grace_period", f"got {s.grace_period}, must be <= scheduler.max_t ({max_t})"
        )
    return dataclasses.replace(s, max_t=max_t)


def _prepare(
    p: PrepareSpec | None, base: dict[str, Any], grid: dict[str, list[Any]], warnings: list[str]
) -> PrepareSpec | None:
    if p is None:
        if ATTACK in grid:
            raise ConfigError(
                f"grid.{ATTACK}",
                "needs a prepare section: the camera images (prepare.images) each attack is "
                "applied to",
            )
        return None
    _check_kwargs("mdfr.data.patches", "prepare", p.options, "prepare.options", warnings)
    if p.synthesize is not None:
        _check_kwargs(
            "mdfr.data.synthetic", "synthesize", p.synthesize, "prepare.synthesize", warnings
        )
    if "data.dataset" in base:
        raise ConfigError("base.data.dataset", "is set by the prepare section; remove one of them")
    _codec_train_defaults(p.codec_train)
    if ATTACK in grid and p.codec is not None:
        raise ConfigError(
            "prepare.codec", f"the attack is set per cell by grid.{ATTACK}; remove one of them"
        )
    if ATTACK not in grid and p.codec is None:
        raise ConfigError("prepare.codec", f"required (or a grid.{ATTACK} axis of codec specs)")
    specs = [("prepare.codec", p.codec)] if p.codec is not None else []
    specs += [(f"grid.{ATTACK}[{i}]", v) for i, v in enumerate(grid.get(ATTACK, []))]
    for path, spec in specs:
        try:
            check_spec(spec, p.codec_train)
        except UsageError as e:
            raise ConfigError(path, str(e)) from None
    return p


def _codec_train_defaults(defaults: dict[str, Any]) -> None:
    """``prepare.codec_train`` holds settings of ``mdfr codec train`` with usable values."""
    for key, value in defaults.items():
        try:
            train_config("train:", {key: value})
        except UsageError as e:
            message = str(e).replace("codec spec 'train:': ", "")
            raise ConfigError(f"prepare.codec_train.{key}", message) from None


def _check_kwargs(
    module: str, func: str, kwargs: dict[str, Any], path: str, warnings: list[str]
) -> None:
    """Option names must be parameters of the data function that receives them."""
    try:
        # Lazy: the data modules (numpy, pyarrow) are only needed when a prepare section is
        # there; they import no torch.
        fn = getattr(importlib.import_module(module), func)
    except ImportError as e:
        warnings.append(f"{path} not checked ({module}.{func} not importable: {e})")
        return
    fixed = {"images", "codec", "out", "log", "progress", "force"}
    known = sorted(set(inspect.signature(fn).parameters) - fixed)
    for key in kwargs:
        if key not in known:
            raise unknown(f"{path}.{key}", key, known, "option")


def _pretrain(value: dict[str, Any] | bool | None, base: dict[str, Any]) -> dict[str, Any] | None:
    """``pretrain: false`` turns the stage off; a mapping overrides the stage's TrialConfig."""
    if value is False:
        return None
    flat = flatten(unflatten(flatten(value if isinstance(value, dict) else {})))
    for key in ("mode", "setup", "output_dir"):
        if key in flat:
            raise ConfigError(f"pretrain.{key}", "is set by the pretraining stage itself")
    _try_config({**pretrain_base(base), **flat}, "pretrain")
    return flat


def _finetune(value: dict[str, Any] | None, base: dict[str, Any]) -> dict[str, Any]:
    """Overrides for every fine-tuning cell (a partial TrialConfig)."""
    flat = flatten(unflatten(flatten(value or {})))
    for key in flat:
        if key in ("mode", "setup", "output_dir"):
            raise ConfigError(f"finetune.{key}", "is set per cell by the grid and the driver")
        if is_mdfr_only(key):
            raise ConfigError(
                f"finetune.{key}", "only matters for MDFRNet cells (mode 'mdfr'), not fine-tuning"
            )
    if flat:
        _try_config({**base, **flat, "mode": "finetune", "setup": ""}, "finetune")
    return flat


def _check_cross(
    cells: list[Cell], alg: SearchAlgSpec, sched: SchedulerSpec, pretrain: dict[str, Any] | None
) -> None:
    """Rules that span sections: metrics every cell reports, checkpoints every cell needs."""
    if any(c.mode == "pretrain" for c in cells):
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
