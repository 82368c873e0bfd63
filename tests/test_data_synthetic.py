"""The synthetic camera dataset: layout, determinism, distinct per-model pipelines."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mdfr.data.camera import make_models
from mdfr.data.synthetic import MODEL_NAMES, plan_devices, synthesize
from mdfr.errors import UsageError


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def test_vision_layout_and_devices(synth_images):
    files = _files(synth_images)
    # 4 models; the 1st and 4th have two devices -> 6 devices x (5 nat + 1 flat)
    assert len(files) == 36
    folders = sorted({f.split("/")[0] for f in files})
    assert folders[:2] == ["D01_Samsung_GalaxySim3", "D02_Samsung_GalaxySim3"]
    assert len(folders) == 6
    assert "D01_Samsung_GalaxySim3/images/nat/D01_I_nat_0005.jpg" in files
    assert "D06_LG_DSim290/images/flat/D06_I_flat_0001.jpg" in files
    with Image.open(synth_images / files[0]) as im:
        assert im.size == (192, 192) and im.format == "JPEG"
        assert im.getexif()[0x010F] == "Samsung"  # EXIF Make
    meta = json.loads((synth_images / "cameras.json").read_text())
    assert meta["devices"]["D02"] == meta["devices"]["D01"] == "Samsung_GalaxySim3"


def test_models_differ_in_more_than_the_bayer_layout():
    cams = make_models(list(MODEL_NAMES[:6]), np.random.default_rng(0))
    traits = ("demosaicer", "postprocess", "subsampling", "jpeg_quality", "read_noise", "gamma")
    for i in range(len(cams)):
        for j in range(i + 1, len(cams)):
            differ = [t for t in traits if getattr(cams[i], t) != getattr(cams[j], t)]
            assert len(differ) >= 4, (cams[i].name, cams[j].name, differ)
    assert {c.demosaicer for c in cams} == {"bilinear", "malvar2004", "menon2007"}
    # each model has its own JPEG tables
    assert len({json.dumps(c.qtables()) for c in cams}) == len(cams)


def test_camera_jpeg_tables_are_written(synth_images):
    devices = {d.folder: d for d in plan_devices(4, seed=0)}
    tables = []
    for folder in ("D01_Samsung_GalaxySim3", "D03_Apple_iPhoneSim5c"):
        path = next((synth_images / folder / "images" / "nat").iterdir())
        with Image.open(path) as im:
            tables.append(list(im.quantization[0]))
        assert tables[-1] == devices[folder].model.qtables()[0]
    assert tables[0] != tables[1]


def test_deterministic_per_seed(tmp_path):
    a = synthesize(tmp_path / "a", models=2, images_per_device=2, size=96, seed=7)
    b = synthesize(tmp_path / "b", models=2, images_per_device=2, size=96, seed=7)
    c = synthesize(tmp_path / "c", models=2, images_per_device=2, size=96, seed=8)
    assert _files(a) == _files(b) == _files(c)
    for f in _files(a):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in _files(a))


def test_flat_images_are_flatter_than_natural(synth_images):
    def spread(sub):
        paths = sorted(synth_images.glob(f"*/images/{sub}/*.jpg"))
        return np.mean(
            [np.asarray(Image.open(p), dtype=float).std(axis=(0, 1)).mean() for p in paths]
        )

    assert spread("flat") < 0.6 * spread("nat")


def test_reuse_and_refuse_to_overwrite(tmp_path):
    msgs: list[str] = []
    out = synthesize(tmp_path / "s", models=1, images_per_device=1, size=64, seed=0)
    stamp = (out / "cameras.json").stat().st_mtime_ns
    synthesize(out, models=1, images_per_device=1, size=64, seed=0, log=msgs.append)
    assert "reused" in msgs[0] and (out / "cameras.json").stat().st_mtime_ns == stamp
    with pytest.raises(UsageError, match="--force"):
        synthesize(out, models=1, images_per_device=1, size=64, seed=1)
    synthesize(out, models=1, images_per_device=1, size=64, seed=1, force=True)
    assert json.loads((out / "cameras.json").read_text())["seed"] == 1
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(UsageError, match="not a synthetic dataset"):
        synthesize(photos, models=1, images_per_device=1, size=64, force=True)
    assert (photos / "holiday.jpg").read_bytes() == b"precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_arguments():
    with pytest.raises(UsageError):
        plan_devices(0, 0)
    with pytest.raises(UsageError, match="size"):
        synthesize("/nonexistent/x", models=1, images_per_device=1, size=32)
