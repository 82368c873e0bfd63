"""Session fixtures for codecs (owned by the codec work).

- ``tiny_codec``: the checkpoint path of a tiny learned codec (bmshj2018-factorized, N=M=16,
  300 steps on 64x64 crops of scikit-image photos), trained once per session through the real
  ``train_codec`` loop; ``learned:<path>`` is its spec. ~5 s idle, ~15-20 s on a busy box;
  ~0.12 bpp, ~21 dB on held-out photos, clear N/16 spectral peaks.
- ``codec_train_images``: the folder it was trained on (PNG and JPEG, nested folders).

Treat both as read-only: they are shared by every test in the session.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

# Photos bundled inside scikit-image (no download). Training content and held-out content
# are disjoint so evaluation never sees a training image.
TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
HELDOUT_PHOTOS = ("stereo_motorcycle", "hubble_deep_field", "immunohistochemistry", "retina")

TINY_CODEC = {
    "arch": "bmshj2018-factorized",
    "channels": (16, 16),
    "lmbda": 0.05,
    # 300 steps, not fewer: at 150 the decoded held-out photos were no closer to the input
    # than their own mean colour; 64x64 crops give g_a more than border-only 2x2 latents.
    "steps": 300,
    "batch": 4,
    "crop": 64,
    "lr": 5e-3,
    "decay_at": 0.7,
    "pool": 512,
    "seed": 0,
    "device": "cpu",
}


def skimage_photo(name: str) -> np.ndarray:
    """A bundled scikit-image colour photo as uint8 ``HxWx3``."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3]).astype(np.uint8)


def heldout_images(size: int = 256) -> list[np.ndarray]:
    """Top-left ``size``x``size`` crops of the held-out photos (never trained on)."""
    return [skimage_photo(n)[:size, :size] for n in HELDOUT_PHOTOS]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads: on a shared 2-core box, more threads than free cores
    make small convolutions crawl (spin-waiting), ~10x slower than one thread."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="session")
def codec_train_images(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("codec_train") / "images"
    for i, name in enumerate(TRAIN_PHOTOS):
        # Nested folders and both formats: training searches recursively.
        sub = root / f"D0{i}_Photo" / "images" / "nat"
        sub.mkdir(parents=True)
        suffix, kw = (".png", {}) if i % 2 == 0 else (".jpg", {"quality": 95})
        Image.fromarray(skimage_photo(name)).save(sub / f"{name}{suffix}", **kw)
    return root


@pytest.fixture(scope="session")
def tiny_codec(codec_train_images, tmp_path_factory) -> Path:
    from mdfr.data.codec_train import CodecTrainConfig, train_codec

    out = tmp_path_factory.mktemp("codec") / "tiny_codec.pt"
    with torch_threads(1):
        train_codec(codec_train_images, out, CodecTrainConfig(**TINY_CODEC), progress=False)
    return out
