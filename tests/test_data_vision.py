"""Reading the VISION layout."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mdfr.data.vision import read_image, scan
from mdfr.errors import DataError


def test_scan_labels_are_models_shared_by_devices(synth_images):
    index = scan(synth_images, ("nat", "flat"))
    assert len(index.images) == 36
    assert index.models == sorted(
        ["Samsung_GalaxySim3", "Apple_iPhoneSim5c", "Huawei_PSim9", "LG_DSim290"]
    )
    assert index.devices["D01"] == index.devices["D02"] == "Samsung_GalaxySim3"
    rec = next(r for r in index.images if r.rel_path.endswith("D02_I_nat_0003.jpg"))
    assert (rec.model, rec.device, rec.subset) == ("Samsung_GalaxySim3", "D02", "nat")
    assert rec.path == synth_images.resolve() / rec.rel_path
    assert [r.rel_path for r in index.images] == sorted(r.rel_path for r in index.images)


def test_scan_subsets(synth_images):
    assert {r.subset for r in scan(synth_images, ["flat"]).images} == {"flat"}
    assert len(scan(synth_images, ["nat"]).images) == 30


def test_read_image(synth_images):
    img = read_image(next(synth_images.rglob("*.jpg")))
    assert img.dtype == np.uint8 and img.shape == (192, 192, 3)


@pytest.fixture()
def tree(synth_images, tmp_path):
    dst = tmp_path / "vision"
    shutil.copytree(synth_images, dst)
    return dst


def test_empty_model_folder(tree):
    folder = tree / "D03_Apple_iPhoneSim5c"
    for f in folder.rglob("*.jpg"):
        f.unlink()
    with pytest.raises(DataError) as e:
        scan(tree)
    assert str(folder) in str(e.value) and "empty model folder" in str(e.value)
    index = scan(tree, skip_bad=True)
    assert "Apple_iPhoneSim5c" not in index.models and len(index.skipped) == 1


def test_non_vision_layouts(tree, tmp_path):
    flat = tmp_path / "photos"
    flat.mkdir()
    shutil.copy(next(tree.rglob("*.jpg")), flat / "a.jpg")
    with pytest.raises(DataError, match="no device folders"):
        scan(flat)
    (tree / "holiday_pics").mkdir()
    with pytest.raises(DataError) as e:
        scan(tree)
    assert "holiday_pics" in str(e.value) and "Dxx_Brand_Model" in str(e.value)
    shutil.rmtree(tree / "holiday_pics")
    shutil.rmtree(tree / "D04_Huawei_PSim9" / "images")
    (tree / "D04_Huawei_PSim9" / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="D04_Huawei_PSim9: no images/ folder"):
        scan(tree)
    with pytest.raises(DataError, match="not found"):
        scan(tmp_path / "missing")


def test_unreadable_and_truncated_images(tree):
    path = next(tree.rglob("*.jpg"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        read_image(path)
    assert str(path) in str(e.value) and "truncated" in str(e.value)
    path.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError) as e:
        read_image(path)
    assert str(path) in str(e.value) and "unreadable" in str(e.value)
