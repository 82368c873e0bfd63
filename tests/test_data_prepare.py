"""``prepare``: splits, shards, amplitude template, manifest and reuse by content hash."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest

from mdfr.data.codecs import create_codec
from mdfr.data.patches import prepare
from mdfr.data.vision import read_image
from mdfr.errors import UsageError


def _manifest(root):
    return json.loads((root / "manifest.json").read_text())


def _read_split(root, split):
    """Independent shard reader (plain pyarrow, no mdfr code): original, compressed, columns."""
    ori, comp, cols = [], [], {"label": [], "image": [], "y": [], "x": []}
    for name in _manifest(root)["splits"][split]["shards"]:
        table = pa.ipc.open_file(pa.OSFile(str(root / name))).read_all()
        ori.append(np.array(table.column("original").to_pylist(), dtype=np.uint8))
        comp.append(np.array(table.column("compressed").to_pylist(), dtype=np.uint8))
        for k in cols:
            cols[k].extend(table.column(k).to_pylist())
    shape = (-1, 3, 64, 64)
    return (
        np.concatenate(ori).reshape(shape),
        np.concatenate(comp).reshape(shape),
        {k: np.array(v) for k, v in cols.items()},
    )


def test_manifest_summary(tiny_dataset):
    m = _manifest(tiny_dataset)
    assert m["format"] == "mdfr-patches/1" and len(m["dataset_hash"]) == 16
    assert m["codec"]["spec"] == "jpeg:50" and m["codec"]["fingerprint"]
    assert m["classes"] == sorted(m["classes"]) and len(m["classes"]) == 4
    assert sum(s["images"] for s in m["splits"].values()) == 36
    assert sum(s["patches"] for s in m["splits"].values()) == 36 * 9
    for s in m["splits"].values():
        assert sum(v["patches"] for v in s["per_model"].values()) == s["patches"]
    assert 0 < m["stats"]["bpp"]["mean"] < 8 and 20 < m["stats"]["psnr"]["mean"] < 50
    assert m["amplitude_increment"]["split"] == "train"


def test_splits_are_disjoint_by_image(tiny_dataset):
    m = _manifest(tiny_dataset)
    ids = {s: set(_read_split(tiny_dataset, s)[2]["image"].tolist()) for s in m["splits"]}
    assert all(ids.values())
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    for s, members in ids.items():
        assert {i["id"] for i in m["images"] if i["split"] == s} == members
    # every model is represented in every split (stratified)
    for s in m["splits"].values():
        assert all(v["images"] > 0 for v in s["per_model"].values())


def test_split_by_device_keeps_test_devices_apart(synth_images, tmp_path):
    root = prepare(synth_images, "jpeg:50", tmp_path / "d", split_by="device", patches_per_image=1)
    m = _manifest(root)
    devices = {s: {i["device"] for i in m["images"] if i["split"] == s} for s in m["splits"]}
    # the two-device models (D01/D02, D05/D06) each hold one device out for test
    assert len(devices["test"]) == 2 and devices["test"] <= {"D01", "D02", "D05", "D06"}
    assert not devices["test"] & (devices["train"] | devices["val"])
    # validation still has images of every model (drawn by image from the training devices)
    assert all(v["images"] > 0 for v in m["splits"]["val"]["per_model"].values())
    ids = {s: {i["id"] for i in m["images"] if i["split"] == s} for s in m["splits"]}
    assert not ids["train"] & ids["val"]


def test_shards_round_trip_bit_exact(tiny_dataset, synth_images):
    m = _manifest(tiny_dataset)
    codec = create_codec("jpeg:50")
    ori, comp, cols = _read_split(tiny_dataset, "val")
    table = {i["id"]: i for i in m["images"]}
    for image_id in np.unique(cols["image"]):
        rec = table[int(image_id)]
        img = read_image(synth_images / rec["path"])
        dec = codec.compress(img, rec["path"]).image
        for row in np.flatnonzero(cols["image"] == image_id):
            y, x = cols["y"][row], cols["x"][row]
            assert np.array_equal(ori[row], img[y : y + 64, x : x + 64].transpose(2, 0, 1))
            assert np.array_equal(comp[row], dec[y : y + 64, x : x + 64].transpose(2, 0, 1))
            assert m["classes"][cols["label"][row]] == rec["model"]


def test_amplitude_increment_uses_the_training_split_only(tiny_dataset):
    stored = np.load(tiny_dataset / "amplitude_increment.npy")
    assert stored.shape == (3, 64, 64) and stored.dtype == np.float32

    def increment(splits):
        o = np.concatenate([_read_split(tiny_dataset, s)[0] for s in splits]) / 255.0
        c = np.concatenate([_read_split(tiny_dataset, s)[1] for s in splits]) / 255.0
        amp = lambda a: np.abs(np.fft.fft2(a, axes=(-2, -1)))  # noqa: E731
        return amp(c).mean(axis=0) - amp(o).mean(axis=0)

    np.testing.assert_allclose(stored, increment(["train"]), rtol=1e-4, atol=1e-4)
    assert not np.allclose(stored, increment(["train", "val", "test"]), rtol=1e-4, atol=1e-4)


class CountingCodec:
    """Wraps a codec and counts compress calls."""

    def __init__(self, spec):
        self.inner = create_codec(spec)
        self.spec = self.inner.spec
        self.calls = 0

    def fingerprint(self):
        return self.inner.fingerprint()

    def compress(self, img, rel_path=None):
        self.calls += 1
        return self.inner.compress(img, rel_path)


def test_same_inputs_reuse_changed_inputs_rebuild(synth_images, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(synth_images, images)
    out, log = tmp_path / "ds", []
    opts = {"patches_per_image": 2, "images_per_model": 3}
    first = CountingCodec("jpeg:50")
    prepare(images, first, out, log=log.append, **opts)
    h1 = _manifest(out)["dataset_hash"]
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert first.calls == 12

    again = CountingCodec("jpeg:50")
    prepare(images, again, out, log=log.append, **opts)
    assert again.calls == 0 and "reused" in log[-1] and h1 in log[-1]
    assert (out / "manifest.json").stat().st_mtime_ns == stamp

    # an option change: new hash, dataset replaced in place
    prepare(images, "jpeg:50", out, log=log.append, **{**opts, "patches_per_image": 3})
    h2 = _manifest(out)["dataset_hash"]
    assert h2 != h1 and "replacing" in " ".join(log)
    # a codec change and a seed change: new hashes
    assert _manifest(prepare(images, "jpeg:60", tmp_path / "q", **opts))["dataset_hash"] != h1
    assert _manifest(prepare(images, "jpeg:50", tmp_path / "s", seed=1, **opts))[
        "dataset_hash"
    ] not in (h1, h2)
    # same options elsewhere: the same hash (location is not content)
    assert _manifest(prepare(images, "jpeg:50", tmp_path / "o", **opts))["dataset_hash"] == h1
    # an image's bytes change: new hash
    victim = _manifest(out)["images"][0]["path"]
    img = read_image(images / victim)
    img[0, 0] ^= 1
    from PIL import Image

    Image.fromarray(img).save(images / victim, quality=100)
    assert _manifest(prepare(images, "jpeg:50", tmp_path / "o", **opts))["dataset_hash"] != h1
    assert not list(tmp_path.glob(".*tmp*")) and not list(tmp_path.glob(".*old*"))


def test_originals_hash_names_the_original_patches_not_the_codec(synth_images, tmp_path):
    """Two attacks of the same images share the hash of their original patches (what CMI
    pretraining keys on); options that change the originals change it."""
    opts = {"patches_per_image": 2, "images_per_model": 3}
    a = _manifest(prepare(synth_images, "jpeg:50", tmp_path / "a", **opts))
    b = _manifest(prepare(synth_images, "jpeg:90", tmp_path / "b", **opts))
    c = _manifest(prepare(synth_images, "jpeg:50", tmp_path / "c", seed=1, **opts))
    assert a["dataset_hash"] != b["dataset_hash"]
    assert a["originals_hash"] == b["originals_hash"] != c["originals_hash"]
    ori_a, comp_a, _ = _read_split(tmp_path / "a", "train")
    ori_b, comp_b, _ = _read_split(tmp_path / "b", "train")
    assert np.array_equal(ori_a, ori_b) and not np.array_equal(comp_a, comp_b)


def test_selections_pick_different_cells(tiny_dataset, synth_images, tmp_path):
    pos = {}
    for sel in ("grid", "quality", "homogeneous"):
        root = prepare(synth_images, "jpeg:50", tmp_path / sel, selection=sel, patches_per_image=2)
        _, _, cols = _read_split(root, "train")
        pos[sel] = set(
            zip(cols["image"].tolist(), cols["y"].tolist(), cols["x"].tolist(), strict=True)
        )
        assert len(cols["image"]) == 2 * _manifest(root)["splits"]["train"]["images"]
    assert pos["quality"] != pos["homogeneous"]


def test_never_replaces_a_foreign_folder(synth_images, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(UsageError, match="not a prepared dataset"):
        prepare(synth_images, "jpeg:50", tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_bad_options(synth_images, tmp_path):
    for kw in (
        {"selection": "best"},
        {"subsets": "nat,outdoor"},
        {"val_frac": 0.6, "test_frac": 0.5},
        {"val_frac": 0.0},  # an empty split: no trial could validate or report on it
        {"test_frac": 0.0},
        {"val_frac": float("nan")},
        {"images_per_model": 2},  # 2 images per model cannot fill three splits
    ):
        with pytest.raises(UsageError):
            prepare(synth_images, "jpeg:50", tmp_path / "x", **kw)
    with pytest.raises(UsageError):
        prepare(synth_images, "png:9", tmp_path / "x")
