"""Provenance (issue 13): the commit and dirty flag recorded where a sweep is submitted reach
processes that run without ``.git`` (a cluster's copy of the code), and never lie about code
edited after they were recorded. Real git, real copies of the package, real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mdfr import provenance

ROOT = Path(__file__).resolve().parents[1]
GIT = shutil.which("git")
pytestmark = pytest.mark.skipif(GIT is None, reason="no git binary")


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture()
def checkout(tmp_path) -> Path:
    """A git checkout holding a copy of the mdfr package (what a user submits from)."""
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "mdfr", root / "mdfr", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "pyproject.toml").write_text("[project]\nname = 'mdfr'\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "x")
    return root


def _run_provenance(root: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The tags ``mdfr.provenance.current()`` gives in a process importing mdfr from ``root``."""
    code = "import json, mdfr.provenance as p; print(json.dumps(p.current().tags()))"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MDFR_")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={**clean, "PYTHONPATH": str(root), **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def test_a_checkout_gives_its_commit_and_dirty_flag(checkout):
    head = _git(checkout, "rev-parse", "HEAD")
    tags = _run_provenance(checkout)
    assert tags["mdfr.git_commit"] == tags["mlflow.source.git.commit"] == head
    assert tags["mdfr.git_dirty"] == "false" and tags["mdfr.provenance"] == "git"
    (checkout / "mdfr" / "errors.py").write_text("# edited\n", encoding="utf-8")
    assert _run_provenance(checkout)["mdfr.git_dirty"] == "true"


def test_provenance_file_travels_where_git_does_not(checkout, tmp_path):
    head = _git(checkout, "rev-parse", "HEAD")
    written = provenance.write(checkout)
    assert json.loads(written.read_text())["git_commit"] == head
    assert "PROVENANCE" not in _git(checkout, "status", "--porcelain")  # not an untracked file

    # what the launcher's rsync / Ray's working-dir upload put on a cluster: no .git
    cluster = tmp_path / "on-the-cluster"
    shutil.copytree(checkout, cluster, ignore=shutil.ignore_patterns(".git"))
    tags = _run_provenance(cluster)
    assert tags["mlflow.source.git.commit"] == head and tags["mdfr.git_dirty"] == "false"
    assert tags["mdfr.provenance"].startswith("file:")

    # code edited after the file was written: the commit alone no longer describes it
    (cluster / "mdfr" / "errors.py").write_text("# edited on the head node\n")
    edited = _run_provenance(cluster)
    assert (
        edited["mdfr.git_dirty"] == "true"
        and edited["mdfr.source_digest"] != tags["mdfr.source_digest"]
    )


def test_environment_wins_and_nothing_known_says_unknown(checkout, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(checkout, bare, ignore=shutil.ignore_patterns(".git"))
    unknown = _run_provenance(bare)
    assert unknown["mdfr.git_commit"] == "unknown" and "mlflow.source.git.commit" not in unknown
    given = _run_provenance(bare, {"MDFR_GIT_COMMIT": "abc123", "MDFR_GIT_DIRTY": "true"})
    assert given["mlflow.source.git.commit"] == "abc123" and given["mdfr.git_dirty"] == "true"


def test_every_upload_path_carries_the_provenance_file():
    """The launcher's rsync and Ray's working-dir upload drop what .gitignore lists; the Docker
    context keeps only what .dockerignore re-includes."""
    assert "PROVENANCE" not in (ROOT / ".gitignore").read_text()
    assert "!PROVENANCE" in (ROOT / "cluster" / "Dockerfile.dockerignore").read_text().split()
    docker = (ROOT / "cluster" / "Dockerfile").read_text()
    assert "PROVENANC[E] ./" in docker and "ENV MDFR_PROVENANCE_FILE=/app/PROVENANCE" in docker
    assert "make provenance" in (ROOT / "cluster" / "aws-gpu.yaml").read_text()
