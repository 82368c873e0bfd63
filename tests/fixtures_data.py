"""Session fixtures for datasets (owned by the data work).

- ``synth_images``: a tiny synthetic VISION tree: 4 camera models, models 1 and 4 with two
  devices (6 devices), 5 natural + 1 flat image per device, 192×192 (36 images, ~2 s).
- ``tiny_dataset``: ``synth_images`` prepared with ``jpeg:50`` as the attack, every grid cell
  (9 patches per image; 324 patches, split by image 70/15/15), ~1 s.
- ``learned_dataset``: the same images attacked by the tiny learned codec of
  ``fixtures_codec.tiny_codec`` (skipped when that fixture is not available).

Treat them as read-only: they are shared by every test in the session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SYNTH = {"models": 4, "images_per_device": 5, "size": 192, "seed": 0}
PREPARE = {"patches_per_image": 0, "images_per_model": 0, "seed": 0}


@pytest.fixture(scope="session")
def synth_images(tmp_path_factory) -> Path:
    from mdfr.data.synthetic import synthesize

    return synthesize(tmp_path_factory.mktemp("synth") / "vision", **SYNTH)


@pytest.fixture(scope="session")
def tiny_dataset(synth_images, tmp_path_factory) -> Path:
    from mdfr.data.patches import prepare

    return prepare(synth_images, "jpeg:50", tmp_path_factory.mktemp("data") / "tiny", **PREPARE)


@pytest.fixture(scope="session")
def learned_dataset(synth_images, tmp_path_factory, request) -> Path:
    from mdfr.data.patches import prepare

    try:
        ckpt = request.getfixturevalue("tiny_codec")
    except pytest.FixtureLookupError:
        pytest.skip("no tiny_codec fixture (fixtures_codec.py) to attack with")
    out = tmp_path_factory.mktemp("data") / "learned"
    return prepare(synth_images, f"learned:{ckpt}", out, device="cpu", **PREPARE)
