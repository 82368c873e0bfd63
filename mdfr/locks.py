"""One writer per folder: :class:`FolderLock`, an exclusive lock that names its holder.

Two drivers writing one sweep folder (two ``mdfr sweep resume``, or a resume while the first
driver still runs) would hand out the same trials twice and write the same trial folders. The
lock is a file, ``<folder>/.mdfr.lock``, holding who has it (host, pid, start time, command),
with an ``flock`` on it held for as long as the writer runs:

- the kernel drops the ``flock`` when its process dies, however it dies, so a lock left by a
  dead driver on this host is taken over without a word from the user;
- a lock whose file names another host is never taken over: that driver may be alive (and a
  network filesystem need not carry ``flock`` between hosts); the message says how to clear it.

Usable for any folder with one writer (the pretraining cache reuses it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mdfr.errors import MdfrError

LOCK_FILE = ".mdfr.lock"


class LockedError(MdfrError):
    """The folder has a live writer (exit 1: wait for it, or stop it)."""


def _holder_text(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {when}"
        f" ({holder.get('command', '?')})"
    )


def _read_holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 1 << 16)
    try:
        data = json.loads(raw.decode() or "{}")
    except (UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class FolderLock:
    """An exclusive, named lock on ``folder`` (see the module docstring).

    Args:
        folder: the folder one process at a time may write.
        what: how messages name the folder (``sweep folder``, ``pretraining cache entry``).
        command: what the holder is doing, recorded for others to read.

    Use as a context manager, or :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, folder: str | Path, what: str = "folder", command: str | None = None):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self.command = command or " ".join(["mdfr", *sys.argv[1:]]) or "mdfr"
        self._fd: int | None = None

    def acquire(self, timeout_s: float = 0.0, poll_s: float = 0.5) -> FolderLock:
        """Take the lock, waiting up to ``timeout_s`` for a live holder to finish.

        Raises:
            LockedError: a live writer holds it (named in the message), or a writer on another
                host may.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._try_acquire()
                return self
            except LockedError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(poll_s)

    def _try_acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise LockedError(self._busy(_read_holder(fd))) from None
            if not self._same_file(fd):
                # Released (and removed) by its holder between our open and our flock.
                raise LockedError(f"{self.what} {self.folder}: the lock changed hands; retry")
            holder = _read_holder(fd)
            if holder and holder.get("host") != socket.gethostname():
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise LockedError(self._remote(holder))
            self._write_holder(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _write_holder(self, fd: int) -> None:
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "command": self.command,
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)

    def _busy(self, holder: dict[str, Any]) -> str:
        return (
            f"{self.what} {self.folder} is in use by {_holder_text(holder)}; wait for it to "
            "finish or stop it, then retry"
        )

    def _remote(self, holder: dict[str, Any]) -> str:
        return (
            f"{self.what} {self.folder} is locked by {_holder_text(holder)}, another host, which "
            f"this machine cannot check; if that process is gone, delete {self.path} and retry"
        )

    def release(self) -> None:
        """Give the lock up (removing the file first, so no waiter locks a stale inode)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def folder_lock(
    folder: str | Path, what: str = "folder", timeout_s: float = 0.0
) -> Iterator[FolderLock]:
    """``with folder_lock(path, "sweep folder"):`` -- :class:`FolderLock` with a wait."""
    lock = FolderLock(folder, what).acquire(timeout_s)
    try:
        yield lock
    finally:
        lock.release()
