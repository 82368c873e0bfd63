"""Hostile input through the real CLI: every case answers with the right exit code and one
message naming what was wrong, fast, without a traceback.

The table runs in-process through ``mdfr.cli.main`` (fast); a few cases also run as a real
process to prove what a user sees. Exit codes: 2 bad input, 1 runtime failure (issue 13).
``{tmp}``, ``{dead}``, ``{mute}``, ``{dir}``, ``{loop}``, ``{noread}`` and ``{sweep_dead}`` in
an argv are filled in by fixtures below.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mdfr.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mute_server():
    """A TCP server that accepts connections and never answers: the worst dead server (a
    refused port fails at once; this one makes clients wait for their timeouts)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def _bad_checkpoints(tmp: Path) -> None:
    """evil.pt: a pickle that would call ``print`` on load; trunc.pt: cut in half; junk.pt."""
    import torch

    torch.save({"model": {}, "hook": print}, tmp / "evil.pt")
    data = (tmp / "evil.pt").read_bytes()
    (tmp / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp / "junk.pt").write_bytes(b"garbage")


def _sweeps_one_damaged(storage: Path, state: dict) -> None:
    """ok-*: a sound sweep folder; bad-*: a truncated state file; bin-*: not even UTF-8."""
    for name, text in (
        ("ok-20260101-000000", json.dumps(state)),
        ("bad-20260101-000000", json.dumps(state)[:40]),
        ("bin-20260101-000000", None),
    ):
        (storage / name).mkdir(parents=True)
        f = storage / name / "mdfr_sweep.json"
        if text is None:
            f.write_bytes(b"\xff\xfe\x00garbage")
        else:
            f.write_text(text)


def _old_dataset_without_val(tiny_dataset: Path, dst: Path) -> Path:
    """A dataset as ``mdfr data prepare --val-frac 0`` made it before issue 13: its val split
    holds no patches (made by editing a copy's manifest, which is all a trial reads)."""
    import shutil

    shutil.copytree(tiny_dataset, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["splits"]["val"].update(patches=0, images=0, shards=[])
    m["options"]["val_frac"] = 0.0
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.fixture(scope="module")
def places(tmp_path_factory, mute_server, synth_images, tiny_dataset):
    """Paths and URLs the table's argv templates refer to."""
    from mdfr.sweep.spec import build_plan

    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "dir").mkdir()
    loop = tmp / "loop"
    loop.symlink_to(loop)
    noread = tmp / "noread.yaml"
    noread.write_text("mode: pretrain\n")
    noread.chmod(0)
    dead = f"http://127.0.0.1:{_free_port()}"
    sweep = tmp / "ray" / "s-20260101-000000"
    sweep.mkdir(parents=True)
    state = {
        "plan": build_plan({"name": "s"}).to_dict(),
        "phase": "tune",
        "tracking_uri": dead,
        "parent_run_id": "0" * 32,
    }
    full = {**state, "root": str(tmp), "exp_dir": str(sweep), "storage": str(sweep.parent)}
    (sweep / "mdfr_sweep.json").write_text(json.dumps(full))
    empty_val = _old_dataset_without_val(tiny_dataset, tmp / "noval")
    trial = tmp / "noval.yaml"
    trial.write_text(
        f"mode: pretrain\ndata: {{dataset: {empty_val}, batch_size: 8, limit_train: 16, limit_eval: 16}}\n"
        "model: {backbone: test_remnet}\ntrain: {epochs: 1, device: cpu}\n"
        f"output_dir: {tmp / 'noval-run'}\n"
    )
    good = tmp / "good.yaml"
    good.write_text(
        f"mode: pretrain\ndata: {{dataset: {tiny_dataset}, batch_size: 8, limit_train: 16, limit_eval: 16}}\n"
        "model: {backbone: test_remnet}\ntrain: {epochs: 1, device: cpu}\n"
        f"output_dir: {tmp / 'good-run'}\n"
    )
    _bad_checkpoints(tmp)
    (tmp / "taken").mkdir()
    (tmp / "taken" / "mdfr_run.json").write_text('{"config_hash": "0123456789abcdef"}')
    (tmp / "taken" / "cmi.pt").write_text("a network another config trained")
    (tmp / "dir" / "thesis.tex").write_text("precious")
    _sweeps_one_damaged(tmp / "ray2", state)
    return {
        "dataset": str(tiny_dataset),
        "good": str(good),
        "images": str(synth_images),
        "noval": str(trial),
        "tmp": str(tmp),
        "dead": dead,
        "mute": f"http://127.0.0.1:{mute_server}",
        "dir": str(tmp / "dir"),
        "loop": str(loop),
        "noread": str(noread),
        "sweep_dead": str(sweep),
    }


