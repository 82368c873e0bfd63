"""Which camera model took an image, before and after MDFRNet's restoration (no MLflow here).

Per image: cut P×P patches on the same grid the dataset preparation uses
(:func:`mdfr.data.selection.select_positions`, anchored at the top-left corner, aligned with
the codecs' block grid), optionally compress the image first with a codec (to see the attack
and the defence on images that were never attacked), run the trained
:class:`~mdfr.models.identifier.CameraIdentifier`, and average the softmax probabilities over
the patches, per view. The prediction of a view is the class with the highest mean
probability; its confidence is that mean probability.

The model comes from :func:`mdfr.tracking.models.load_model` (``mdfr identify --model URI``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mdfr.data.selection import select_positions
from mdfr.data.vision import DEVICE_DIR, IMAGE_SUFFIXES, read_image
from mdfr.errors import DataError, UsageError

VIEW_LABELS = {"input": "before restoration", "restored": "after restoration"}


@dataclass
class ImageResult:
    """The prediction for one image."""

    path: str
    patches: int
    truth: str | None = None
    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "patches": self.patches,
            "truth": self.truth,
            "views": self.views,
            **({"error": self.error} if self.error else {}),
        }


def find_images(target: str | Path) -> list[Path]:
    """``target`` itself when it is a file, else every image file under it (sorted).

    Raises:
        UsageError: the path does not exist, or a folder holds no image files.
    """
    p = Path(target).expanduser()
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise UsageError(f"{target}: no such file or folder")
    found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise UsageError(
            f"{target}: no images in this folder or below (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return found


def camera_of(path: Path) -> str | None:
    """The camera model a VISION-layout path names (``D01_Brand_Model/...``), if any."""
    for part in reversed(path.parent.parts):
        if m := DEVICE_DIR.match(part):
            return m.group(2)
    return None


def cut_patches(img: np.ndarray, count: int, selection: str, patch: int) -> np.ndarray:
    """uint8 ``(n, 3, patch, patch)`` patches of an ``HxWx3`` image (``count`` 0 = all cells)."""
    h, w = img.shape[:2]
    if h < patch or w < patch:
        raise DataError(f"image is {w}x{h}, smaller than one {patch}x{patch} patch")
    pos = select_positions(img, count, selection, np.random.default_rng(0), patch)
    cells = np.stack([img[y : y + patch, x : x + patch] for y, x in pos])
    return np.ascontiguousarray(cells.transpose(0, 3, 1, 2))


def _scores(model: Any, patches: np.ndarray, batch_size: int, device: str) -> np.ndarray:
    """Mean softmax over patches: ``(views, classes)``."""
    import torch

    total = None
    with torch.no_grad():
        for i in range(0, len(patches), batch_size):
            x = torch.from_numpy(patches[i : i + batch_size]).to(device).float().div_(255)
            probs = torch.softmax(model.module(x).float(), dim=-1).sum(dim=0)
            total = probs if total is None else total + probs
    assert total is not None
    return (total / len(patches)).cpu().numpy()


def identify(
    model: Any,
    images: list[Path],
    *,
    root: Path | None = None,
    patches: int = 64,
    selection: str | None = None,
    codec: Any = None,
    batch_size: int = 128,
    device: str = "cpu",
    skip_bad: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[ImageResult]:
    """Predict the camera model of each image (see the module docstring).

    Args:
        model: a :class:`mdfr.trained.TrainedModel`.
        images: image files.
        root: paths in the results are relative to it when possible.
        patches: patches per image (0 = every grid cell).
        selection: ``grid``, ``quality`` or ``homogeneous`` (default: the model's dataset's).
        codec: a codec object compressing each image first, or None.
        skip_bad: record unreadable images as errors instead of stopping at the first.

    Raises:
        DataError: an unreadable or too small image (unless ``skip_bad``).
    """
    classes, views = model.classes, model.views
    patch = int(model.info.get("patch", 64))
    selection = selection or str(model.info.get("selection") or "grid")
    out = []
    for path in images:
        shown = _shown(path, root)
        try:
            img = read_image(path)
            if codec is not None:
                img = np.asarray(codec.compress(img, path.name).image)
            cells = cut_patches(img, patches, selection, patch)
        except DataError as e:
            if not skip_bad:
                raise DataError(f"{path}: {str(e).removeprefix(f'{path}: ')}") from None
            out.append(ImageResult(shown, 0, camera_of(path), error=str(e)))
            continue
        mean = _scores(model, cells, batch_size, device)
        result = ImageResult(shown, len(cells), camera_of(path))
        for v, name in enumerate(views):
            k = int(mean[v].argmax())
            result.views[name] = {
                "model": classes[k],
                "confidence": round(float(mean[v, k]), 4),
                "probabilities": {
                    c: round(float(p), 4) for c, p in zip(classes, mean[v], strict=True)
                },
            }
        out.append(result)
        if progress:
            progress(shown)
    return out


def _shown(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def accuracy(results: list[ImageResult], views: list[str]) -> dict[str, float] | None:
    """Per view, the share of images with a known camera whose prediction is right."""
    known = [r for r in results if r.truth and not r.error]
    if not known:
        return None
    return {v: sum(r.views[v]["model"] == r.truth for r in known) / len(known) for v in views}
