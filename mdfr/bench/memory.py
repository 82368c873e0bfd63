"""Peak memory of a command over all its processes (``mdfr bench memory``): ``make demo``'s.

A sweep's memory is spread over many processes: the driver, Ray's GCS, raylet, dashboard and
log monitor, and one worker per trial, each with its own copy of torch. The command is started
in its own process; every ``--every`` seconds the tree below it is walked (a process once seen
is kept even when its parent exits and it is re-parented, as Ray's workers are at shutdown) and
three sums are taken:

- **PSS** (proportional set size, from ``/proc/PID/smaps_rollup``): each shared page counted
  once over the processes sharing it. The figure the goal is about: what the demo costs.
- **RSS**: what ``top`` adds up; counts torch's shared libraries once per worker, so higher.
- **system used above idle**: ``MemTotal - MemAvailable`` against its value just before the
  start. Sees everything, including other jobs on a shared machine: an upper bound there.

Default command: ``python -m mdfr.demo`` (what ``make demo`` runs) in the current directory.
``--quick`` measures a small stand-in (a process that starts a child, each holding 64 MiB) so
that the test checks that memory held by a grandchild is counted.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from mdfr.bench.machine import envelope, load_average

DEMO = (sys.executable, "-m", "mdfr.demo")
GOAL_MB = 8 * 1024  # issue 16: make demo's peak stays under 8 GB as the demo grows
# --quick: a parent holding 64 MiB that starts a child holding 64 MiB; both wait a while.
_HOLD = "b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep({s})"
QUICK = (
    sys.executable,
    "-c",
    "import subprocess, sys; "
    f"c = subprocess.Popen([sys.executable, '-c', {_HOLD.format(s=2.0)!r}]); "
    f"{_HOLD.format(s=2.5)}; c.wait()",
)


def run_memory_bench(
    command: str | Sequence[str] | None = None,
    quick: bool = False,
    every_s: float = 0.5,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``command`` (default: the demo) and return its peak memory over all its processes."""
    if isinstance(command, str):
        command = shlex.split(command)
    argv = list(command or (QUICK if quick else DEMO))
    shown = "the quick stand-in" if argv == list(QUICK) else " ".join(argv)
    doc = envelope("memory", "cpu", {"command": shown, "every_s": every_s, "cwd_is_checkout":
                   Path("Makefile").is_file(), "quick": quick})  # fmt: skip
    idle_mb = _system_used_mb()
    log(f"memory: running {shown}")
    t0 = time.time()
    proc = subprocess.Popen(argv)
    sampler = _Sampler(proc.pid, every_s)
    sampler.start()
    code = proc.wait()
    sampler.stop()
    peak = sampler.peak
    doc["results"] = {
        "exit_code": code,
        "wall_s": round(time.time() - t0, 1),
        "samples": sampler.samples,
        "peak_pss_mb": round(peak["pss_mb"]),
        "peak_rss_sum_mb": round(sampler.peak_rss_mb),
        "peak_processes": sampler.peak_procs,
        "peak_at_s": peak.get("at_s"),
        "largest_at_peak": peak.get("largest", []),
        "system_idle_used_mb": round(idle_mb),
        "system_peak_above_idle_mb": round(sampler.peak_system_mb - idle_mb),
    }
    doc["targets"] = {"peak_pss_mb_max": GOAL_MB, "met": peak["pss_mb"] <= GOAL_MB}
    doc["machine"]["load_average_end"] = load_average()
    r = doc["results"]
    log(f"memory: exit {code} after {r['wall_s']} s: peak {r['peak_pss_mb']} MB PSS "
        f"({r['peak_rss_sum_mb']} MB RSS summed, {r['peak_processes']} processes at most), "
        f"system {r['system_peak_above_idle_mb']} MB above idle")  # fmt: skip
    return doc


class _Sampler:
    """Samples the process tree below ``pid`` on a thread; keeps the peaks."""

    def __init__(self, pid: int, every_s: float):
        self.root = pid
        self.every_s = every_s
        self.known: dict[int, psutil.Process] = {}
        self.peak: dict[str, Any] = {"pss_mb": 0.0}
        self.peak_rss_mb = 0.0
        self.peak_procs = 0
        self.peak_system_mb = 0.0
        self.samples = 0
        self.t0 = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.root)
            for p in [root, *root.children(recursive=True)]:
                self.known.setdefault(p.pid, p)
        except psutil.Error:
            pass
        for p in list(self.known.values()):  # re-parented ones too: their children count
            try:
                for c in p.children(recursive=True):
                    self.known.setdefault(c.pid, c)
            except psutil.Error:
                self.known.pop(p.pid, None)
        return [p for p in self.known.values() if p.is_running()]

    def sample(self) -> None:
        rows = []
        for p in self._tree():
            pss, rss = _pss_rss_mb(p.pid)
            if rss:
                rows.append((pss, rss, p))
        self.samples += 1
        self.peak_system_mb = max(self.peak_system_mb, _system_used_mb())
        pss_sum = sum(r[0] for r in rows)
        self.peak_rss_mb = max(self.peak_rss_mb, sum(r[1] for r in rows))
        self.peak_procs = max(self.peak_procs, len(rows))
        if pss_sum > self.peak["pss_mb"]:
            largest = sorted(rows, key=lambda r: -r[0])[:8]
            self.peak = {
                "pss_mb": pss_sum,
                "at_s": round(time.time() - self.t0, 1),
                "largest": [{"name": _name(p), "pss_mb": round(pss)} for pss, _, p in largest],
            }


def _pss_rss_mb(pid: int) -> tuple[float, float]:
    """PSS and RSS of one process in MiB from smaps_rollup (0, 0 when it is gone)."""
    pss = rss = 0.0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
            elif line.startswith("Rss:"):
                rss = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    return pss, rss


def _name(p: psutil.Process) -> str:
    """A process's title without paths: ``ray::ImplicitFunc.train``, ``raylet``, ``python``."""
    try:
        cmd = p.cmdline()
        name = p.name()
    except psutil.Error:
        return "?"
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    if len(cmd) > 2 and cmd[1] == "-m":
        return f"{os.path.basename(cmd[0])} -m {cmd[2]}"
    return name


def _system_used_mb() -> float:
    vm = psutil.virtual_memory()
    return (vm.total - vm.available) / 2**20