# argv, exit code, fragments the one-line error must contain
CASES = [
    # ---- tracking servers: unreachable is a runtime failure (1), a bad URI is bad input (2)
    ("report table2 --experiment x --tracking-uri {dead}", 1, ["{dead} is unreachable"]),
    ("report table2 --experiment x --tracking-uri {mute}", 1, ["{mute} is unreachable"]),
    ("report table2 --experiment x --tracking-uri bogus://x", 2, ["unsupported scheme 'bogus'"]),
    ("report table2 --experiment x --tracking-uri mlruns", 2, ["a file store"]),
    ("report table2 --experiment x --tracking-uri http://h:99999", 2, ["bad port"]),
    ("report table2 --experiment x --tracking-uri sqlite:///{dir}", 2, ["a directory"]),
    (
        "report table1 --experiment x --tracking-uri postgresql://u:pw@127.0.0.1:1/db",
        1,
        [
            "unreachable",
            "u:***@",
        ],
    ),
    ("sweep status {sweep_dead}", 1, ["{dead} is unreachable"]),
    ("train sweeps/trials/pretrain.yaml --tracking-uri {dead}", 1, ["{dead} is unreachable"]),
    ("train sweeps/trials/pretrain.yaml --tracking-uri bogus://x", 2, ["--tracking-uri"]),
    # identify: the store is checked like every other command's, before any model loads
    ("identify {images} --model models:/m@champion --tracking-uri {dead}", 1, ["unreachable"]),
    ("identify {images} --model models:/m@champion --tracking-uri {mute}", 1, ["unreachable"]),
    ("identify {images} --model models:/m@champion --tracking-uri bogus://x", 2, ["bogus"]),
    ("identify {images} --model x --patches -1", 2, ["--patches", ">= 0", "-1"]),
    ("identify {images} --model x --batch-size 0", 2, ["--batch-size", ">= 1"]),
    ("identify {images} --model x --device tpu", 2, ["--device", "tpu"]),
    ("identify {tmp}/missing --model x", 2, ["missing", "no such file or folder"]),
    ("ui --tracking-uri bogus://x", 2, ["unsupported scheme"]),
    ("ui --port 99999", 2, ["--port", "1 to 65535", "99999"]),
    ("ui --port -1", 2, ["--port"]),
    ("ui --workers 0", 2, ["--workers"]),
    # ---- empty splits: refused when preparing, named when training on an old dataset
    (
        "data prepare --images {images} --codec jpeg:50 --out {tmp}/d --val-frac 0",
        2,
        [
            "--val-frac",
            "got '0'",
        ],
    ),
    (
        "data prepare --images {images} --codec jpeg:50 --out {tmp}/d --test-frac 0",
        2,
        ["--test-frac"],
    ),
    ("data prepare --images {images} --codec jpeg:50 --out {tmp}/d --val-frac nan", 2, ["nan"]),
    (
        "data prepare --images {images} --codec jpeg:50 --out {tmp}/d --val-frac 0.5 "
        "--test-frac 0.5",
        2,
        ["leaves no training images"],
    ),
    (
        "data prepare --images {images} --codec jpeg:50 --out {tmp}/d --images-per-model 2",
        2,
        [
            "2 image(s) cannot fill three splits",
            "--images-per-model",
        ],
    ),
    (
        "data prepare --images {images} --codec jpeg:50 --out {tmp}/d --images-per-model -1",
        2,
        ["--images-per-model"],
    ),
    ("train {noval}", 2, ["split(s) val hold no patches", "val_frac=0.0"]),
    # ---- synthetic cameras: sizes and seeds a generator can take
    ("data synth --out {tmp}/s --size 100000000", 2, ["--size", "64 to 4096"]),
    ("data synth --out {tmp}/s --seed -1", 2, ["--seed", "-1"]),
    ("data synth --out {tmp}/s --models 0", 2, ["--models"]),
    ("data synth --out {tmp}/s --images-per-device 0", 2, ["--images-per-device"]),
    ("data synth --out {tmp}/s --flat-per-device -1", 2, ["--flat-per-device"]),
    ("data spectra {tmp} --out {tmp}/x.png --limit -5", 2, ["--limit"]),
    # ---- checkpoints: never torch's advice to load with weights_only=False
    ("train {good} --resume {tmp}/evil.pt", 2, ["evil.pt", "Python objects besides tensors"]),
    ("train {good} --resume {tmp}/trunc.pt", 2, ["trunc.pt", "damaged or truncated"]),
    ("train {good} --resume {tmp}/junk.pt", 2, ["junk.pt", "not a PyTorch checkpoint"]),
    ("train {good} --resume {dir}", 2, ["checkpoint not found", "state.pt"]),
    ("train {good} --resume {loop}", 2, ["checkpoint not found"]),
    ("train {good} --set model.cmi_checkpoint={tmp}/evil.pt --set mode=finetune", 2, ["evil.pt"]),
    ("codec eval --codec learned:{tmp}/evil.pt --images {images}", 2, ["evil.pt"]),
    # ---- output folders of hand-run trials
    ("train {good} --set output_dir={tmp}/x-{nope}", 2, ["unknown placeholder {nope}"]),
    (
        "train {good} --set output_dir={tmp}/taken",
        2,
        [
            "holds a run of another config",
            "--force",
        ],
    ),
    ("train {good} --set output_dir={dir}", 2, ["files mdfr did not write"]),
    ("train {good} --set output_dir={tmp}/good.yaml", 2, ["is a file, not a folder"]),
    # ---- codecs
    ("codec train --images {images} --out {tmp}/c.pt --steps 0", 2, ["--steps"]),
    ("codec train --images {images} --out {tmp}/c.pt --lmbda nan", 2, ["--lmbda", "nan"]),
    ("codec train --images {images} --out {tmp}/c.pt --lr -1", 2, ["--lr"]),
    ("codec train --images {images} --out {tmp}/c.pt --decay-at 2", 2, ["--decay-at"]),
    ("codec train --images {images} --out {tmp}/c.pt --quality 99", 2, ["--quality", "1 to 8"]),
    ("codec train --images {images} --out {tmp}/c.pt --channels 0,8", 2, ["positive channel"]),
    ("codec train --images {images} --out {dir} --steps 1", 2, ["--out", "a folder"]),
    ("codec train --images {loop} --out {tmp}/c.pt", 2, ["not a folder"]),
    ("codec eval --codec jpeg:500 --images {images}", 2, ["quality must be in 1-100"]),
    ("codec eval --codec learned:{dir} --images {images}", 2, ["is a folder, not a file"]),
    ("codec eval --codec jpeg:50 --images {images} --limit -1", 2, ["--limit"]),
    # ---- datasets and figures
    (
        "data prepare --images {tmp}/good.yaml --codec jpeg:50 --out {tmp}/d",
        2,
        ["image folder not found"],
    ),
    (
        "data prepare --images {images} --codec jpeg:50 --out {tmp}/good.yaml",
        2,
        ["not a prepared dataset"],
    ),
    ("data prepare --images {images} --codec bogus:1 --out {tmp}/d", 2, ["unknown codec"]),
    ("data info {loop}", 2, ["unreadable manifest"]),
    ("data spectra {dataset} --out {dir}", 2, ["--out", ".png"]),
    # ---- sweeps
    ("sweep status {tmp}/missing", 2, ["not a sweep folder"]),
    ("sweep resume {dir}", 2, ["not a sweep folder"]),
    ("sweep run sweeps/smoke.yaml --num-cpus -1", 2, ["--num-cpus"]),
    ("sweep resume x --num-cpus 0", 2, ["--num-cpus"]),
    ("sweep list --storage {tmp}/missing", 0, ["no sweeps under"]),
    # ---- reports and benchmarks
    ("report table2 --experiment x --spectra-patches -1", 2, ["--spectra-patches"]),
    ("report table2 --experiment", 2, ["--experiment"]),
    ("report table2 --experiment x --out {tmp}/good.yaml", 2, ["--out", "a file"]),
    ("train {good} --json {dir}", 2, ["--json", "a folder"]),
    ("bench loader --quick --seconds nan", 2, ["--seconds"]),
    ("bench sweep --quick --trial-seconds -5", 2, ["--trial-seconds"]),
    ("bench step --quick --peak-tflops 0", 2, ["--peak-tflops"]),
    ("bench step --quick --width 0", 2, ["--width"]),
    ("bench sweep --quick --packing-batch 0", 2, ["--packing-batch"]),
    # ---- sweep state files: one damaged folder does not break the others
    (
        "sweep list --storage {tmp}/ray2",
        0,
        [
            "bad-20260101-000000/mdfr_sweep.json: unreadable sweep state",
            "bin-20260101-000000/mdfr_sweep.json: unreadable sweep state",
        ],
    ),
    ("sweep status {tmp}/ray2/bad-20260101-000000", 2, ["unreadable sweep state"]),
    ("sweep resume {tmp}/ray2/bin-20260101-000000", 2, ["unreadable sweep state"]),
    # a state file of an older layout: listed, but not resumable, and it says why
    ("sweep resume {tmp}/ray2/ok-20260101-000000", 2, ["not a sweep state file", "root"]),
]


