"""``mdfr ui``: the real MLflow server on loopback, opened in headless Chromium.

The browser must render the MLflow React app in its model-training view (the link ``mdfr ui``
prints) and show: the sweep's runs with their Dataset and Source columns, the compare page
with every trial's params, the parent run's report artifact and trial table, and the
champion trial's page with its dataset and its logged model. Ctrl-C (SIGINT) on ``mdfr ui``
must stop the server and every process it started.
"""

from __future__ import annotations

import html
import json
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


SOURCE = "/srv/mdfr/sweeps/uisweep.yaml"


def _make_store(root: Path, dataset: Path | None = None) -> dict:
    """A sweep as the driver logs it: parent run, child runs with the flattened config, the
    sweep's source tags and, given a prepared dataset, that dataset as every run's input."""
    from mdfr.data.loader import load_manifest
    from mdfr.tracking import Store, source_tags

    uri = f"sqlite:///{root / 'mlflow.db'}"
    store = Store(uri)
    source = source_tags(SOURCE)
    exp_id, parent = store.parent_run(EXPERIMENT, SWEEP, str(root / "ray" / SWEEP_RUN), source)
    runs = [store.tracker(parent)]
    ids = {}
    for key, (setup, lam) in TRIALS.items():
        over = {**setup_overrides(setup), "loss.lambda_spa": lam, "data.dataset": str(dataset)}
        cfg = from_dict({"model": {"backbone": "test_remnet"}}).replace(**over)
        tags = {"mdfr.sweep": SWEEP, "mdfr.setup": setup, "mdfr.seed": "0", "mdfr.mode": cfg.mode,
                "mdfr.backbone": "test_remnet", "mdfr.codec": "jpeg:50", **source}  # fmt: skip
        run_id, _ = store.child_run(exp_id, parent, key, tags)
        t = store.tracker(run_id)
        t.log_params(cfg.to_flat_dict())
        t.log_metrics({"val/acc": lam, "val/acc_restored": lam, "test/acc_restored": 0.25,
                       "epoch": 1}, step=1)  # fmt: skip
        t.set_tags({"mdfr.output_dir": str(root / "trials" / key)})
        runs.append(t)
        store.finish(run_id, "FINISHED", "ok")
        ids[key] = run_id
    if dataset is not None:
        for t in runs:
            t.log_dataset(str(dataset), load_manifest(dataset))
    store.finish(parent, "FINISHED", "ok")
    return {"uri": uri, "exp_id": exp_id, "ids": ids, "parent": parent, "dataset": dataset}


def _finish_sweep(info: dict, root: Path, trained_trials: dict) -> dict:
    """What a finished sweep and ``mdfr report`` add: the champion (the trained mdfr trial,
    standing in for the best 'proposed' trial) logged and registered, the trial table and the
    report on the parent run."""
    import shutil

    from mdfr.sweep import results
    from mdfr.sweep.spec import load_sweep
    from mdfr.sweep.state import SweepState

    champion = info["ids"]["002-proposed-n0"]
    shutil.copytree(trained_trials["mdfr"], root / "trials" / "002-proposed-n0")
    plan = load_sweep(Path(__file__).parents[1] / "sweeps" / "smoke.yaml",
                      [f"experiment={EXPERIMENT}"])  # fmt: skip
    state = SweepState(phase="tune", plan=plan, root=str(root), exp_dir=str(root),
                       storage=str(root), tracking_uri=info["uri"],
                       experiment_id=info["exp_id"], parent_run_id=info["parent"])  # fmt: skip
    champ = results.finish(state, log=lambda _: None)
    assert champ and champ["run_id"] == champion, champ
    argv = ["report", "table2", "--experiment", EXPERIMENT, "--tracking-uri", info["uri"]]
    assert main([*argv, "--out", str(root / "report")]) == 0
    return {**info, "champion": champion, "report": root / "report"}


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


