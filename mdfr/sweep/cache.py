"""The pretraining cache, safe under concurrent sweeps: finished entries are published whole,
entries in progress are private to the sweep that trains them. The codecs a sweep trains
(``<storage>/cache/codecs/``, :mod:`mdfr.sweep.attacks`) are cached the same way.

Layout under ``<storage>/cache/pretrain/``:

- ``<key>/`` with ``result.json``: a finished stage, the only thing other sweeps read;
- ``.work/<key>-<owner>/``: a stage in progress, owned by one sweep (``owner`` is its MLflow
  parent run id). That sweep's task retries and ``mdfr sweep resume`` continue it from its
  ``checkpoint/state.pt``; no other sweep resumes from it or writes into it.

Publishing renames the finished work folder to ``<key>/`` in one step (``rename(2)`` is
atomic within a filesystem, NFS included), with ``result.json`` already inside, so a reader
sees either no entry or a complete one. When two sweeps train the same key at once (same
config, same dataset content), the first to publish wins and the other drops its copy and
uses the published network: a little compute is wasted, nothing is mixed or overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
WORK_DIR = ".work"


def finished(entry: Path) -> dict[str, Any] | None:
    """The result of a published entry, or None (absent, in progress or unreadable)."""
    try:
        doc = json.loads((entry / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def work_dir(entry: Path, owner: str) -> Path:
    """Where ``owner`` trains ``entry`` before publishing it."""
    return entry.parent / WORK_DIR / f"{entry.name}-{owner}"


def publish(work: Path, entry: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Move a finished ``work`` folder to ``entry``; the published result (ours or theirs).

    Paths in ``result`` that point into ``work`` are rewritten to point into ``entry``.
    """
    moved = {k: _moved(v, work, entry) for k, v in result.items()}
    _write_json(work / RESULT_FILE, moved)
    for _ in range(3):
        try:
            os.rename(work, entry)  # fails when entry exists and is not empty
            return moved
        except OSError:
            theirs = finished(entry)
            if theirs is not None:  # another sweep published this key first
                shutil.rmtree(work, ignore_errors=True)
                return theirs
            _set_aside(entry)
    raise OSError(f"cannot publish {work} as {entry}")


def _moved(value: Any, work: Path, entry: Path) -> Any:
    if isinstance(value, str) and (value == str(work) or value.startswith(f"{work}{os.sep}")):
        return str(entry) + value[len(str(work)) :]
    return value


def _set_aside(entry: Path) -> None:
    """An unfinished folder under the entry's name (left by mdfr before this layout) is moved
    into ``.work`` rather than deleted: it may be someone's only copy of an interrupted run."""
    if entry.exists():
        aside = entry.parent / WORK_DIR / f"{entry.name}-unfinished-{uuid.uuid4().hex[:8]}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(entry, aside)
        except FileNotFoundError:
            pass


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)
