"""Where to cut patches in an image: grid, quality-ranked or homogeneous positions.

Candidates are the non-overlapping cells of a grid anchored at the image's top-left corner,
so every patch is aligned with the 8×8/16×16 block grid of JPEG and of stride-16 AI codecs
(both leave block-periodic traces a CMI network can key on; a consistent phase keeps them
comparable across images). The same positions are cut from the original and the compressed
image.

- ``grid``: ``k`` cells drawn at random (all when ``k`` is 0 or at least the cell count).
- ``quality``: the ``k`` cells with the best score of Bondi et al. (2017), the usual CMI patch
  selection: well-exposed (mean near mid-grey) and textured (high standard deviation) cells.
- ``homogeneous``: the ``k`` flattest cells that are not saturated, where sensor noise and
  demosaicing traces dominate the content.
"""

from __future__ import annotations

import numpy as np

SELECTIONS = ("grid", "quality", "homogeneous")

# Bondi et al., "First steps toward camera model identification with CNNs", 2017.
_ALPHA, _BETA, _GAMMA = 0.7, 4.0, float(np.log(0.01))


def grid_positions(height: int, width: int, patch: int = 64) -> np.ndarray:
    """``(n, 2)`` int array of ``(y, x)`` top-left corners of the non-overlapping grid."""
    ys = np.arange(height // patch) * patch
    xs = np.arange(width // patch) * patch
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def _cell_stats(img: np.ndarray, pos: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell, per-channel mean and standard deviation on the [0, 1] scale: ``(n, 3)`` each."""
    h, w = img.shape[:2]
    gh, gw = h // patch, w // patch
    cells = img[: gh * patch, : gw * patch].reshape(gh, patch, gw, patch, 3).astype(np.float32)
    cells = cells.transpose(0, 2, 1, 3, 4).reshape(gh * gw, patch * patch, 3) / 255.0
    index = (pos[:, 0] // patch) * gw + pos[:, 1] // patch
    cells = cells[index]
    return cells.mean(axis=1), cells.std(axis=1)


def bondi_quality(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Bondi et al.'s patch quality from per-channel mean and std (``(n, 3)`` -> ``(n,)``)."""
    q = _ALPHA * _BETA * (mean - mean**2) + (1 - _ALPHA) * (1 - np.exp(_GAMMA * std))
    return q.mean(axis=1)


def select_positions(
    img: np.ndarray, k: int, method: str, rng: np.random.Generator, patch: int = 64
) -> np.ndarray:
    """Pick ``k`` patch positions of ``img`` (uint8 ``HxWx3``) with ``method``.

    Returns:
        ``(m, 2)`` int64 ``(y, x)`` corners, ``m = min(k, cells)`` (all cells when ``k`` is 0),
        sorted in raster order.
    """
    if method not in SELECTIONS:
        raise ValueError(f"unknown selection {method!r}; expected one of {SELECTIONS}")
    pos = grid_positions(img.shape[0], img.shape[1], patch)
    if k <= 0 or k >= len(pos):
        return pos
    if method == "grid":
        keep = rng.choice(len(pos), size=k, replace=False)
    else:
        mean, std = _cell_stats(img, pos, patch)
        if method == "quality":
            score = bondi_quality(mean, std)
        else:
            saturated = ((mean < 0.05) | (mean > 0.95)).any(axis=1)
            score = -std.mean(axis=1) - 10.0 * saturated
        # Stable sort on a negated score: ties keep raster order, so the choice is reproducible.
        keep = np.argsort(-score, kind="stable")[:k]
    return pos[np.sort(keep)]