def _wait_for(lines: queue.Queue, log: list[str], pattern: str, proc, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if m := re.search(pattern, line):
            return m
    raise AssertionError(f"no line matching {pattern!r}:\n" + "".join(log[-30:]))


@pytest.mark.slow
def test_mlflow_ui_shows_the_sweep_its_report_table_datasets_and_models(
    tmp_path, tiny_dataset, trained_trials
):
    chromium = _chromium()
    info = _finish_sweep(_make_store(tmp_path, tiny_dataset), tmp_path, trained_trials)
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
        url = _wait_for(lines, log, r"MLflow UI: (http://127\.0\.0\.1:\d+)", proc).group(1)
        assert url == f"http://127.0.0.1:{port}", "".join(log[-30:])
        assert _healthy(url)
        kids = _descendants(proc.pid)
        assert kids, "mdfr ui should run the MLflow server as a child process"
        # the link mdfr ui prints opens the experiment's runs in the model-training view
        link = _wait_for(lines, log, rf"  {EXPERIMENT}: (http\S+)", proc).group(1)
        ml = "workflowType=machine_learning"
        assert link == f"{url}/#/experiments/{info['exp_id']}/runs?{ml}"
        _check_pages(chromium, url, info, link, tmp_path)
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


def _check_pages(chromium: str, url: str, info: dict, link: str, tmp: Path) -> None:
    ml = "workflowType=machine_learning"
    exp, parent, champion = info["exp_id"], info["parent"], info["champion"]
    digest = json.loads((Path(info["dataset"]) / "manifest.json").read_text())["dataset_hash"]
    ds = Path(info["dataset"]).name

    # the runs view (not GenAI's traces): the sweep's parent run with Dataset and Source
    page = _until(lambda: _browse(chromium, link, tmp / "p1", "--dump-dom"),
                  lambda ls: SWEEP_RUN in ls)  # fmt: skip
    assert EXPERIMENT in page and SWEEP_RUN in page, page
    assert page[0].startswith("Runs - ") and "Sessions" not in page, page[:40]
    assert {"Dataset", "Source", "Models"} <= set(page), page
    row = page[page.index(SWEEP_RUN) :]
    assert f"{ds}/train ({digest})" in row[:12] and "uisweep.yaml" in row[:16], row[:16]

    # why the link carries workflowType: without it MLflow 3.17 lands in its GenAI overview
    plain = _text_lines(_browse(chromium, f"{url}/#/experiments/{exp}", tmp / "p0", "--dump-dom"))
    assert plain[:1] == [f"Overview - Experiment {exp} - MLflow"] or not plain, plain[:5]

    # the compare view lists every trial run with its params, value under its run
    ids = list(info["ids"].values())
    query = urllib.parse.urlencode(
        {"runs": str(ids).replace("'", '"'), "experiments": f'["{exp}"]'}
    )
    cmp_url = f"{url}/#/compare-runs?{query}&{ml}"
    page = _until(lambda: _browse(chromium, cmp_url, tmp / "p2", "--dump-dom"),
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

    # the parent run: its report (served as the file mdfr report wrote) and its trial table
    arts = f"{url}/#/experiments/{exp}/runs/{parent}/artifacts"
    page = _until(lambda: _browse(chromium, f"{arts}/report/report.html?{ml}", tmp / "p3",
                                  "--dump-dom"), lambda ls: "report/report.html" in ls)  # fmt: skip
    assert {"report", "trials_table.json", "report/report.html"} <= set(page), page
    served = urllib.request.urlopen(  # noqa: S310 - loopback
        f"{url}/get-artifact?path=report/report.html&run_uuid={parent}", timeout=30
    ).read()
    assert served == (Path(info["report"]) / "report.html").read_bytes()
    page = _until(lambda: _browse(chromium, f"{arts}/trials_table.json?{ml}", tmp / "p4",
                                  "--dump-dom"), lambda ls: "View as table" in ls)  # fmt: skip
    assert "View as table" in page and "trial_key" in page, page
    assert set(TRIALS) <= set(page), page

    # the champion's page: its dataset (name, digest, context) and its logged model
    run_url = f"{url}/#/experiments/{exp}/runs/{champion}?{ml}"
    page = _until(lambda: _browse(chromium, run_url, tmp / "p5", "--dump-dom"),
                  lambda ls: "Logged models (1)" in ls)  # fmt: skip
    assert "Logged models (1)" in page and "Ready" in page, page
    models = page[page.index("Logged models (1)") :]
    assert "002-proposed-n0" in models[:20], models[:20]
    assert f"{ds}/train ({digest})" in page and "train" in page, page
    assert "uisweep.yaml" in page, page

    shot = tmp / "mlflow-ui.png"
    _browse(chromium, run_url, tmp / "p6", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000
    if os.environ.get("MDFR_UI_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["MDFR_UI_SCREENSHOT"])
