"""The torch loader over memory-mapped shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mdfr.data.shards as shards
from mdfr.data.loader import (
    PatchDataset,
    load_amplitude_increment,
    load_manifest,
    make_loader,
)
from mdfr.data.patches import prepare
from mdfr.errors import DataError


def test_batches_shapes_dtypes_labels(tiny_dataset):
    m = load_manifest(tiny_dataset)
    loader = make_loader(tiny_dataset, "train", batch_size=32, shuffle=True, seed=0)
    n = m["splits"]["train"]["patches"]
    assert len(loader) == -(-n // 32)
    seen = []
    for ori, comp, label in loader:
        assert ori.dtype == comp.dtype == torch.uint8 and label.dtype == torch.int64
        assert ori.shape[1:] == comp.shape[1:] == (3, 64, 64) and len(label) == len(ori)
        assert not torch.equal(ori, comp)
        seen.append(label)
    labels = torch.cat(seen)
    assert len(labels) == n and labels.max() < len(m["classes"])
    per_model = m["splits"]["train"]["per_model"]
    counts = torch.bincount(labels, minlength=len(m["classes"])).tolist()
    assert counts == [per_model[c]["patches"] for c in m["classes"]]


def test_samples_match_the_shards(tiny_dataset):
    ds = PatchDataset(tiny_dataset, "test")
    i = len(ds) - 1
    ori, comp, label = ds[i]
    batch = ds[[0, i]]
    assert torch.equal(batch[0][1], ori) and torch.equal(batch[1][1], comp)
    assert int(batch[2][1]) == int(label) == int(ds.labels[i])
    images = {r["id"]: r for r in load_manifest(tiny_dataset)["images"]}
    assert images[int(ds.image_ids[i])]["model"] == ds.classes[int(label)]
    with pytest.raises(IndexError):
        ds[len(ds)]


def _epochs(root, seed, epochs=2, **kw):
    loader = make_loader(root, "train", batch_size=16, shuffle=True, seed=seed, **kw)
    return [[(o.clone(), y.clone()) for o, _, y in loader] for _ in range(epochs)]


def test_deterministic_per_seed_and_reshuffled_per_epoch(tiny_dataset):
    a, b, c = _epochs(tiny_dataset, 3), _epochs(tiny_dataset, 3), _epochs(tiny_dataset, 4)
    for ea, eb in zip(a, b, strict=True):
        for (oa, ya), (ob, yb) in zip(ea, eb, strict=True):
            assert torch.equal(oa, ob) and torch.equal(ya, yb)
    first = lambda run: torch.cat([y for _, y in run[0]])  # noqa: E731
    assert not torch.equal(first(a), first(c))
    assert not torch.equal(first(a), torch.cat([y for _, y in a[1]]))
    # every patch exactly once per epoch
    ds = PatchDataset(tiny_dataset, "train")
    flat = torch.cat([o.reshape(len(o), -1) for o, _ in a[0]]).numpy()
    expected = ds.batch(np.arange(len(ds)))[0].reshape(len(ds), -1).numpy()
    assert sorted(map(bytes, flat)) == sorted(map(bytes, expected))


def test_unshuffled_order_limit_and_drop_last(tiny_dataset):
    full = PatchDataset(tiny_dataset, "train")
    loader = make_loader(tiny_dataset, "train", 10, shuffle=False, seed=0, limit=25, drop_last=True)
    batches = list(loader)
    assert [len(y) for _, _, y in batches] == [10, 10]
    limited = PatchDataset(tiny_dataset, "train", limit=25)
    assert len(limited) == 25
    assert torch.equal(batches[1][0], limited.batch(np.arange(10, 20))[0])
    # a limited split is a fixed subset spread over many images, not the first few
    assert len(set(limited.image_ids.tolist())) > 10 and len(set(limited.labels.tolist())) > 1
    rows = {bytes(r) for r in full.batch(np.arange(len(full)))[0].reshape(len(full), -1).numpy()}
    assert all(bytes(r) in rows for r in limited[list(range(25))][0].reshape(25, -1).numpy())


def test_multiple_shards_and_workers(synth_images, tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_ROWS", 7)
    import mdfr.data.patches as patches

    monkeypatch.setattr(patches, "SHARD_ROWS", 7)
    root = prepare(synth_images, "jpeg:50", tmp_path / "many", patches_per_image=1)
    m = json.loads((root / "manifest.json").read_text())
    assert len(m["splits"]["train"]["shards"]) > 2
    ds = PatchDataset(root, "train")
    idx = np.array([0, 6, 7, 8, len(ds) - 1])
    ori, comp, label = ds.batch(idx)
    for k, i in enumerate(idx):
        o, c, y = ds[int(i)]
        assert torch.equal(ori[k], o) and torch.equal(comp[k], c) and label[k] == y
    one = [y for _, _, y in make_loader(root, "train", 4, True, seed=1)]
    two = [y for _, _, y in make_loader(root, "train", 4, True, seed=1, num_workers=1)]
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def test_amplitude_increment_tensor(tiny_dataset):
    m = load_amplitude_increment(tiny_dataset)
    assert m.dtype == torch.float32 and m.shape == (3, 64, 64)
    assert torch.equal(m, torch.from_numpy(np.load(tiny_dataset / "amplitude_increment.npy")))


def test_missing_dataset_and_split(tiny_dataset, tmp_path):
    with pytest.raises(DataError, match="not a prepared dataset"):
        PatchDataset(tmp_path, "train")
    with pytest.raises(DataError, match="no split"):
        PatchDataset(tiny_dataset, "holdout")
