"""The sweep state: what a sweep folder records about itself, typed (:class:`SweepState`).

``<storage>/<name>-<timestamp>/mdfr_sweep.json`` holds the resolved plan, the run ids and the
hashes. The driver writes it (atomically) before the stages and again before Tune starts;
every trial reads it from the absolute path in its Tune config, so nothing big travels in a
Ray closure; ``mdfr sweep resume``, ``list`` and ``status`` read it back.

Also the small file helpers the sweep shares: :func:`abs_path`, :func:`atomic_write_json`,
:func:`read_json`, and finding sweep folders (:func:`find_sweep`, :func:`list_sweeps`).
Imports neither Ray nor MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdfr.errors import UsageError
from mdfr.names import ATTACK_BPP, ATTACK_PSNR, trial_tags
from mdfr.sweep.plan import SweepPlan
from mdfr.sweep.schema import DEFAULT_STORAGE, check_storage

STATE_FILE = "mdfr_sweep.json"
# trial_tags keyword -> key of a SweepState.datasets entry.
DATASET_TAGS = {"dataset_hash": "hash", "codec": "codec", "attack": "attack"}
# A trial's final result in <sweep>/trials/<trial key>/: written once it has finished.
TRIAL_RESULT_FILE = "mdfr_result.json"
# The Optuna studies of a sweep (one per grid cell), in its folder.
OPTUNA_FILE = "optuna.db"


@dataclass(frozen=True)
class TrackingContext:
    """Where a sweep's runs go and what every run of it is tagged with.

    Small and picklable: handed to the pretraining stages' Ray tasks.
    """

    uri: str
    experiment_id: str
    parent_run_id: str
    sweep: str
    git_commit: str
    dataset_hash: str = "unknown"
    codec: str = "unknown"
    # :meth:`mdfr.provenance.Provenance.tags`, recorded where the sweep was submitted.
    provenance: dict[str, str] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)  # MLflow's source/user tags
    log_models: str = "best"  # the plan's, see mdfr.sweep.results
    system_metrics: bool = False

    def tags(self, cfg: Any, **extra: Any) -> dict[str, str]:
        """:func:`mdfr.names.trial_tags` of ``cfg`` in this sweep, with its provenance and
        source tags (its file and user, wherever the run is made); ``extra`` wins: a run on
        one of several datasets names its own."""
        known = {
            "sweep": self.sweep,
            "git_commit": self.git_commit,
            "dataset_hash": self.dataset_hash,
            "codec": self.codec,
        }
        return {**trial_tags(cfg, **{**known, **extra}), **self.provenance, **self.source}


@dataclass(frozen=True)
class SweepState:
    """A sweep folder's record of itself.

    Attributes:
        phase: ``stages`` until the dataset and pretraining are resolved, then ``tune``.
        plan: the validated plan; from phase ``tune`` on, with absolute paths and the
            pretrained checkpoints filled in.
        root: the directory relative paths of the sweep file are taken from.
        exp_dir: this sweep folder.
        storage: the storage it lives in (the pretraining cache is under it).
        tracking_uri: the resolved MLflow tracking URI.
        git_commit: the commit the sweep was submitted from.
        fault: test-only fault injection (``MDFR_TEST_FAULT``, see mdfr.sweep.trainable).
        experiment_id, parent_run_id: the sweep's MLflow experiment and parent run.
        dataset_hash, codec: the (first) dataset's content hash and codec (set by the stages).
        datasets: every dataset the trials read, by absolute path: what the stages found in
            its manifest (see :meth:`dataset_tags`) — one per attack with a grid.attack axis.
        source: MLflow's standard source tags (sweep file, user) for every run.
    """

    phase: str
    plan: SweepPlan
    root: str
    exp_dir: str
    storage: str
    tracking_uri: str
    git_commit: str = "unknown"
    fault: str = ""
    experiment_id: str = ""
    parent_run_id: str = ""
    dataset_hash: str = "unknown"
    codec: str = "unknown"
    provenance: dict[str, str] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def dataset_tags(self, path: str) -> dict[str, str]:
        """Tag values (``dataset_hash``, ``codec``, ``attack``) of the runs on dataset ``path``."""
        info = self.datasets.get(path) or {}
        return {k: str(info[src]) for k, src in DATASET_TAGS.items() if info.get(src)}

    def attack_metrics(self, path: str) -> dict[str, float]:
        """The measured rate and distortion of dataset ``path``'s attack, as metrics."""
        info = self.datasets.get(path) or {}
        pairs = ((ATTACK_BPP, "bpp"), (ATTACK_PSNR, "psnr"))
        return {name: float(info[src]) for name, src in pairs if info.get(src) is not None}

    @property
    def state_file(self) -> Path:
        return Path(self.exp_dir) / STATE_FILE

    @property
    def tracking(self) -> TrackingContext:
        return TrackingContext(
            self.tracking_uri,
            self.experiment_id,
            self.parent_run_id,
            self.plan.name,
            self.git_commit,
            self.dataset_hash,
            self.codec,
            dict(self.provenance),
            dict(self.source),
            self.plan.log_models,
            self.plan.system_metrics,
        )

    def path(self, path: str | Path) -> Path:
        """``path`` made absolute against the sweep's root."""
        return abs_path(path, Path(self.root))

    def replace(self, **changes: Any) -> SweepState:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**d, "plan": self.plan.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(
            **{**{k: v for k, v in d.items() if k in known}, "plan": SweepPlan.from_dict(d["plan"])}
        )

    def write(self) -> None:
        atomic_write_json(self.state_file, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> SweepState:
        """The state in a sweep folder, or in the state file ``path`` itself."""
        p = Path(path)
        file = p if p.name == STATE_FILE else p / STATE_FILE
        try:
            doc = json.loads(file.read_text())
        except FileNotFoundError:
            raise UsageError(f"{file.parent}: not a sweep folder (no {STATE_FILE})") from None
        except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
            raise UsageError(f"{file}: unreadable sweep state ({e})") from None
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [k for k in required if not isinstance(doc, dict) or k not in doc]
        if missing:
            raise UsageError(f"{file}: not a sweep state file (missing {', '.join(missing)})")
        try:
            return cls.from_dict(doc)
        except Exception as e:  # noqa: BLE001 - any failure means the stored state is damaged
            raise UsageError(f"{file}: the stored sweep state is damaged ({e})") from None


# --------------------------------------------------------------------------- files


def abs_path(path: str | Path, root: Path) -> Path:
    """``path`` (``~`` expanded) made absolute against ``root``: Tune changes the trials'
    working directory, so nothing relative may reach them."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root / p).resolve()


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON through a temp file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing or unreadable (not yet done)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- sweep folders


def storage_dir(storage: str | None, root: Path, where: str = "--storage") -> Path:
    """The storage folder: ``storage`` under the sweep file's rules, else the default."""
    value = DEFAULT_STORAGE if storage is None else check_storage(storage, where)
    return abs_path(value, root)


def find_sweep(name_or_path: str, storage: str | None = None, root: Path | None = None) -> Path:
    """A sweep folder from its path, or the newest ``<storage>/<name>-*`` folder."""
    root = root or Path.cwd()
    p = abs_path(name_or_path, root)
    if (p / STATE_FILE).is_file():
        return p
    if "/" in name_or_path:  # a path (sweep names have no slash), not a name
        raise UsageError(f"{name_or_path}: not a sweep folder (no {STATE_FILE} in it)")
    base = storage_dir(storage, root)
    found = sorted(
        (d for d in base.glob(f"{name_or_path}-*") if (d / STATE_FILE).is_file()),
        key=lambda d: d.name,
    )
    if not found:
        raise UsageError(
            f"no sweep {name_or_path!r}: not a sweep folder, and no {base}/{name_or_path}-* "
            "folder holds one (pass the folder path or --storage)"
        )
    return found[-1]


def list_sweeps(storage: str | None = None, root: Path | None = None) -> list[dict[str, Any]]:
    """Sweep folders under ``storage`` with their name, trial count and progress."""
    base = storage_dir(storage, root or Path.cwd())
    out = []
    for d in sorted(base.glob("*/" + STATE_FILE)):
        # Read leniently: a folder written by an older mdfr still lists, and one damaged
        # folder is listed as unreadable instead of hiding the others.
        try:
            state = json.loads(d.read_text())
            plan = SweepPlan.from_dict(state["plan"])
        except Exception as e:  # noqa: BLE001 - bad JSON, not UTF-8, no or a damaged plan
            why = e if isinstance(e, OSError | ValueError) else f"no readable plan: {e!r}"
            out.append(
                {"name": d.parent.name, "path": str(d.parent), "trials": 0, "finished": 0,
                 "phase": "unreadable", "error": f"{d}: unreadable sweep state ({why})"}
            )  # fmt: skip
            continue
        trials_dir = d.parent / "trials"
        done = len(list(trials_dir.glob(f"*/{TRIAL_RESULT_FILE}"))) if trials_dir.is_dir() else 0
        out.append(
            {
                "name": state["plan"]["name"],
                "path": str(d.parent),
                "trials": plan.num_trials,
                "finished": done,
                "phase": state.get("phase", "?"),
            }
        )
    return out