def _fill(text: str, places: dict[str, str]) -> str:
    for k, v in places.items():
        text = text.replace("{" + k + "}", v)
    return text


@pytest.mark.parametrize(("argv", "code", "fragments"), CASES, ids=[c[0] for c in CASES])
def test_hostile_argv(argv, code, fragments, places, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    t0 = time.monotonic()
    got = main(_fill(argv, places).split())
    elapsed = time.monotonic() - t0
    out, err = capsys.readouterr()
    assert got == code, err
    for f in fragments:
        assert _fill(f, places) in (err if code else out + err), err
    assert "Traceback" not in err
    assert elapsed < 15, f"{argv} took {elapsed:.1f} s"


@pytest.mark.parametrize(
    "argv",
    [
        "report table2 --experiment x --tracking-uri {mute}",
        "ui --port 99999",
    ],
)
def test_real_process_shows_one_line_and_no_traceback(argv, places):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mdfr.cli", *_fill(argv, places).split()],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if "error:" in ln], proc.stderr
    assert time.monotonic() - t0 < 30


def test_debug_shows_the_traceback(places, capsys):
    assert (
        main(["--debug", "report", "table2", "--experiment", "x", "--tracking-uri", places["dead"]])
        == 1
    )
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 10**8}, {"seed": -1}, {"images_per_device": 0}, {"flat_per_device": -1}],
)
def test_synthesize_checks_what_a_sweeps_prepare_section_passes(tmp_path, kwargs):
    """``prepare.synthesize`` in a sweep file reaches ``synthesize`` without argparse."""
    from mdfr.data.synthetic import synthesize
    from mdfr.errors import UsageError

    with pytest.raises(UsageError, match="must be an integer"):
        synthesize(tmp_path / "s", models=1, **{"images_per_device": 1, **kwargs})
    assert not (tmp_path / "s").exists()


