"""A dataset attacked by the tiny learned codec (a real CompressAI bitstream)."""

from __future__ import annotations

import json

import numpy as np

from mdfr.data.loader import PatchDataset


def test_learned_dataset(learned_dataset):
    m = json.loads((learned_dataset / "manifest.json").read_text())
    assert m["codec"]["spec"].startswith("learned:")
    assert m["stats"]["bpp"]["min"] > 0
    ds = PatchDataset(learned_dataset, "train")
    ori, comp, _ = ds.batch(np.arange(len(ds)))
    assert not np.array_equal(ori.numpy(), comp.numpy())


def test_amplitude_template_has_the_codecs_periodic_peaks(learned_dataset):
    # 4 stride-2 stages: a 16-pixel period, so peaks every 64/16 = 4 bins on the frequency axes
    # (Bergmann et al.); the stored template M must carry them for MDFRNet to subtract.
    m = np.load(learned_dataset / "amplitude_increment.npy").mean(axis=0)
    for line in (m[0, :], m[:, 0]):
        peaks = [line[k] > max(line[k - 1], line[k + 1]) for k in range(8, 32, 4)]
        assert sum(peaks) >= 5, peaks
