"""Data loading throughput: the memory-mapped patch shards against per-sample JPEG decoding.

Both loaders yield the same training batches, ``(original_u8[B,3,64,64],
compressed_u8[B,3,64,64], label[B])``, and are measured in the same run:

* **shards**: :func:`mdfr.data.loader.make_loader`, as the engine uses it (shuffled, in-process);
* **PIL baseline**: the naive way, a ``Dataset`` whose ``__getitem__`` opens the original JPEG
  and the AI-compressed image (a mirror folder of JPEG files, as an external codec would leave
  them) with PIL, crops the 64×64 patch out of each and returns tensors; the default
  ``DataLoader`` collates. It runs in-process and with one worker process per usable core, and
  the faster of the two is the baseline.

Without ``--dataset`` a synthetic camera dataset is made (once; cached by its arguments) with
:func:`mdfr.data.synthetic.synthesize` and prepared with ``jpeg:50`` as the attack. The
baseline's cost grows with the image size (every patch decodes two whole images), so the
image side is recorded: VISION's photos are far larger than the synthetic ones, so the ratio
measured here is a lower bound of the one on real data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdfr.bench.machine import envelope, load_average
from mdfr.data.loader import load_manifest, make_loader
from mdfr.data.patches import prepare
from mdfr.data.shards import open_shard
from mdfr.data.synthetic import synthesize
from mdfr.errors import DataError, UsageError

DEFAULT_CACHE = Path("results/cache/bench")
# Synthetic dataset presets: (synthesize kwargs, prepare kwargs).
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # 12 images of 128 px, 4 patches each: a second to make, for tests and the sweep bench.
    "quick": ({"models": 2, "images_per_device": 2, "size": 128, "seed": 0}, {}),
    # 30 images of 768 px, 144 patches each (~4.3k patches, ~105 MB of shards): bigger than
    # the CPU caches, small enough to make in about half a minute.
    "standard": ({"models": 4, "images_per_device": 4, "size": 768, "seed": 0}, {}),
}
CODEC = "jpeg:50"


# --------------------------------------------------------------------------- datasets


def ensure_dataset(
    preset: str = "standard", cache: str | Path = DEFAULT_CACHE, log: Callable[[str], None] = print
) -> Path:
    """A prepared synthetic dataset for benchmarks, made once under ``cache``."""

    synth, _ = PRESETS[preset]
    cache = Path(cache).expanduser().resolve()
    t0 = time.perf_counter()
    images = synthesize(cache / f"vision-{preset}", **synth)
    out = prepare(
        images, CODEC, cache / f"data-{preset}", patches_per_image=0, images_per_model=0, seed=0
    )
    took = time.perf_counter() - t0
    if took > 2:
        log(f"loader: bench dataset {out} ready in {took:.1f} s")
    return out


def _mirror_quality(spec: str) -> int:
    # A jpeg:Q attack is stored as the JPEG file it is; other codecs' outputs as quality-90 JPEGs.
    scheme, _, arg = spec.partition(":")
    return int(arg) if scheme == "jpeg" and arg.isdigit() else 90


def pil_items(
    root: Path,
    split: str,
    cache: Path,
    limit: int = 4096,
    log: Callable[[str], None] = print,
) -> list[tuple[str, str, int, int, int]]:
    """``(original_jpeg, compressed_jpeg, y, x, label)`` of (a seeded subset of) ``split``.

    The baseline decodes a few hundred patches per second, so ``limit`` patches are plenty and
    keep the compressed-image mirror small on a real dataset. The mirror (under ``cache``,
    keyed by the dataset hash) holds the compressed images as files an external codec would
    leave; it is written on first use.

    Raises:
        DataError: the dataset's source images are not where its manifest says.
    """
    from PIL import Image

    manifest = load_manifest(root)
    src = Path(manifest.get("inputs", {}).get("root", ""))
    if not src.is_dir():
        raise DataError(
            f"{root}: its source images ({src or 'unknown'}) are not here; the PIL baseline "
            "needs them"
        )
    spec = manifest.get("codec", {}).get("spec", "")
    quality = _mirror_quality(spec)
    mirror = cache.expanduser().resolve() / "pil-mirror" / manifest["dataset_hash"]
    images = {int(r["id"]): r["path"] for r in manifest["images"]}
    items: list[tuple[str, str, int, int, int]] = []
    for name in manifest["splits"][split]["shards"]:
        shard = open_shard(root / name)
        for img, y, x, label in zip(shard.image, shard.y, shard.x, shard.label, strict=True):
            rel = images[int(img)]
            items.append((str(src / rel), str(mirror / rel), int(y), int(x), int(label)))
    if len(items) > limit:
        keep = np.sort(np.random.default_rng(0).choice(len(items), limit, replace=False))
        items = [items[i] for i in keep]
    t0 = time.perf_counter()
    todo = sorted({(o, c) for o, c, *_ in items if not Path(c).is_file()})
    for ori, comp in todo:
        Path(comp).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{comp}.tmp-{os.getpid()}.jpg"
        with Image.open(ori) as im:
            im.convert("RGB").save(tmp, quality=quality)
        os.replace(tmp, comp)
    if todo:
        log(
            f"loader: wrote {len(todo)} compressed images (JPEG q{quality}) to {mirror} in "
            f"{time.perf_counter() - t0:.1f} s"
        )
    return items


class JpegPatchDataset(torch.utils.data.Dataset):
    """The naive loader: every sample decodes two JPEG files and crops a patch from each.

    Args:
        items: from :func:`pil_items`.
        patch: patch side.
    """

    def __init__(self, items: list[tuple[str, str, int, int, int]], patch: int = 64):
        self.items = items
        self.patch = patch

    def __len__(self) -> int:
        return len(self.items)

    def _crop(self, path: str, y: int, x: int) -> torch.Tensor:
        from PIL import Image

        p = self.patch
        with Image.open(path) as im:
            arr = np.asarray(im.crop((x, y, x + p, y + p)).convert("RGB"))
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        ori, comp, y, x, label = self.items[i]
        return self._crop(ori, y, x), self._crop(comp, y, x), label


# --------------------------------------------------------------------------- timing


def _timed(batches: Callable[[], Iterable[Any]], seconds: float, min_batches: int) -> dict:
    """Patches/s over at least ``seconds`` and ``min_batches``, restarting epochs as needed.

    The first batch is not timed (worker start-up, first page faults of a cold epoch).
    """
    it: Iterator[Any] = iter(batches())

    def nxt() -> Any:
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(batches())
            return next(it)

    nxt()
    n = count = 0
    t0 = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds or count < min_batches:
        b = nxt()
        n += len(b[2])
        count += 1
        elapsed = time.perf_counter() - t0
    return {
        "patches": n,
        "batches": count,
        "seconds": round(elapsed, 3),
        "patches_per_s": round(n / elapsed, 1),
    }


def measure_shards(root: Path, batch: int, seconds: float, workers: int = 0) -> dict[str, Any]:
    """:func:`mdfr.data.loader.make_loader` as the engine builds it, after one warm epoch."""

    loader = make_loader(root, "train", batch_size=batch, shuffle=True, seed=0, num_workers=workers)
    for _ in loader:  # one untimed epoch: the shards into the page cache
        pass
    r = _timed(lambda: loader, seconds, min_batches=5)
    return {"loader": "shards", "batch": batch, "workers": workers, **r}


def measure_pil(
    items: list[tuple[str, str, int, int, int]], batch: int, seconds: float, workers: int
) -> dict[str, Any]:
    """The naive per-sample JPEG loader with the default DataLoader (shuffled)."""
    gen = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        JpegPatchDataset(items),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        generator=gen,
        # Workers kept across epochs: the baseline pays for decoding, not for process start-up.
        persistent_workers=workers > 0,
    )
    r = _timed(lambda: loader, seconds, min_batches=3)
    return {"loader": "pil", "batch": batch, "workers": workers, **r}


def run_loader_bench(
    dataset: str | Path | None = None,
    quick: bool = False,
    cache: str | Path = DEFAULT_CACHE,
    batch_sizes: tuple[int, ...] = (64, 256),
    seconds: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Shards against the PIL baseline, in one run; returns the result document.

    Args:
        dataset: a prepared dataset folder (default: the cached synthetic one).
        quick: tiny dataset and short timings (tests).
        cache: where the synthetic dataset and the compressed-image mirror live.
        batch_sizes: shard-loader batch sizes; the first is also the baseline's and the one the
            targets apply to (64 is the engine's default).
        seconds: timed seconds per measurement (default 3, quick 0.5).
        log: receives progress lines.
    """

    seconds = seconds if seconds is not None else (0.5 if quick else 3.0)
    cache = Path(cache)
    preset = "quick" if quick else "standard"
    root = Path(dataset).expanduser().resolve() if dataset else ensure_dataset(preset, cache, log)
    if not (root / "manifest.json").is_file():
        raise UsageError(f"--dataset {root}: not a prepared dataset (no manifest.json)")
    manifest = load_manifest(root)
    config = _config(root, manifest, None if dataset else preset, batch_sizes, seconds, quick)
    doc = envelope("loader", "cpu", config)
    shards = []
    for b in batch_sizes:
        r = measure_shards(root, b, seconds)
        shards.append(r)
        log(f"loader: shards      batch {b:4d}, in-process: {r['patches_per_s']:12.1f} patches/s")
    pil, baseline_note, pil_pool = _pil_baseline(root, cache, batch_sizes[0], seconds, log)
    main = shards[0]["patches_per_s"]
    best_pil = max((r["patches_per_s"] for r in pil), default=None)
    ratio = round(main / best_pil, 1) if best_pil else None
    if ratio:
        log(f"loader: shards / best PIL baseline = {ratio}x")
    doc["results"] = {
        "shards": shards,
        "pil": pil,
        "pil_skipped": baseline_note,
        "pil_patch_pool": pil_pool,
        "shards_patches_per_s": main,
        "pil_best_patches_per_s": best_pil,
        "ratio": ratio,
    }
    doc["targets"] = {
        "ratio_min": 10,
        "patches_per_s_min": 50_000,
        "applies_to": "2 CPU cores, batch 64",
        "met": (ratio is not None and ratio >= 10 and main >= 50_000),
    }
    doc["machine"]["load_average_end"] = load_average()
    return doc