def test_train_writes_another_config_into_a_folder_only_with_force(places, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", places["good"], "--set", f"output_dir={out}"]
    assert main(base) == 0
    first = json.loads((out / "mdfr_run.json").read_text())
    assert main(base) == 0  # the same config may run again in its own folder
    other = [*base, "--set", "optim.lr=5e-4"]
    assert main(other) == 2
    assert "holds a run of another config" in capsys.readouterr().err
    assert json.loads((out / "mdfr_run.json").read_text()) == first
    assert main([*other, "--force"]) == 0
    assert json.loads((out / "mdfr_run.json").read_text())["config_hash"] != first["config_hash"]


def test_placeholders_give_each_backbone_its_folder_and_mdfr_finds_its_pretraining():
    from mdfr import rundir
    from mdfr.config import load_yaml

    trials = ROOT / "sweeps" / "trials"
    pre = rundir.expand(load_yaml(trials / "pretrain.yaml", ["model.backbone=remnet"]))
    mdfr = rundir.expand(load_yaml(trials / "mdfr.yaml", ["model.backbone=remnet", "setup=wo_res"]))
    assert pre.output_dir == "results/runs/pretrain-remnet-s0"
    assert mdfr.model.cmi_checkpoint == f"{pre.output_dir}/cmi.pt"
    assert mdfr.output_dir == "results/runs/mdfr-wo_res-remnet-s0"


def test_paper_size_networks_on_the_cpu_are_announced():
    from mdfr.commands.train import cpu_warning
    from mdfr.config import from_dict

    slow = from_dict({"mode": "mdfr", "model": {"backbone": "dpec_convnext"}})
    w = cpu_warning(slow.replace(**{"train.device": "cpu"}))
    assert "backbone dpec_convnext and MDFRNet width 64" in w and "test_remnet" in w
    quick = {"train.device": "cpu", "model.backbone": "test_remnet", "model.width": 8}
    assert cpu_warning(slow.replace(**quick)) is None


@pytest.mark.parametrize("argv", [["report", "table2", "--experiment", ""],
                                  ["train", "x.yaml", "--experiment", " "]])  # fmt: skip
def test_empty_experiment_names_are_usage_errors(argv, capsys):
    assert main(argv) == 2
    assert "expected a non-empty name" in capsys.readouterr().err


def test_a_run_killed_before_its_first_checkpoint_does_not_hold_its_folder(places, tmp_path):
    out = tmp_path / "killed"
    out.mkdir()
    (out / "mdfr_run.json").write_text('{"config_hash": "0123456789abcdef"}')  # nothing else
    assert main(["train", places["good"], "--set", f"output_dir={out}"]) == 0
