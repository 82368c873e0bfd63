"""A real sweep over the attack (local Ray, MLflow in SQLite, the real engine and codec training):
three attacks (JPEG and two ``train:`` codecs of one family) x two setups on the shared tiny
synthetic images. One pretraining serves every attack, each codec is trained once and cached,
each attack gets its own dataset, and ``mdfr report attack`` reads the sweep back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_codec_specs import TINY

from mdfr.cli import main
from mdfr.names import ATTACK_BPP, ATTACK_PSNR, Tag
from mdfr.sweep.spec import build_plan

pytestmark = pytest.mark.slow

ATTACKS = ["jpeg:30", "train:lmbda=0.01", "train:lmbda=0.1"]
# A codec family that trains in seconds: nothing here measures its quality.
CODEC_TRAIN = {**TINY, "steps": 4}


def _raw(synth_images: Path, work: Path) -> dict:
    return {
        "name": "attack-e2e",
        "experiment": "mdfr-attack-e2e",
        "prepare": {
            "images": str(synth_images),
            "out": str(work / "data"),
            "options": {"images_per_model": 6, "patches_per_image": 4, "seed": 0, "device": "cpu"},
            "codec_train": CODEC_TRAIN,
        },
        "base": {
            "data": {"batch_size": 8, "limit_train": 16, "limit_eval": 8},
            "model": {"backbone": "test_remnet", "width": 4, "depth": 2},
            "train": {"epochs": 1, "device": "cpu"},
        },
        "grid": {"attack": ATTACKS, "setup": ["finetune", "proposed"]},
        "pretrain": {"train": {"epochs": 1}},
        "resources": {"cpu": 1, "gpu": 0},
        "max_concurrent": 2,
        "storage": str(work / "ray"),
        "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
    }


@pytest.fixture(scope="module")
def attack_sweep(synth_images, tmp_path_factory):
    from mdfr.sweep.driver import run_sweep
    from mdfr.sweep.state import SweepState

    work = tmp_path_factory.mktemp("attack")
    plan = build_plan(_raw(synth_images, work))
    lines: list[str] = []
    t0 = time.monotonic()
    out = run_sweep(plan, num_cpus=2, log=lines.append, verbose=0)
    print(f"attack sweep ({plan.num_trials} trials): {time.monotonic() - t0:.1f} s")
    state = SweepState.read(next((work / "ray").glob("attack-e2e-*")))
    return plan, out, state, work, lines


def _runs(out, kind="trial"):
    from mdfr.tracking import fetch_sweep_runs

    return fetch_sweep_runs(
        out.experiment, out.tracking_uri, parent_run_id=out.parent_run_id, kind=kind
    )


def test_every_attack_gets_its_dataset_and_one_pretraining_serves_them_all(attack_sweep):
    plan, out, state, work, lines = attack_sweep
    assert not out.failed and len(_runs(out)) == plan.num_trials == 6
    by_attack = {d["attack"]: d for d in state.datasets.values()}
    assert set(by_attack) == set(ATTACKS)
    assert len({d["hash"] for d in by_attack.values()}) == 3  # three datasets
    assert len({d["originals"] for d in by_attack.values()}) == 1  # one set of originals
    assert sorted(p.name for p in (work / "data").iterdir()) == sorted(
        ["jpeg-30", "train-lmbda=0.01", "train-lmbda=0.1"]
    )
    # one pretraining stage, one cache entry, one network for every cell
    (pre,) = _runs(out, kind="pretrain")
    assert pre["status"] == "FINISHED"
    assert len(list((work / "ray" / "cache" / "pretrain").glob("[!.]*"))) == 1  # published
    assert len({c.config["model.cmi_checkpoint"] for c in state.plan.cells}) == 1
    assert sum("pretraining test_remnet seed 0 ->" in line for line in lines) == 1


def test_trial_runs_name_their_attack_and_what_it_cost(attack_sweep):
    _, out, state, _, _ = attack_sweep
    runs = _runs(out)
    assert {r["tags"][Tag.ATTACK] for r in runs} == set(ATTACKS)
    for r in runs:
        info = next(d for d in state.datasets.values() if d["attack"] == r["tags"][Tag.ATTACK])
        assert r["tags"][Tag.DATASET_HASH] == info["hash"]
        assert r["tags"][Tag.CODEC] == info["codec"]
        assert r["metrics"][ATTACK_BPP] == pytest.approx(info["bpp"]) and info["bpp"] > 0
        assert r["metrics"][ATTACK_PSNR] == pytest.approx(info["psnr"])
        assert r["params"]["data.dataset"] in state.datasets


def test_the_codec_family_is_trained_once_and_reused(attack_sweep):
    from mdfr.sweep.attacks import prepare_attacks

    plan, _, _, work, lines = attack_sweep
    codecs = work / "ray" / "cache" / "codecs"
    entries = sorted(codecs.glob("[!.]*"))  # published entries (.work: in progress)
    assert len(entries) == 2 and all((e / "codec.pt").is_file() for e in entries)
    assert sum(line.startswith("codec train:") and "training on" in line for line in lines) == 2
    stamps = {e: (e / "codec.pt").stat().st_mtime_ns for e in entries}
    # the stage again (a rerun or another sweep on this storage): nothing trains, the
    # datasets are reused as they are
    again: list[str] = []
    made = prepare_attacks(plan, work, work / "ray", log=again.append)
    assert sum(": cached (" in line for line in again) == 2
    assert sum(line.startswith("reused dataset") for line in again) == 3
    assert {e: (e / "codec.pt").stat().st_mtime_ns for e in entries} == stamps
    info = json.loads((entries[0] / "result.json").read_text())
    assert info["settings"]["channels"] == [4, 4] and info["spec"].startswith("train:")
    assert info["checkpoint"] == str(entries[0] / "codec.pt")  # moved with its entry
    assert set(made) == set(ATTACKS)


def test_report_attack_reads_the_sweep_back_and_logs_to_its_parent_run(
    attack_sweep, tmp_path, capsys, monkeypatch
):
    from mdfr.tracking import Store

    _, out, _, work, _ = attack_sweep
    monkeypatch.chdir(work)  # paths in the report are written relative to here
    code = main(
        [
            "report", "attack", "--experiment", out.experiment,
            "--tracking-uri", "sqlite:///mlflow.db", "--out", str(tmp_path / "rep"),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert {p["attack"] for p in data["points"]} == set(ATTACKS)
    assert set(data["curves"]) == {"original", "compressed", "finetune", "proposed"}
    assert data["tracking_uri"] == "sqlite:///mlflow.db"
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| `train:lmbda=0.01` |" in md and "figures/attack_rate.png" in md
    assert str(work) not in md and str(work) not in json.dumps(data)
    assert (tmp_path / "rep" / "figures" / "attack_rate.png").stat().st_size > 10_000
    listed = {
        f.path for f in Store(out.tracking_uri).client.list_artifacts(out.parent_run_id, "report")
    }
    assert {"report/report.md", "report/report.json", "report/figures"} <= listed