def _config(
    root: Path,
    manifest: dict[str, Any],
    preset: str | None,
    batch_sizes: tuple[int, ...],
    seconds: float,
    quick: bool,
) -> dict[str, Any]:
    """What was measured: the dataset (its train split) and the timing settings."""
    train = manifest["splits"]["train"]
    sizes = [r.get("size") for r in manifest["images"] if r.get("split") == "train"]
    return {
        "dataset": str(root),
        "dataset_hash": manifest["dataset_hash"],
        "synthetic_preset": preset,
        "codec": manifest.get("codec", {}).get("spec"),
        "train_patches": train["patches"],
        "train_shards": len(train["shards"]),
        "shard_bytes": sum((root / f).stat().st_size for f in train["shards"]),
        "image_size": sizes[0] if sizes and all(s == sizes[0] for s in sizes) else sizes[:3],
        "batch_sizes": list(batch_sizes),
        "seconds_per_measurement": seconds,
        "quick": quick,
    }


def _pil_baseline(
    root: Path, cache: Path, batch: int, seconds: float, log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], str | None, int]:
    """(measurements, why skipped, patch pool) of per-sample JPEG decoding with PIL."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        items = pil_items(root, "train", cache, log=log)
    except DataError as e:
        log(f"loader: PIL baseline skipped: {e}")
        return [], str(e), 0
    pil = []
    for workers in sorted({0, cpus if cpus and cpus > 1 else 0}):
        r = measure_pil(items, batch, seconds, workers)
        pil.append(r)
        log(
            f"loader: PIL/JPEG    batch {batch:4d}, {workers} workers:  "
            f"{r['patches_per_s']:12.1f} patches/s"
        )
    return pil, None, len(items)
