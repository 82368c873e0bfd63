"""The validated plan of a sweep (:class:`SweepPlan`): what the driver, the searcher and every
trial read. Plain frozen data that round-trips through JSON (the sweep state file).

Also what a sweep knows about trial configs beyond their fields: which keys only matter to
MDFRNet trials (:data:`MDFR_ONLY`) and the pretraining stage's own recipe
(:data:`PRETRAIN_RECIPE`, :func:`pretrain_base`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from mdfr.config import TrialConfig, from_dict, unflatten
from mdfr.names import VAL_ACC
from mdfr.sweep.schema import PrepareSpec, Resources, SchedulerSpec, SearchAlgSpec

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

# The grid axis over the attack (codec specs); not a TrialConfig key: the driver turns each
# value into a prepared dataset and sets the cell's data.dataset to it.
ATTACK = "attack"

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


def is_mdfr_only(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in MDFR_ONLY)


def pretrain_base(flat: dict[str, Any]) -> dict[str, Any]:
    """The keys of a (cell) config that the shared pretraining stage inherits, on top of
    :data:`PRETRAIN_RECIPE` (the optimiser is the stage's own, never the cell's)."""
    keep = ("data.", "train.", "seed", "model.backbone", "model.pretrained")
    out = {k: v for k, v in flat.items() if k.startswith(keep) and not is_mdfr_only(k)}
    return {**PRETRAIN_RECIPE, **out, "mode": "pretrain"}


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

    def with_config(self, **flat: Any) -> Cell:
        """This cell with dotted config keys replaced (paths resolved by the driver)."""
        return dataclasses.replace(self, config={**self.config, **flat})


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
    log_models: str = "best"  # best | all | none (mdfr.sweep.results)
    system_metrics: bool = False  # resolved from the file's auto/true/false
    tune_checkpoint_every: int = 0  # epochs between copies for Tune; 0: the final one only

    @property
    def attacks(self) -> list[str]:
        """The attacks the stages prepare datasets for: the grid's attack axis in order, else
        ``prepare.codec``, else none (the datasets are given)."""
        if ATTACK in self.axes:
            return list(dict.fromkeys(c.values[ATTACK] for c in self.cells))
        return [self.prepare.codec] if self.prepare and self.prepare.codec else []

    def attack_of(self, cell: Cell) -> str:
        """The attack a cell runs under ("" when its dataset was given, not prepared)."""
        if ATTACK in cell.values:
            return str(cell.values[ATTACK])
        return self.prepare.codec if self.prepare and self.prepare.codec else ""

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

    @property
    def metric(self) -> str:
        """The metric a sweep is judged by: the search's, else the scheduler's, else val/acc."""
        return self.search_alg.metric or self.scheduler.metric or VAL_ACC

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
        return dataclasses.replace(self, cells=tuple(cells))

    def replace(self, **changes: Any) -> SweepPlan:
        return dataclasses.replace(self, **changes)

    def cell_config(self, cell: Cell, values: dict[str, Any] | None = None) -> TrialConfig:
        """The TrialConfig of ``cell`` with sampled ``values`` (dotted keys) applied."""
        flat = {**cell.config, **(values or {})}
        return from_dict(unflatten(flat))
