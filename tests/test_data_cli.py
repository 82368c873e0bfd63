"""``mdfr data`` subcommands end to end through ``mdfr.cli.main``."""

from __future__ import annotations

import json

from PIL import Image

from mdfr.cli import main


def test_synth_prepare_info_spectra(tmp_path, capsys):
    images, ds, png = tmp_path / "vision", tmp_path / "ds", tmp_path / "fig2.png"
    synth = ["data", "synth", "--out", str(images), "--models", "2", "--images-per-device", "3"]
    assert main([*synth, "--size", "128", "--seed", "5"]) == 0
    assert "wrote 12 images of 2 models (3 devices)" in capsys.readouterr().out
    prep = ["data", "prepare", "--images", str(images), "--codec", "jpeg:40", "--out", str(ds)]
    assert main([*prep, "--patches-per-image", "2", "--selection", "quality"]) == 0
    assert "prepared" in capsys.readouterr().out
    assert main([*prep, "--patches-per-image", "2", "--selection", "quality"]) == 0
    assert "reused" in capsys.readouterr().out

    assert main(["data", "info", str(ds)]) == 0
    out = capsys.readouterr().out
    m = json.loads((ds / "manifest.json").read_text())
    assert m["dataset_hash"] in out and "jpeg:40" in out
    for name in m["classes"]:
        assert name in out

    assert main(["data", "spectra", str(ds), "--out", str(png), "--split", "train"]) == 0
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 1000


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["data"]) == 2
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "not a prepared dataset" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--models", "99"]) == 2
    assert "--models" in capsys.readouterr().err
