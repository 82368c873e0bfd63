"""The offline default dataset: synthetic cameras photographing scikit-image's photos.

``synthesize(out, models, images_per_device, size, seed)`` writes a dataset in VISION's layout::

    out/
      cameras.json                                  what was simulated (parameters, seed)
      D01_Samsung_GalaxySim3/images/nat/D01_I_nat_0001.jpg
      D01_Samsung_GalaxySim3/images/flat/D01_I_flat_0001.jpg
      D02_Samsung_GalaxySim3/...                    a second device of the same model
      D03_Apple_iPhoneSim5c/...

Every third model (the 1st, 4th, 7th, ...) has two devices, as several VISION models do; the
label is the model, so a CMI net must generalise across a model's devices. Camera pipelines
are in :mod:`mdfr.data.camera`, scene content in :mod:`mdfr.data.scenes` (independent of the
camera; every image has its own crop). All randomness comes from ``numpy`` generators seeded
by ``(seed, purpose, indices)``, so the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mdfr.data.camera import CameraModel, device_prnu, encode_jpeg, make_models, render
from mdfr.data.scenes import flat_scene, natural_scene
from mdfr.errors import UsageError

# VISION-style Brand_Model names; "Sim" marks them as simulated so reports never pass them off
# as the real cameras.
MODEL_NAMES = (
    "Samsung_GalaxySim3",
    "Apple_iPhoneSim5c",
    "Huawei_PSim9",
    "LG_DSim290",
    "Sony_XperiaSimZ1",
    "OnePlus_ASim3000",
    "Xiaomi_RedmiSimNote3",
    "Asus_ZenfoneSim2",
    "Lenovo_PSim70A",
    "Microsoft_LumiaSim640",
    "Wiko_RidgeSim4G",
    "Apple_iPadSimMini",
    "Samsung_GalaxyTabSimA",
    "Huawei_HonorSim5c",
    "Apple_iPhoneSim6",
    "Samsung_GalaxySimS5",
)
FORMAT = "mdfr-synth/1"

# Seed-stream purposes: each gets its own independent generator.
_MODELS, _DEVICE, _IMAGE = 1, 2, 3


@dataclass(frozen=True)
class Device:
    """One simulated device: VISION id (``D01``), folder name and camera model."""

    id: str
    model: CameraModel

    @property
    def folder(self) -> str:
        return f"{self.id}_{self.model.name}"


def plan_devices(models: int, seed: int) -> list[Device]:
    """The devices ``synthesize`` creates: every third model gets two devices."""
    if not 1 <= models <= len(MODEL_NAMES):
        raise UsageError(f"--models must be 1-{len(MODEL_NAMES)}, got {models}")
    cams = make_models(list(MODEL_NAMES[:models]), np.random.default_rng([seed, _MODELS]))
    devices: list[Device] = []
    for k, cam in enumerate(cams):
        for _ in range(2 if k % 3 == 0 else 1):
            devices.append(Device(f"D{len(devices) + 1:02d}", cam))
    return devices


def _params(
    models: int, images_per_device: int, flat_per_device: int, size: int, seed: int
) -> dict[str, object]:
    """What identifies a synthetic dataset (stored in ``cameras.json``)."""
    return {
        "format": FORMAT,
        "models": models,
        "images_per_device": images_per_device,
        "flat_per_device": flat_per_device,
        "size": size,
        "seed": seed,
    }


def synthesize(
    out: str | Path,
    models: int = 4,
    images_per_device: int = 20,
    size: int = 256,
    seed: int = 0,
    flat_per_device: int | None = None,
    force: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write a synthetic camera dataset in VISION's layout.

    Args:
        out: target folder. If it already holds a dataset made with the same arguments it is
            reused; one made with other arguments is replaced only with ``force``; any other
            non-empty folder is an error.
        models: number of camera models (1-16).
        images_per_device: natural (``nat``) images per device.
        size: image side in pixels (square images; at least 64).
        seed: master seed; everything is deterministic given the arguments.
        flat_per_device: flat-field (``flat``) images per device; default a quarter of
            ``images_per_device`` (at least one).
        force: replace a synthetic dataset made with other arguments (a folder that is not a
            synthetic dataset is never replaced).
        progress: show a tqdm progress bar.
        log: receives one-line status messages (e.g. ``print``).

    Returns:
        The dataset folder.

    Raises:
        UsageError: bad arguments, or ``out`` holds something we may not replace.
    """
    out = Path(out)
    if flat_per_device is None and isinstance(images_per_device, int):
        flat_per_device = max(1, images_per_device // 4)
    _check_int("--images-per-device", images_per_device, 1, MAX_IMAGES)
    _check_int("--flat-per-device", flat_per_device, 0, MAX_IMAGES)
    # Above MAX_SIZE one float64 image plane alone outgrows a workstation's memory.
    _check_int("--size", size, 64, MAX_SIZE, "at least one 64x64 patch")
    _check_int("--seed", seed, 0, 2**32 - 1, "numpy's seed range")
    params = _params(models, images_per_device, flat_per_device, size, seed)
    devices = plan_devices(models, seed)
    say = log or (lambda _msg: None)

    meta = out / "cameras.json"
    if _reusable(out, params, force):
        say(f"reused synthetic dataset {out} (same arguments)")
        return out
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    jobs = [
        (d_idx, dev, subset, i)
        for d_idx, dev in enumerate(devices)
        for subset, count in (("nat", images_per_device), ("flat", flat_per_device))
        for i in range(1, count + 1)
    ]
    try:
        _write_images(tmp, devices, jobs, size, seed, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    doc = {
        **params,
        "devices": {d.id: d.model.name for d in devices},
        "cameras": [m.to_dict() for m in {d.model.name: d.model for d in devices}.values()],
    }
    (tmp / "cameras.json").write_text(json.dumps(doc, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(out)
    except OSError:
        # A parallel run (e.g. two sweep drivers) finished first: fine if it made the same.
        shutil.rmtree(tmp, ignore_errors=True)
        if _read_params(meta) != params:
            raise
    say(f"wrote {len(jobs)} images of {models} models ({len(devices)} devices) to {out}")
    return out


def _reusable(out: Path, params: dict[str, Any], force: bool) -> bool:
    """True when ``out`` already holds this dataset; raises when it may not be replaced."""
    meta = out / "cameras.json"
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return False
    if meta.is_file() and _read_params(meta) == params:
        return True
    if not meta.is_file():
        # Never delete a folder we did not make (it may hold someone's real photos).
        raise UsageError(f"{out} exists and is not a synthetic dataset; choose another --out")
    if not force:
        raise UsageError(
            f"{out} holds a synthetic dataset made with other arguments; "
            "choose another --out or pass --force to replace it"
        )
    return False


MAX_SIZE = 4096
MAX_IMAGES = 10_000


def _check_int(name: str, value: object, lo: int, hi: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        note = f" ({why})" if why else ""
        raise UsageError(f"{name} must be an integer from {lo} to {hi}{note}, got {value!r}")


def _write_images(
    tmp: Path,
    devices: list[Device],
    jobs: list[tuple[int, Device, str, int]],
    size: int,
    seed: int,
    progress: bool,
) -> None:
    """Render and encode every ``(device index, device, subset, number)`` job into ``tmp``."""
    prnus = {
        dev.id: device_prnu(dev.model, np.random.default_rng([seed, _DEVICE, d]), size)
        for d, dev in enumerate(devices)
    }
    bar = _progress(len(jobs), progress, "synth")
    for d_idx, dev, subset, i in jobs:
        rng = np.random.default_rng([seed, _IMAGE, d_idx, 0 if subset == "nat" else 1, i])
        scene = natural_scene(rng, size) if subset == "nat" else flat_scene(rng, size)
        img = render(scene, dev.model, prnus[dev.id], rng)
        folder = tmp / dev.folder / "images" / subset
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{dev.id}_I_{subset}_{i:04d}.jpg").write_bytes(
            encode_jpeg(img, dev.model, dev.id)
        )
        bar.update(1)
    bar.close()


def _read_params(meta: Path) -> dict[str, object] | None:
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    keys = _params(0, 0, 0, 0, 0).keys()
    return {k: doc.get(k) for k in keys} if isinstance(doc, dict) else None


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", leave=False)
