"""Reader for the VISION folder layout (Shullani et al. 2017), real or synthetic.

Layout: ``<root>/<Dxx>_<Brand>_<Model>/images/<subset>/<file>`` with subsets ``flat``, ``nat``,
``natFBH``, ``natFBL``, ``natWA``. The label is the camera *model* (``Brand_Model``); several
devices (``Dxx``) share one model. Users may bring their own photos laid out the same way; file
names inside a subset folder are not constrained, only image suffixes count.

Every problem is a :class:`~mdfr.errors.DataError` naming the file or folder and what is wrong
(exit code 2). With ``skip_bad`` problems with single folders are collected instead, so a run
can go on and report how many inputs it skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mdfr.errors import DataError

SUBSETS = ("flat", "nat", "natFBH", "natFBL", "natWA")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
DEVICE_DIR = re.compile(r"^(D\d+)_([^_\s]+_\S+)$")
LAYOUT_HINT = "VISION layout: <root>/D01_Brand_Model/images/{flat,nat,...}/*.jpg"


@dataclass(frozen=True)
class ImageRecord:
    """One image of the dataset.

    Attributes:
        path: absolute file path.
        rel_path: path relative to the dataset root, with ``/`` separators.
        model: camera model (the label), e.g. ``Samsung_GalaxyS3Mini``.
        device: device id, e.g. ``D01``.
        subset: scene subset, e.g. ``nat``.
    """

    path: Path
    rel_path: str
    model: str
    device: str
    subset: str


@dataclass
class VisionIndex:
    """The images found under a root, sorted by relative path.

    Attributes:
        root: the dataset root.
        images: the images of the requested subsets.
        devices: device id -> model.
        skipped: ``(path, problem)`` for everything skipped with ``skip_bad``.
    """

    root: Path
    images: list[ImageRecord]
    devices: dict[str, str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        """Sorted model names (class index = position in this list)."""
        return sorted({r.model for r in self.images})


def scan(
    root: str | Path, subsets: tuple[str, ...] | list[str] = ("nat", "flat"), skip_bad=False
) -> VisionIndex:
    """Index the images of a VISION-layout folder.

    Args:
        root: the folder holding the ``Dxx_Brand_Model`` device folders.
        subsets: which ``images/<subset>`` folders to read.
        skip_bad: collect folder problems in ``skipped`` instead of raising.

    Raises:
        DataError: missing root, no device folders, a folder that does not fit the layout, a
            device folder with no images in ``subsets`` (unless ``skip_bad``), or no images at
            all.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown or not subsets:
        raise DataError(f"subsets {list(subsets)}: expected a selection of {', '.join(SUBSETS)}")
    entries = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not any(DEVICE_DIR.match(p.name) for p in entries):
        raise DataError(f"{root}: no device folders named like D01_Brand_Model ({LAYOUT_HINT})")

    images: list[ImageRecord] = []
    devices: dict[str, str] = {}
    skipped: list[tuple[str, str]] = []

    def problem(path: Path, message: str) -> None:
        if not skip_bad:
            raise DataError(f"{path}: {message}")
        skipped.append((str(path), message))

    for folder in entries:
        m = DEVICE_DIR.match(folder.name)
        if not m:
            problem(folder, f"folder name is not Dxx_Brand_Model ({LAYOUT_HINT})")
            continue
        device, model = m.groups()
        if device in devices:
            problem(folder, f"device id {device} is used by another folder too")
            continue
        if not (folder / "images").is_dir():
            problem(folder, f"no images/ folder ({LAYOUT_HINT})")
            continue
        found = []
        for subset in subsets:
            sub = folder / "images" / subset
            if not sub.is_dir():
                continue
            for f in sorted(sub.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    rel = f.relative_to(root).as_posix()
                    found.append(ImageRecord(f, rel, model, device, subset))
        if not found:
            problem(folder, f"empty model folder: no images in images/{{{','.join(subsets)}}}")
            continue
        devices[device] = model
        images.extend(found)
    if not images:
        raise DataError(f"{root}: no images in subsets {', '.join(subsets)} ({LAYOUT_HINT})")
    images.sort(key=lambda r: r.rel_path)
    return VisionIndex(root, images, devices, skipped)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 ``HxWx3`` RGB, fully (so truncation is detected).

    No EXIF rotation is applied: CMI traces live on the sensor grid as stored.

    Raises:
        DataError: the file is missing, unreadable, truncated or not an image.
    """
    from PIL import Image, ImageFile, UnidentifiedImageError

    # Another library may have switched truncated-image tolerance on; a truncated image must
    # fail here, not silently yield grey rows.
    tolerant, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.array(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: unreadable image (not a known image format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = "truncated image" if "truncated" in str(e) else "unreadable image"
        raise DataError(f"{path}: {reason} ({e})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = tolerant
    return arr
