"""``cluster/local.sh`` keeps its folder and token private (issue 13): no fixed /tmp path, and
nothing another local user could have planted is trusted. Every case fails before Ray starts."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCAL_SH = ROOT / "cluster" / "local.sh"
RAY = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local_sh(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MDFR_RAY", "RAY_AUTH"))}
    base.update(MDFR_RAY_BIN=str(RAY), MDFR_RAY_PORT=str(_free_port()))
    base.update(MDFR_RAY_DASHBOARD_PORT=str(_free_port()), **env)
    return subprocess.run(
        ["bash", str(LOCAL_SH), *args], env=base, capture_output=True, text=True, timeout=60
    )


def test_default_folder_is_private_and_per_user(tmp_path):
    xdg = tmp_path / "run"
    xdg.mkdir(mode=0o700)
    out = _local_sh("status", XDG_RUNTIME_DIR=str(xdg), HOME=str(tmp_path / "home"))
    assert out.returncode == 1 and f"no cluster running under {xdg}/mdfr-ray" in out.stdout
    assert stat.S_IMODE((xdg / "mdfr-ray").stat().st_mode) == 0o700
    home = tmp_path / "home2"
    out = _local_sh("status", XDG_RUNTIME_DIR="", HOME=str(home))
    assert f"{home}/.cache/mdfr-ray" in out.stdout and "/tmp/mdfr-ray" not in out.stdout
    assert stat.S_IMODE((home / ".cache" / "mdfr-ray").stat().st_mode) == 0o700


def test_a_folder_others_control_is_refused(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path)
    out = _local_sh("stop", MDFR_RAY_TMP=str(tmp_path / "link"))
    assert out.returncode == 1 and "is a symlink" in out.stderr
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp itself
    out = _local_sh("start", "1", MDFR_RAY_TMP=str(shared))
    assert out.returncode == 1 and "writable by other users (mode 1777)" in out.stderr
    assert not list(shared.iterdir())  # nothing started, nothing written


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_folder_of_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    out = _local_sh("status", MDFR_RAY_TMP=str(theirs))
    assert out.returncode == 1 and "belongs to uid 65534" in out.stderr


@pytest.mark.parametrize("plant", ["readable", "symlink"])
def test_a_planted_token_is_never_used(tmp_path, plant):
    folder = tmp_path / "ray"
    folder.mkdir(mode=0o700)
    token = folder / "auth_token"
    if plant == "readable":
        token.write_text("chosen-by-someone-else")
        token.chmod(0o644)
        expect = "readable by other users (mode 644)"
    else:
        (tmp_path / "elsewhere").write_text("chosen-by-someone-else")
        token.symlink_to(tmp_path / "elsewhere")
        expect = "is a symlink"
    out = _local_sh("start", "1", MDFR_RAY_TMP=str(folder))
    assert out.returncode == 1 and f"token file {token}" in out.stderr and expect in out.stderr
    assert not (folder / "head.pid").exists()
