"""Sweeps end to end: real Ray (one loopback cluster for the module), real Optuna, real MLflow
(SQLite) and the real engine on the shared tiny dataset.

Two sweeps share one storage folder, so the second also shows the pretraining cache at work:

1. ``sweeps/smoke.yaml`` in-process, with a fault injected into one trial (test-only
   ``MDFR_TEST_FAULT``): every trial finishes, exactly one child run each, the faulted trial
   resumed from its epoch-1 checkpoint.
2. the same file run by a real ``mdfr sweep run`` process that is SIGKILLed mid-sweep, then
   ``mdfr sweep resume``: every trial finishes, still exactly one child run each, and trials
   that had finished before the kill were not run again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdfr.names import EPOCH_METRICS
from mdfr.sweep.spec import load_sweep

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "sweeps" / "smoke.yaml"
SETUPS = "[finetune, wo_res, proposed]"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    """A 2-CPU Ray head on loopback for the whole module, stopped by its own process group."""
    import ray

    from mdfr.sweep.session import use_loopback, use_token_auth

    use_loopback()  # this process connects to 127.0.0.1 like the head binds it

    port = _free_port()
    log = tmp_path_factory.mktemp("raylog") / "head.log"
    # Loopback only: a one-node cluster whose services bind 127.0.0.1 (see ray_session).
    env = {
        **os.environ,
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # a test cluster: stop at once
    }
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    with log.open("w") as out:
        head = subprocess.Popen(
            [
                ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    address = f"127.0.0.1:{port}"
    use_token_auth()  # the head (Ray 2.60) requires the token in ~/.ray/auth_token
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ray.init(address=address, logging_level="WARNING", log_to_driver=False)
                break
            except (ConnectionError, RuntimeError, ray.exceptions.RpcError):
                if time.monotonic() > deadline or head.poll() is not None:
                    raise RuntimeError(f"Ray head did not start:\n{log.read_text()}") from None
                time.sleep(2)
        yield address
    finally:
        ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=45)  # Ray drains for up to 30 s on SIGTERM
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("sweeps")


def _overrides(dataset: Path, work: Path, *extra: str) -> list[str]:
    return [
        "prepare=null",
        f"base.data.dataset={dataset}",
        f"grid.setup={SETUPS}",
        f"storage={work / 'ray'}",
        f"tracking_uri=sqlite:///{work / 'mlflow.db'}",
        "max_concurrent=1",
        *extra,
    ]


@pytest.fixture(scope="module")
def smoke_run(ray_address, tiny_dataset, work):
    from mdfr.sweep.driver import run_sweep

    plan = load_sweep(SMOKE, _overrides(tiny_dataset, work))
    os.environ["MDFR_TEST_FAULT"] = "*-finetune-*@1"
    try:
        t0 = time.monotonic()
        out = run_sweep(plan, address=ray_address, verbose=0)
        seconds = time.monotonic() - t0
    finally:
        del os.environ["MDFR_TEST_FAULT"]
    print(f"smoke sweep ({plan.num_trials} trials): {seconds:.1f} s")
    return plan, out


def _runs(out, kind="trial"):
    from mdfr.tracking import fetch_sweep_runs

    return fetch_sweep_runs(
        out.experiment, out.tracking_uri, parent_run_id=out.parent_run_id, kind=kind,
        histories=True,
    )  # fmt: skip


def test_smoke_sweep_has_a_parent_and_one_child_run_per_trial(smoke_run):
    plan, out = smoke_run
    assert len(out.trials) == plan.num_trials == 3
    assert all(t.status in ("ok", "pruned") for t in out.trials), out.trials
    runs = _runs(out)
    assert sorted(r["run_name"] for r in runs) == sorted(plan.trial_keys())
    for r in runs:
        assert r["status"] == "FINISHED" and r["tags"]["mdfr.status"] in ("ok", "pruned")
        assert r["params"]["train.epochs"] == "2" and r["params"]["model.backbone"] == "test_remnet"
        for tag in ("mdfr.setup", "mdfr.backbone", "mdfr.seed", "mdfr.git_commit",
                    "mdfr.dataset_hash", "mdfr.codec"):  # fmt: skip
            assert r["tags"].get(tag), (tag, r["tags"])
        assert r["tags"]["mdfr.codec"] == "jpeg:50"
        assert [s for s, _ in r["histories"]["val/acc_restored"]][:1] == [1]
        if r["tags"]["mdfr.status"] == "ok":
            assert "test/acc_restored" in r["metrics"]
    # what the engine reports and what the sweep file may name as metrics stay in sync
    reported = set().union(*(r["metrics"] for r in runs))
    assert set(EPOCH_METRICS) - {"train/loss"} <= reported
    pretrain = _runs(out, kind="pretrain")
    assert len(pretrain) == 1 and pretrain[0]["status"] == "FINISHED"
    from mdfr.provenance import current
    from mdfr.tracking import Store

    parent = Store(out.tracking_uri).client.get_run(out.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["mdfr.kind"] == "sweep"
    # provenance recorded by the driver reaches the parent, every trial and every stage
    prov = current().tags()
    for tags in [parent.data.tags] + [r["tags"] for r in runs + pretrain]:
        for key in ("mlflow.source.git.commit", "mdfr.git_dirty", "mdfr.source_digest"):
            assert tags.get(key) == prov[key], (key, tags)


def test_every_run_has_its_dataset_input_and_source_tags(smoke_run):
    from mdfr.tracking import Store

    _, out = smoke_run
    client = Store(out.tracking_uri).client
    ids = [r["run_id"] for r in _runs(out) + _runs(out, kind="pretrain")] + [out.parent_run_id]
    assert len(ids) == 5
    digest = _runs(out)[0]["tags"]["mdfr.dataset_hash"]
    for run_id in ids:
        tags = client.get_run(run_id).data.tags
        assert tags["mlflow.source.name"] == str(SMOKE) and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.git.commit"] == tags["mdfr.git_commit"] and tags["mlflow.user"]
        inputs = client.get_run(run_id).inputs.dataset_inputs
        contexts = {t.value for i in inputs for t in i.tags if t.key == "mlflow.data.context"}
        assert contexts == {"train", "eval"}, tags["mlflow.runName"]
        assert {i.dataset.digest for i in inputs} == {digest}


def test_champion_is_registered_and_the_parent_holds_the_trial_table(smoke_run):
    from mdfr.tracking import Store
    from mdfr.tracking.store import process_uri

    plan, out = smoke_run
    client = Store(out.tracking_uri).client
    runs = {r["run_id"]: r for r in _runs(out)}
    parent = client.get_run(out.parent_run_id)
    with process_uri(out.tracking_uri):
        table = client.load_table(
            parent.info.experiment_id, "trials_table.json", run_ids=[out.parent_run_id]
        )
    assert sorted(table["trial_key"]) == sorted(plan.trial_keys())
    assert dict(zip(table["trial_key"], table["status"], strict=True)) == {
        r["tags"]["mdfr.trial_key"]: r["tags"]["mdfr.status"] for r in runs.values()
    }
    finished = [r for r in runs.values() if r["tags"]["mdfr.status"] == "ok"]
    if not any(r["tags"]["mdfr.mode"] == "mdfr" for r in finished):
        # ASHA stopped every MDFRNet trial of this tiny sweep: nothing to crown
        assert out.champion is None and not parent.outputs.model_outputs
        return
    champ = out.champion
    assert champ and champ["metric"] == "val/acc_restored"  # the sweep's validation metric
    best = runs[champ["run_id"]]
    assert best["tags"]["mdfr.status"] == "ok" and best["tags"]["mdfr.champion"] == "true"
    version = client.get_model_version_by_alias(plan.experiment, "champion")
    (model_out,) = client.get_run(champ["run_id"]).outputs.model_outputs
    assert version.source == f"models:/{model_out.model_id}"
    assert "val/acc_restored" in version.description and "test split" in version.description
    # log_models: best: the champion's is the only model logged
    assert [r for r in runs.values() if r["run_id"] != champ["run_id"] and
            client.get_run(r["run_id"]).outputs.model_outputs] == []  # fmt: skip
    assert [o.model_id for o in parent.outputs.model_outputs] == [model_out.model_id]


def test_trial_crashing_once_is_retried_from_its_checkpoint(smoke_run):
    _, out = smoke_run
    (run,) = [r for r in _runs(out) if "-finetune-" in r["run_name"]]
    assert run["tags"]["mdfr.attempts"] == "2"
    assert run["tags"]["mdfr.resumed_from_epoch"] == "1"  # not from scratch
    assert run["tags"]["mdfr.status"] == "ok" and "test/acc_restored" in run["metrics"]
    assert [s for s, _ in run["histories"]["val/acc"]] == [1, 2]
    others = [r for r in _runs(out) if "-finetune-" not in r["run_name"]]
    assert all(r["tags"]["mdfr.attempts"] == "1" for r in others)


def test_tune_gets_only_the_final_checkpoint_and_the_trial_folder_the_latest(smoke_run):
    # checkpoint.tune_every: 0 (the default): epochs report to Tune without a copy of the
    # state, so a finished trial's first and only Tune checkpoint is its final one; the trial
    # folder names its latest state (what every retry resumes from).
    _, out = smoke_run
    for t in out.trials:
        if t.status != "ok":
            continue
        assert sorted(p.name for p in Path(t.path).glob("checkpoint_*")) == ["checkpoint_000000"]
        (folder,) = (out.exp_dir / "trials").glob(f"{t.trial_key}")
        latest = json.loads((folder / "mdfr_checkpoint.json").read_text())
        assert latest == {"dir": str(folder / "checkpoint"), "epoch": 2}


def test_tune_keeps_only_its_json_logger_and_only_while_the_sweep_runs(smoke_run):
    _, out = smoke_run
    for t in out.trials:
        names = {p.name for p in Path(t.path).iterdir()}
        assert "result.json" in names and "progress.csv" not in names, names
        assert not [n for n in names if n.startswith("events.out.tfevents")], names
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ  # a bare Tuner after is bare


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_killed_driver_then_resume_finishes_every_trial_once(
    smoke_run, ray_address, tiny_dataset, work, sig
):
    from mdfr.sweep.driver import resume_sweep

    extra = ("scheduler=null", "base.train.epochs=3", "log_models=all")
    plan = load_sweep(SMOKE, _overrides(tiny_dataset, work, *extra))
    cmd = [sys.executable, "-m", "mdfr.cli", "sweep", "run", str(SMOKE), "--address", ray_address,
           "--quiet"]  # fmt: skip
    for item in _overrides(tiny_dataset, work, *extra):
        cmd += ["--set", item]
    before = set((work / "ray").glob("smoke-*"))
    env = {k: v for k, v in os.environ.items() if k != "MDFR_TEST_FAULT"}
    driver = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        done_before: list[Path] = []
        while time.monotonic() < deadline and driver.poll() is None:
            new = set((work / "ray").glob("smoke-*")) - before
            done_before = sorted(p for d in new for p in d.glob("trials/*/mdfr_result.json"))
            if done_before:
                break
            time.sleep(0.5)
        assert done_before and driver.poll() is None, driver.communicate()[0][-3000:]
        driver.send_signal(sig)
        if sig == signal.SIGINT:  # Tune stops and returns; the driver must not say "done"
            output = driver.communicate(timeout=120)[0]
            assert driver.returncode == 130, output[-3000:]
            assert "sweep stopped:" in output and "mdfr sweep resume" in output, output[-3000:]
            assert "sweep done" not in output
    finally:
        driver.kill()
        driver.wait()
    (exp_dir,) = set((work / "ray").glob("smoke-*")) - before
    finished = {
        p.parent.name: p.stat().st_mtime_ns for p in exp_dir.glob("trials/*/mdfr_result.json")
    }
    assert 0 < len(finished) < plan.num_trials  # killed mid-sweep

    if sig == signal.SIGINT:  # the parent run says the sweep did not finish
        from mdfr.sweep.state import SweepState
        from mdfr.tracking import Store

        state = SweepState.read(exp_dir)
        parent = Store(state.tracking_uri).client.get_run(state.parent_run_id)
        assert parent.info.status == "KILLED"
        # a stopped sweep crowns no champion: its best trial so far is not the sweep's best
        assert "mdfr.champion_run" not in parent.data.tags
        assert not parent.outputs.model_outputs
    out = resume_sweep(str(exp_dir), address=ray_address, verbose=0)
    assert sorted(t.trial_key for t in out.trials) == sorted(plan.trial_keys())
    assert all(t.status == "ok" for t in out.trials), out.trials
    runs = _runs(out)
    assert sorted(r["run_name"] for r in runs) == sorted(plan.trial_keys())  # exactly one each
    for r in runs:
        assert r["status"] == "FINISHED" and r["tags"]["mdfr.status"] == "ok"
        assert {s for s, _ in r["histories"]["val/acc"]} == {1, 2, 3}
        if r["run_name"] in finished:  # finished before the kill: not run again
            assert r["tags"]["mdfr.attempts"] == "1"
            result = exp_dir / "trials" / r["run_name"] / "mdfr_result.json"
            assert result.stat().st_mtime_ns == finished[r["run_name"]]
    # the second sweep reused the first one's pretrained network
    (pre,) = _runs(out, kind="pretrain")
    assert pre["tags"].get("mdfr.cached") == "true"
    cache = work / "ray" / "cache" / "pretrain"
    # one published entry; stages train in cache/.work/ and move out when done (issue 13)
    assert len([e for e in cache.iterdir() if not e.name.startswith(".")]) == 1
    assert not list((cache / ".work").iterdir())
    # log_models: all: one model per trial, none twice across the kill, and the champion
    # registered is the model its trial logged (the alias moved from the first sweep's)
    from mdfr.tracking import Store

    client = Store(out.tracking_uri).client
    outputs = {r["run_id"]: client.get_run(r["run_id"]).outputs.model_outputs for r in runs}
    assert all(len(o) == 1 for o in outputs.values()), outputs
    version = client.get_model_version_by_alias(plan.experiment, "champion")
    assert version.source == f"models:/{outputs[out.champion['run_id']][0].model_id}"
    versions = client.search_model_versions(f"name = '{plan.experiment}'")
    assert out.parent_run_id in version.description
    assert int(version.version) == max(int(v.version) for v in versions)
    assert out.champion["model_uri"] == f"models:/{plan.experiment}@champion"
