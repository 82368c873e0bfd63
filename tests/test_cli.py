from __future__ import annotations

import subprocess
import sys

import pytest

from mdfr.cli import SUBCOMMANDS, main


def test_help_lists_every_subcommand(capsys):
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for name in ("data", "codec", "train", "sweep", "report", "bench", "ui", "identify"):
        assert name in SUBCOMMANDS and name in out


def test_misspelt_nested_key_exits_2_without_traceback(tmp_path):
    f = tmp_path / "trial.yaml"
    f.write_text("mode: mdfr\nmodel:\n  amplitude_msk: false\n")
    # a real process, as a user would run it: exit code and stderr are what they see
    proc = subprocess.run(
        [sys.executable, "-m", "mdfr.cli", "train", str(f), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "model.amplitude_msk" in proc.stderr and "Traceback" not in proc.stderr


def test_check_prints_resolved_config(tmp_path, capsys):
    f = tmp_path / "trial.yaml"
    f.write_text("setup: wo_at\n")
    assert main(["train", str(f), "--check", "--set", "model.width=8"]) == 0
    out = capsys.readouterr().out
    assert "pooling: max" in out and "width: 8" in out and "config hash" in out


def test_no_subcommand_is_usage_error(capsys):
    assert main([]) == 2


def test_example_trial_configs_validate(capsys):
    from pathlib import Path

    examples = sorted((Path(__file__).parents[1] / "sweeps" / "trials").glob("*.yaml"))
    assert examples
    for f in examples:
        assert main(["train", str(f), "--check"]) == 0, f


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        (b"optim: {lr: .nan}\n", "optim.lr: expected a finite number, got nan"),
        (b"optim: {lr: -.inf}\n", "optim.lr: expected a finite number, got -inf"),
        (
            b"train: {device: 'cuda:abc'}\n",
            "train.device: expected auto, cpu, cuda or cuda:<index>",
        ),
        (b"train: {epochs: true}\n", "train.epochs: expected an integer, got True"),
        (b"mode: mdfr\nseed: 1\nmode: pretrain\n", "line 3, column 1: duplicate key 'mode'"),
        (b"mode: mdfr\nsetup: caf\xe9\n", "not UTF-8 text (byte 0xe9 on line 2)"),
    ],
    ids=["nan", "inf", "cuda_abc", "bool_epochs", "duplicate_key", "not_utf8"],
)
def test_bad_trial_config_exits_2_naming_file_and_key(tmp_path, capsys, text, expect):
    f = tmp_path / "trial.yaml"
    f.write_bytes(text)
    assert main(["train", str(f), "--check"]) == 2
    err = capsys.readouterr().err
    assert f"{f}: " in err and expect in err and "Traceback" not in err


def test_file_tracking_store_is_refused_before_training(tmp_path, capsys):
    f = tmp_path / "trial.yaml"
    f.write_text("mode: pretrain\n")
    assert main(["train", str(f), "--tracking-uri", "mlruns"]) == 2
    err = capsys.readouterr().err
    assert "--tracking-uri: got 'mlruns': a file store" in err and "Traceback" not in err
