"""Bad input through the real CLI: exit 2 naming the file and the problem; ``--skip-bad``."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from mdfr.cli import main


@pytest.fixture()
def tree(synth_images, tmp_path):
    dst = tmp_path / "vision"
    shutil.copytree(synth_images, dst)
    return dst


def _prepare(images, out, *extra, codec="jpeg:50"):
    args = ["data", "prepare", "--images", str(images), "--codec", codec, "--out", str(out)]
    return main(args + ["--patches-per-image", "1", *extra])


def _nothing_left(out):
    """No dataset and no temporary folder beside it."""
    return not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def _image(tree, n=0):
    return sorted(tree.rglob("*.jpg"))[n]


def test_truncated_image(tree, tmp_path, capsys):
    bad = _image(tree, 7)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out" / "ds"
    out.parent.mkdir()
    assert _prepare(tree, out) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "truncated image" in err and "Traceback" not in err
    assert _nothing_left(out)


def test_unreadable_image(tree, tmp_path, capsys):
    bad = _image(tree, 3)
    bad.write_bytes(b"\x00" * 100)
    assert _prepare(tree, tmp_path / "ds") == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "unreadable image" in err


def test_empty_model_folder(tree, tmp_path, capsys):
    for f in (tree / "D04_Huawei_PSim9").rglob("*.jpg"):
        f.unlink()
    assert _prepare(tree, tmp_path / "ds") == 2
    err = capsys.readouterr().err
    assert "D04_Huawei_PSim9" in err and "empty model folder" in err


def test_non_vision_layout(tmp_path, synth_images, capsys):
    loose = tmp_path / "loose"
    loose.mkdir()
    for i, f in enumerate(sorted(synth_images.rglob("*.jpg"))[:3]):
        shutil.copy(f, loose / f"img{i}.jpg")
    assert _prepare(loose, tmp_path / "ds") == 2
    err = capsys.readouterr().err
    assert str(loose) in err and "D01_Brand_Model" in err


@pytest.fixture()
def mirror(tree, tmp_path):
    """An external codec's output: every image re-encoded, mirrored by relative path."""
    root = tmp_path / "mirror"
    for f in tree.rglob("*.jpg"):
        dst = root / f.relative_to(tree)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            im.save(dst, quality=30)
    return root


def test_external_codec_missing_and_mismatched_files(tree, mirror, tmp_path, capsys):
    codec = f"external:{mirror}"
    assert _prepare(tree, tmp_path / "ok", codec=codec) == 0
    capsys.readouterr()

    gone = sorted(mirror.rglob("*.jpg"))[5]
    gone.unlink()
    assert _prepare(tree, tmp_path / "a", codec=codec) == 2
    err = capsys.readouterr().err
    assert gone.name in err and "no compressed file" in err

    shutil.copy(sorted(mirror.rglob("*.jpg"))[0], gone)
    small = sorted(mirror.rglob("*.jpg"))[9]
    with Image.open(small) as im:
        im.resize((100, 80)).save(small)
    assert _prepare(tree, tmp_path / "b", codec=codec) == 2
    err = capsys.readouterr().err
    assert str(small) in err and "100x80" in err


def test_skip_bad_skips_and_counts(tree, tmp_path, capsys):
    truncated, unreadable = _image(tree, 2), _image(tree, 11)
    truncated.write_bytes(truncated.read_bytes()[:500])
    unreadable.write_bytes(b"junk")
    (tree / "D99_Empty_Model" / "images" / "nat").mkdir(parents=True)
    out = tmp_path / "ds"
    assert _prepare(tree, out, "--skip-bad") == 0
    assert "skipped 3 bad input(s)" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    skipped = " ".join(s["path"] for s in m["skipped"])
    assert str(truncated) in skipped and str(unreadable) in skipped and "D99" in skipped
    used = {i["path"] for i in m["images"] if i["split"]}
    assert len(used) == 34 and truncated.name not in " ".join(used)
    assert "Empty_Model" not in m["classes"]
