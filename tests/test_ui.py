"""``mdfr ui``: the real MLflow server on loopback, opened in headless Chromium.

The browser must render the MLflow React app and show the sweep's runs and their params;
Ctrl-C (SIGINT) on ``mdfr ui`` must stop the server and every process it started.
"""

from __future__ import annotations

import html
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from mdfr.cli import main
from mdfr.config import from_dict, setup_overrides

EXPERIMENT = "mdfr-ui-test"
SWEEP = "uisweep"
SWEEP_RUN = "uisweep-1"  # the parent run is named after the sweep's folder
TRIALS = {"000-finetune-n0": ("finetune", 0.6), "001-wo_res-n0": ("wo_res", 0.4137),
          "002-proposed-n0": ("proposed", 0.8521)}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_store(root: Path) -> dict:
    """A sweep as the driver logs it: parent run, child runs with the flattened config."""
    from mdfr.tracking import Store

    uri = f"sqlite:///{root / 'mlflow.db'}"
    store = Store(uri)
    exp_id, parent = store.parent_run(EXPERIMENT, SWEEP, str(root / "ray" / SWEEP_RUN))
    ids = {}
    for key, (setup, lam) in TRIALS.items():
        cfg = from_dict({}).replace(**setup_overrides(setup), **{"loss.lambda_spa": lam})
        run_id, _ = store.child_run(exp_id, parent, key, {"mdfr.sweep": SWEEP, "mdfr.setup": setup})
        t = store.tracker(run_id)
        t.log_params(cfg.to_flat_dict())
        t.log_metrics({"val/acc": 0.5, "test/acc_restored": 0.25}, step=1)
        store.finish(run_id, "FINISHED", "ok")
        ids[key] = run_id
    store.finish(parent, "FINISHED", "ok")
    return {"uri": uri, "exp_id": exp_id, "ids": ids}


def test_ui_refuses_a_missing_store_and_a_busy_port(tmp_path, capsys):
    missing = tmp_path / "none.db"
    assert main(["ui", "--tracking-uri", f"sqlite:///{missing}", "--port", "1"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err and not missing.exists()
    info = _make_store(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["ui", "--tracking-uri", info["uri"], "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_server_command_uses_the_store_and_artifacts_beside_it(tmp_path):
    from mdfr.commands.ui import server_command

    cmd = server_command(f"sqlite:///{tmp_path}/mlflow.db", "127.0.0.1", 5123)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow.db"
    assert cmd[cmd.index("--default-artifact-root") + 1] == (tmp_path / "mlartifacts").as_uri()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"


# --------------------------------------------------------------------------- browser


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        for cmd in (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"],
                    ["apt-get", "install", "-y", "chromium"]):  # fmt: skip
            subprocess.run(cmd, capture_output=True, timeout=900, check=False)
            if found := shutil.which("chromium"):
                return found
    pytest.skip("chromium is not installed and `apt-get install -y chromium` could not install it")


def _browse(chromium: str, url: str, profile: Path, *extra: str) -> str:
    """Load ``url`` headless until the page's fetches settle; returns the DOM (or "")."""
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=30000",
        "--window-size=1400,1800", *extra, url,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    return out.stdout


def _text_lines(dom: str) -> list[str]:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    text = html.unescape(re.sub(r"<[^>]+>", "\n", dom))
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _until(fetch, ok, tries: int = 6) -> list[str]:
    lines: list[str] = []
    for i in range(tries):  # the app can be slow to render on a busy machine
        lines = _text_lines(fetch())
        if ok(lines):
            break
        time.sleep(2 * (i + 1))  # give a loaded server time to answer the app's fetches
    return lines


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out.update(kids)
            todo.extend(kids)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_mlflow_ui_shows_the_sweeps_runs_and_params(tmp_path):
    chromium = _chromium()
    info = _make_store(tmp_path)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdfr.cli", "ui", "--tracking-uri", info["uri"], "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def pump() -> None:  # keep draining: the server's access log shares this pipe
        for line in proc.stdout:
            log.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        url = None
        deadline = time.monotonic() + 180
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if m := re.match(r"MLflow UI: (http://127\.0\.0\.1:\d+)", line):
                url = m.group(1)
        assert url == f"http://127.0.0.1:{port}", "".join(log[-30:])
        assert _healthy(url)
        kids = _descendants(proc.pid)
        assert kids, "mdfr ui should run the MLflow server as a child process"

        # the experiment's runs page lists the sweep (its parent run)
        runs_url = f"{url}/#/experiments/{info['exp_id']}/runs"
        page = _until(lambda: _browse(chromium, runs_url, tmp_path / "p1", "--dump-dom"),
                      lambda ls: SWEEP_RUN in ls)  # fmt: skip
        assert EXPERIMENT in page and SWEEP_RUN in page, page

        # the compare view lists every trial run with its params, value under its run
        ids = list(info["ids"].values())
        query = urllib.parse.urlencode(
            {"runs": str(ids).replace("'", '"'), "experiments": f'["{info["exp_id"]}"]'}
        )
        cmp_url = f"{url}/#/compare-runs?{query}"
        page = _until(lambda: _browse(chromium, cmp_url, tmp_path / "p2", "--dump-dom"),
                      lambda ls: "Run Name:" in ls and "loss.lambda_spa" in ls)  # fmt: skip
        assert "Run Name:" in page, page[:80]
        names = page[page.index("Run Name:") + 1 :][: len(ids)]
        assert sorted(names) == sorted(TRIALS), names
        for param, expected in (
            ("loss.lambda_spa", {k: str(v[1]) for k, v in TRIALS.items()}),
            ("setup", {k: v[0] for k, v in TRIALS.items()}),
            ("mode", {k: "finetune" if v[0] == "finetune" else "mdfr" for k, v in TRIALS.items()}),
        ):
            rows = [page[i + 1 : i + 1 + len(names)] for i, ln in enumerate(page) if ln == param]
            assert [expected[n] for n in names] in rows, (param, rows)

        shot = tmp_path / "mlflow-ui.png"
        _browse(chromium, cmp_url, tmp_path / "p3", f"--screenshot={shot}")
        assert shot.is_file() and shot.stat().st_size > 10_000
        if os.environ.get("MDFR_UI_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["MDFR_UI_SCREENSHOT"])
    finally:
        # Ctrl-C: mdfr ui stops the server and all it started, and exits cleanly
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, "".join(log[-30:])
    assert "stopping the MLflow UI" in "".join(log)
    assert not _healthy(f"http://127.0.0.1:{port}")
    assert not [k for k in kids if _alive(k)], "server processes left running"
