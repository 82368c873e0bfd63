"""One writer per folder: a second driver is refused with the holder named; a lock left by a
dead process on this host is taken over; one from another host is not (it may be alive)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from mdfr.cli import main
from mdfr.locks import LOCK_FILE, FolderLock, LockedError, folder_lock

HOLD = textwrap.dedent(
    """
    import sys, time
    from mdfr.locks import FolderLock
    lock = FolderLock(sys.argv[1], "sweep folder", command="mdfr sweep resume demo").acquire()
    print("held", flush=True)
    if sys.argv[2] == "die":
        import os
        os._exit(0)  # no release: the lock file stays behind, as after a kill -9
    time.sleep(120)
    """
)


def _holder(folder, mode="sleep"):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), mode], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(LockedError) as e:
            FolderLock(tmp_path, "sweep folder").acquire()
        msg = str(e.value)
        assert f"sweep folder {tmp_path} is in use by pid {proc.pid}" in msg
        assert f"on host {socket.gethostname()} since {time.strftime('%Y-%m-%d')}" in msg
        assert "(mdfr sweep resume demo)" in msg
    finally:
        proc.kill()
        proc.wait()
    # the holder is gone (killed): the lock is free again
    with FolderLock(tmp_path, "sweep folder") as lock:
        assert lock.held
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    proc = _holder(tmp_path, "die")
    proc.wait()
    left = json.loads((tmp_path / LOCK_FILE).read_text())
    assert left["pid"] == proc.pid  # stale: its process is gone
    with FolderLock(tmp_path) as lock:
        assert lock.held
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_same_process_cannot_take_it_twice(tmp_path):
    with FolderLock(tmp_path), pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        FolderLock(tmp_path).acquire()


def test_lock_from_another_host_is_not_taken_over(tmp_path):
    holder = {"host": "gpu-node-7", "pid": 4242, "started": time.time(), "command": "mdfr x"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(holder))
    with pytest.raises(LockedError) as e:
        FolderLock(tmp_path, "sweep folder").acquire()
    assert "pid 4242 on host gpu-node-7" in str(e.value)
    assert f"delete {tmp_path / LOCK_FILE}" in str(e.value)


def test_waiting_for_the_holder(tmp_path):
    proc = _holder(tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(LockedError):
            FolderLock(tmp_path).acquire(timeout_s=1.0, poll_s=0.2)
        assert time.monotonic() - t0 >= 1.0
    finally:
        proc.kill()
        proc.wait()
    with folder_lock(tmp_path, "cache entry", timeout_s=5) as lock:
        assert lock.held


def test_resume_of_a_sweep_another_driver_runs_exits_1_naming_it(tmp_path, capsys):
    from mdfr.sweep.spec import build_plan
    from mdfr.sweep.state import STATE_FILE

    folder = tmp_path / "demo-20260101-000000"
    folder.mkdir()
    plan = build_plan({"name": "demo"})
    (folder / STATE_FILE).write_text(json.dumps({"plan": plan.to_dict(), "phase": "tune"}))
    proc = _holder(folder)
    try:
        assert main(["sweep", "resume", str(folder)]) == 1
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err
    assert f"sweep folder {folder} is in use by pid {proc.pid}" in err
    assert "Traceback" not in err
