"""Run a sweep file on a launcher cluster's head node.

    ray submit cluster/aws-gpu.yaml cluster/submit.py sweeps/table2.yaml
    ray submit --tmux cluster/aws-gpu.yaml cluster/submit.py sweeps/table2.yaml -- --set grid.seed=[0]

``ray submit`` uploads only this one file (to ``~/submit.py``) and runs it with ``python`` on
the head, inside the cluster's container: that is why this is a Python script and not a shell
one. Everything else it needs is already there: the project at ``~/mdfr`` (``file_mounts``,
installed by ``setup_commands``) and the cluster's settings in ``~/mdfr-secrets/cluster.env``
(also a file mount, never committed). It changes into the project, so sweep files are named
relative to the repository root as on your machine, and replaces itself with

    mdfr sweep run FILE --address $RAY_ADDRESS --storage $MDFR_STORAGE
        --tracking-uri $MLFLOW_TRACKING_URI [extra arguments]

Environment (the process's own values win over cluster.env):
    MDFR_PROJECT_DIR     the project on the head            (~/mdfr)
    MDFR_CLUSTER_ENV     the settings file                  (~/mdfr-secrets/cluster.env)
    MDFR_STORAGE         shared Tune storage, e.g. /mnt/mdfr/ray (required)
    MLFLOW_TRACKING_URI  the tracking server, e.g. https://mlflow.internal.example.org (required)
    RAY_ADDRESS          the cluster                        (auto: the one this head runs)

Only the standard library: it runs before anything is imported from the project.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

USAGE = "usage: ray submit CLUSTER.yaml cluster/submit.py SWEEP_FILE [-- MDFR_SWEEP_RUN_ARGS...]"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (optional ``export``, quotes, ``#`` comments), like ``set -a; .``."""
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"submit.py: {path}:{n}: expected KEY=VALUE, got {line!r}")
        parts = shlex.split(value, comments=True) if value else [""]
        out[key] = parts[0] if parts else ""
    return out


def build_command(argv: list[str], env: dict[str, str]) -> list[str]:
    """The ``mdfr sweep run`` command line for ``argv`` (sweep file, extra arguments)."""
    if not argv or argv[0].startswith("-"):
        raise SystemExit(USAGE)
    sweep_file, extra = argv[0], [a for a in argv[1:] if a != "--"]
    missing = [k for k in ("MDFR_STORAGE", "MLFLOW_TRACKING_URI") if not env.get(k)]
    if missing:
        raise SystemExit(
            f"submit.py: {' and '.join(missing)} not set: put them in cluster/secrets/cluster.env "
            "(see cluster/cluster.env.example) and run `ray up` again to upload it"
        )
    cmd = [sys.executable, "-m", "mdfr.cli", "sweep", "run", sweep_file]
    given = {a.split("=", 1)[0] for a in extra if a.startswith("--")}
    if "--address" not in given:
        cmd += ["--address", env.get("RAY_ADDRESS") or "auto"]
    if "--storage" not in given:
        cmd += ["--storage", env["MDFR_STORAGE"]]
    if "--tracking-uri" not in given:
        cmd += ["--tracking-uri", env["MLFLOW_TRACKING_URI"]]
    return cmd + extra


def main(argv: list[str]) -> int:
    project = Path(os.environ.get("MDFR_PROJECT_DIR", "~/mdfr")).expanduser()
    env_file = Path(os.environ.get("MDFR_CLUSTER_ENV", "~/mdfr-secrets/cluster.env")).expanduser()
    if not (project / "pyproject.toml").is_file():
        raise SystemExit(
            f"submit.py: no project at {project}: the cluster YAML must file-mount the repository "
            'there ("~/mdfr": ".") and `ray up` must have run from the repository root'
        )
    if env_file.is_file():
        for key, value in read_env_file(env_file).items():
            os.environ.setdefault(key, value)
    # The driver joins a token-authenticated cluster; the token is ~/.ray/auth_token there.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    cmd = build_command(argv, dict(os.environ))
    if not (project / "PROVENANCE").is_file() and not os.environ.get("MDFR_GIT_COMMIT"):
        # The upload leaves .git behind: without this file runs say git_commit=unknown.
        print(
            f"submit.py: warning: no {project}/PROVENANCE: runs will be tagged "
            "git_commit=unknown; run `make provenance` in your checkout, then `ray up` again",
            file=sys.stderr,
        )
    os.chdir(project)
    print(f"submit.py: in {project}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
