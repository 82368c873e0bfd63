"""Which code a run ran: git commit, whether the tree was dirty, and a digest of the package.

Clusters never see ``.git``: the launcher's rsync, Ray's ``--working-dir`` upload and the
Docker context all leave it out (it is large and Ray advises against it). So the commit is
recorded where the sweep is submitted, from a checkout, and travels with the code:

1. ``MDFR_GIT_COMMIT`` / ``MDFR_GIT_DIRTY`` in the environment (set by whoever submits; the
   Docker image bakes them in from build arguments);
2. ``git`` in the checkout the ``mdfr`` package was imported from (a laptop, a driver run
   from a clone);
3. a ``PROVENANCE`` file (JSON) at the project root or ``$MDFR_PROVENANCE_FILE``, written by
   ``python -m mdfr.provenance`` before ``ray up``, ``ray job submit --working-dir .`` or
   ``docker build`` (``make provenance`` does it);
4. otherwise ``unknown``.

Every source also carries the **source digest**: SHA-256 of the package's ``*.py`` files. It
is computed again wherever mdfr runs, so a ``PROVENANCE`` file that no longer matches the code
beside it (written, then the code edited) reports the tree as dirty instead of lying, and a
run without any git information can still be matched to a commit later.

:func:`current` is the one place tracking asks; :meth:`Provenance.tags` are the MLflow tags
(``mdfr.git_commit``, ``mdfr.git_dirty``, ``mdfr.source_digest`` and MLflow's standard
``mlflow.source.git.commit``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FILE = "PROVENANCE"
ENV_COMMIT = "MDFR_GIT_COMMIT"
ENV_DIRTY = "MDFR_GIT_DIRTY"
ENV_FILE = "MDFR_PROVENANCE_FILE"
UNKNOWN = "unknown"
PACKAGE = Path(__file__).resolve().parent
PROJECT = PACKAGE.parent


@dataclass(frozen=True)
class Provenance:
    """What code ran. ``dirty`` is None when unknown; ``source`` says where it came from."""

    commit: str
    dirty: bool | None
    source_digest: str
    source: str

    def tags(self) -> dict[str, str]:
        """MLflow tags for every run of a sweep, stage or hand-run trial."""
        dirty = UNKNOWN if self.dirty is None else str(self.dirty).lower()
        tags = {
            "mdfr.git_commit": self.commit,
            "mdfr.git_dirty": dirty,
            "mdfr.source_digest": self.source_digest,
            "mdfr.provenance": self.source,
        }
        if self.commit != UNKNOWN:
            tags["mlflow.source.git.commit"] = self.commit
        return tags

    def env(self) -> dict[str, str]:
        """Environment that carries this provenance to processes without the checkout."""
        out = {ENV_COMMIT: self.commit}
        if self.dirty is not None:
            out[ENV_DIRTY] = str(self.dirty).lower()
        return out


@functools.cache
def source_digest(package: Path = PACKAGE) -> str:
    """SHA-256 (16 hex digits) of the package's ``*.py`` files, by relative path."""
    h = hashlib.sha256()
    for f in sorted(package.rglob("*.py")):
        h.update(f.relative_to(package).as_posix().encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _git(*args: str, cwd: Path = PROJECT) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def from_git(root: Path = PROJECT) -> Provenance | None:
    """From the checkout at ``root`` (None outside one). Dirty: tracked files changed."""
    if not (root / ".git").exists():  # not a checkout of this project (site-packages ...)
        return None
    commit = _git("rev-parse", "HEAD", cwd=root)
    if not commit:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=root)
    dirty = None if status is None else bool(status)
    return Provenance(commit, dirty, source_digest(), "git")


def _from_env() -> Provenance | None:
    commit = os.environ.get(ENV_COMMIT, "").strip()
    if not commit:
        return None
    dirty = {"true": True, "false": False}.get(os.environ.get(ENV_DIRTY, "").strip().lower())
    return Provenance(commit, dirty, source_digest(), "env")


def _file_candidates() -> list[Path]:
    given = os.environ.get(ENV_FILE)
    return [Path(given)] if given else [PROJECT / FILE, Path.cwd() / FILE]


def _from_file() -> Provenance | None:
    for path in _file_candidates():
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or not doc.get("git_commit"):
            continue
        dirty = doc.get("git_dirty") if isinstance(doc.get("git_dirty"), bool) else None
        if doc.get("source_digest") != source_digest():
            dirty = True  # the code beside the file is not the code it describes
        return Provenance(str(doc["git_commit"]), dirty, source_digest(), f"file:{path}")
    return None


def current() -> Provenance:
    """This process's provenance (see the module docstring for the order of sources)."""
    for find in (_from_env, from_git, _from_file):
        found = find()
        if found is not None:
            return found
    return Provenance(UNKNOWN, None, source_digest(), UNKNOWN)


def write(root: Path = PROJECT) -> Path:
    """Write ``<root>/PROVENANCE`` from the checkout at ``root``, to upload with the code.

    The file is kept out of ``git status`` through ``.git/info/exclude`` rather than
    ``.gitignore``: the launcher's rsync and Ray's working-dir upload skip what .gitignore
    lists, and the file must travel.

    Raises:
        SystemExit: ``root`` is not a git checkout.
    """
    prov = from_git(root)
    if prov is None:
        raise SystemExit(f"{root} is not a git checkout: nothing to record")
    path = root / FILE
    doc = {**asdict(prov), "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    doc = {"git_commit": doc.pop("commit"), "git_dirty": doc.pop("dirty"), **doc}
    doc.pop("source")
    path.write_text(json.dumps(doc, indent=1) + "\n")
    where = _git("rev-parse", "--git-path", "info/exclude", cwd=root)  # worktrees too
    if where:
        exclude = Path(where) if Path(where).is_absolute() else root / where
        exclude.parent.mkdir(parents=True, exist_ok=True)
        lines = exclude.read_text().splitlines() if exclude.is_file() else []
        if f"/{FILE}" not in lines:
            exclude.write_text("\n".join([*lines, f"/{FILE}"]) + "\n")
    return path


if __name__ == "__main__":
    written = write(Path(sys.argv[1]) if len(sys.argv) > 1 else PROJECT)
    print(f"wrote {written}: {written.read_text().strip()}")
