"""Which images enter a dataset and which split each one goes to.

Splits are drawn per *image*, never per patch (patches of one image share content and noise,
so a patch-level split would leak), or per *device* (no device appears in two splits: the test
measures generalisation to unseen devices of known models). Both are stratified by camera
model and deterministic given the seed.

Split by device, per model: with two or more devices, a fraction ``test_frac`` of them (at
least one, never all) is held out for test; a model with one device stays out of test. The
validation split is then drawn *by image* from the remaining devices' images, so model
selection has data even for two-device models; test devices never appear in train or val.
Models missing from a split show in the manifest's per-model counts.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from mdfr.data.vision import ImageRecord

SPLITS = ("train", "val", "test")
SPLIT_BY = ("image", "device")


def choose_images(
    images: list[ImageRecord], per_model: int, rng: np.random.Generator
) -> list[ImageRecord]:
    """At most ``per_model`` images per model (0 = all), balanced over the model's devices.

    Devices take turns (round robin over each device's shuffled images), so a model with two
    devices contributes about half its images from each.
    """
    if per_model <= 0:
        return list(images)
    by_device: dict[str, dict[str, list[ImageRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in images:
        by_device[r.model][r.device].append(r)
    chosen: list[ImageRecord] = []
    for model in sorted(by_device):
        queues = [
            [lst[i] for i in rng.permutation(len(lst))]
            for _, lst in sorted(by_device[model].items())
        ]
        picked: list[ImageRecord] = []
        while len(picked) < per_model and any(queues):
            for q in queues:
                if q and len(picked) < per_model:
                    picked.append(q.pop(0))
        chosen.extend(picked)
    return sorted(chosen, key=lambda r: r.rel_path)


def _counts(n: int, val_frac: float, test_frac: float) -> tuple[int, int]:
    """(val, test) image counts for ``n`` images; each non-empty when its fraction is > 0 and
    at least one image is left for training."""
    n_val = round(n * val_frac)
    n_test = round(n * test_frac)
    if n >= 3:
        n_val = max(n_val, 1 if val_frac > 0 else 0)
        n_test = max(n_test, 1 if test_frac > 0 else 0)
    while n_val + n_test >= n and (n_val or n_test):
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def assign_splits(
    images: list[ImageRecord],
    split_by: str,
    val_frac: float,
    test_frac: float,
    rng: np.random.Generator,
) -> list[str]:
    """The split of each image in ``images`` (same order)."""
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    split: dict[str, str] = {}
    by_model: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in images:
        by_model[r.model].append(r)
    for model in sorted(by_model):
        group = by_model[model]
        if split_by == "image":
            order = [group[i] for i in rng.permutation(len(group))]
            n_val, n_test = _counts(len(order), val_frac, test_frac)
            for i, r in enumerate(order):
                split[r.rel_path] = (
                    "test" if i < n_test else "val" if i < n_test + n_val else "train"
                )
        else:
            devices = sorted({r.device for r in group})
            devices = [devices[i] for i in rng.permutation(len(devices))]
            n_test = 0
            if len(devices) >= 2 and test_frac > 0:
                n_test = min(max(1, round(len(devices) * test_frac)), len(devices) - 1)
            held_out = set(devices[:n_test])
            rest = [r for r in group if r.device not in held_out]
            rest = [rest[i] for i in rng.permutation(len(rest))]
            n_val, _ = _counts(len(rest), val_frac, 0.0)
            for r in group:
                split[r.rel_path] = "test" if r.device in held_out else "train"
            for r in rest[:n_val]:
                split[r.rel_path] = "val"
    return [split[r.rel_path] for r in images]
