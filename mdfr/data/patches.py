"""``prepare``: camera images + a codec -> paired patch shards, manifest and amplitude template.

Steps: index the VISION layout; choose up to N images per model (balanced over devices); split
them by image or device; compress every image with the codec; cut P×P patches at the same
positions in the original and the compressed image; write one Arrow shard series per split
(see :mod:`mdfr.data.shards`), ``amplitude_increment.npy`` from the training split only (see
:mod:`mdfr.data.spectra`) and ``manifest.json`` last.

Everything is written into a hidden sibling folder and renamed into place at the end, so a
folder at the target path is always complete. A target that already holds a dataset with the
same content hash (see :mod:`mdfr.data.manifest`) is reused without recomputing anything.

Within each split, images are written in a seeded random order (not grouped by camera), so a
contiguous run of rows never stands for one camera model.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mdfr.data.codecs import create_codec
from mdfr.data.manifest import (
    FORMAT,
    INCREMENT,
    MANIFEST,
    dataset_hash,
    inputs_digest,
    is_complete,
    originals_hash,
    summary,
    write_manifest,
)
from mdfr.data.selection import SELECTIONS, select_positions
from mdfr.data.shards import PATCH, SHARD_ROWS, ShardWriter
from mdfr.data.spectra import IncrementAccumulator
from mdfr.data.splits import SPLIT_BY, SPLITS, assign_splits, choose_images
from mdfr.data.vision import SUBSETS, ImageRecord, read_image, scan
from mdfr.errors import DataError, UsageError

# Seed-stream purposes.
_CHOOSE, _SPLIT, _ORDER, _POSITIONS = 1, 2, 3, 4


def _options(**opts: Any) -> dict[str, Any]:
    subsets = opts["subsets"]
    if isinstance(subsets, str):
        subsets = [s.strip() for s in subsets.split(",") if s.strip()]
    subsets = list(dict.fromkeys(subsets))
    bad = [s for s in subsets if s not in SUBSETS]
    if bad or not subsets:
        raise UsageError(f"--subsets {','.join(subsets)}: choose from {', '.join(SUBSETS)}")
    if opts["selection"] not in SELECTIONS:
        raise UsageError(f"--selection must be one of {', '.join(SELECTIONS)}")
    if opts["split_by"] not in SPLIT_BY:
        raise UsageError(f"--split-by must be one of {', '.join(SPLIT_BY)}")
    for key in ("images_per_model", "patches_per_image", "seed"):
        if int(opts[key]) < 0:
            raise UsageError(f"--{key.replace('_', '-')} must be >= 0, got {opts[key]}")
    val, test = float(opts["val_frac"]), float(opts["test_frac"])
    # Every trial selects on val and reports on test: an empty split is a dataset no trial
    # can use, so it is refused here rather than after an epoch of training.
    for name, frac in (("--val-frac", val), ("--test-frac", test)):
        if not 0 < frac < 1:  # also refuses nan
            raise UsageError(
                f"{name} {frac:g}: must be above 0 and below 1 (every trial validates on val "
                "and reports on test)"
            )
    if val + test >= 1:
        raise UsageError(
            f"--val-frac {val:g} + --test-frac {test:g} = {val + test:g} leaves no training "
            "images; their sum must be below 1"
        )
    return {
        "subsets": subsets,
        "images_per_model": int(opts["images_per_model"]),
        "patches_per_image": int(opts["patches_per_image"]),
        "selection": opts["selection"],
        "split_by": opts["split_by"],
        "val_frac": val,
        "test_frac": test,
        "seed": int(opts["seed"]),
        "skip_bad": bool(opts["skip_bad"]),
    }


def prepare(
    images: str | Path,
    codec: Any,
    out: str | Path,
    subsets: str | list[str] | tuple[str, ...] = ("nat", "flat"),
    images_per_model: int = 100,
    patches_per_image: int = 16,
    selection: str = "grid",
    split_by: str = "image",
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
    skip_bad: bool = False,
    force: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    device: str | None = None,
) -> Path:
    """Prepare (or reuse) a paired patch dataset.

    Args:
        images: VISION-layout image folder.
        codec: a codec spec (``jpeg:50``, ``learned:ckpt.pt``, ...) or a codec object.
        out: dataset folder to create; reused when it holds a dataset with the same hash,
            replaced (atomically) when it holds another one.
        subsets: scene subsets to read (list or comma-separated).
        images_per_model: at most this many images per camera model (0 = all).
        patches_per_image: patches per image (0 = every grid cell).
        selection: ``grid``, ``quality`` or ``homogeneous`` (see :mod:`mdfr.data.selection`).
        split_by: ``image`` or ``device`` (see :mod:`mdfr.data.splits`).
        val_frac, test_frac: fractions of each model's images for validation and test.
        seed: seeds image choice, split, order and patch positions.
        skip_bad: skip unusable folders and images (counted in the manifest) instead of
            failing on the first one.
        force: rebuild even when an identical dataset exists.
        progress: show tqdm progress bars.
        log: receives one-line status messages (e.g. ``print``).
        device: where learned codecs run (``None``/``auto``, ``cpu``, ``cuda``).

    Returns:
        The dataset folder.

    Raises:
        UsageError: bad options or codec spec.
        DataError: unusable input (names the file and the problem), unless ``skip_bad``.
    """
    start = time.perf_counter()
    say = log or (lambda _msg: None)
    opts = _options(
        subsets=subsets,
        images_per_model=images_per_model,
        patches_per_image=patches_per_image,
        selection=selection,
        split_by=split_by,
        val_frac=val_frac,
        test_frac=test_frac,
        seed=seed,
        skip_bad=skip_bad,
    )
    out = Path(out).expanduser().resolve()
    index = scan(images, opts["subsets"], skip_bad=skip_bad)
    chosen = choose_images(index.images, opts["images_per_model"], _rng(seed, _CHOOSE))
    codec = create_codec(codec, device=device) if isinstance(codec, str) else codec

    identity = _identity(opts, codec, index.images, chosen)
    digest = dataset_hash(identity)
    if _reusable(out, digest, force):
        say(f"reused dataset {out} (hash {digest}): same inputs, options and codec")
        return out

    splits = assign_splits(
        chosen, opts["split_by"], opts["val_frac"], opts["test_frac"], _rng(seed, _SPLIT)
    )
    check_split_sizes(chosen, splits, opts)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    manifest = _build_in(tmp, index.root, chosen, splits, codec, opts, progress)
    manifest = _final_manifest(images, index, manifest, digest, identity, start, tmp)
    write_manifest(tmp, manifest)
    _publish(tmp, out, digest, say)
    say(_done_message(out, digest, manifest))
    return out


def _reusable(out: Path, digest: str, force: bool) -> bool:
    """Whether ``out`` already holds this dataset; refuses a folder that is not a dataset."""
    if not force and is_complete(out, digest):
        return True
    if out.exists() and (
        not out.is_dir() or (not (out / MANIFEST).is_file() and any(out.iterdir()))
    ):
        # Never replace a folder that is not one of our datasets.
        raise UsageError(f"{out} exists and is not a prepared dataset; choose another --out")
    return False


def _build_in(tmp: Path, *build_args: Any) -> dict[str, Any]:
    """:func:`_build` into a fresh private folder ``tmp``, removed again if it fails."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        return _build(tmp, *build_args)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _final_manifest(
    images: str | Path,
    index: Any,
    manifest: dict[str, Any],
    digest: str,
    identity: dict[str, Any],
    start: float,
    tmp: Path,
) -> dict[str, Any]:
    """The built manifest with its header; refuses (and removes ``tmp``) an empty split."""
    empty = [sp for sp in SPLITS if not manifest["splits"][sp]["patches"]]
    if empty:  # every image of a split was skipped as bad
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(
            f"{images}: no usable image left in split(s) {', '.join(empty)} after skipping "
            f"{len(manifest['skipped'])} bad input(s); fix or add images"
        )
    manifest["inputs"]["root"] = str(index.root)
    skipped = [{"path": p, "problem": m} for p, m in index.skipped]
    manifest["skipped"] = skipped + manifest["skipped"]
    return {
        "format": FORMAT,
        "dataset_hash": digest,
        "originals_hash": originals_hash(identity, manifest["images"]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - start, 2),
        **manifest,
        "identity": identity,
    }


def _identity(
    opts: dict[str, Any], codec: Any, scanned: list[ImageRecord], chosen: list[ImageRecord]
) -> dict[str, Any]:
    """What determines a dataset's content (its hash): options, codec, input images."""
    return {
        "format": FORMAT,
        "patch": PATCH,
        "options": opts,
        "codec": {"spec": codec.spec, "fingerprint": codec.fingerprint()},
        "inputs": inputs_digest(
            [r.rel_path for r in scanned], [(r.rel_path, r.path) for r in chosen]
        ),
    }


def _done_message(out: Path, digest: str, manifest: dict[str, Any]) -> str:
    n_skipped = len(manifest["skipped"])
    total = sum(s["patches"] for s in manifest["splits"].values())
    used = sum(s["images"] for s in manifest["splits"].values())
    note = f"; skipped {n_skipped} bad input(s), listed in manifest.json" if n_skipped else ""
    return (
        f"prepared {out} (hash {digest}): {total} patches from {used} images "
        f"in {manifest['seconds']:.1f} s{note}"
    )


def check_split_sizes(chosen: list[ImageRecord], splits: list[str], opts: dict[str, Any]) -> None:
    """Refuse a split assignment that leaves a split empty, or (split by image) a camera
    model out of a split: naming the model, its image count and the options that decide it.

    Raises:
        UsageError: too few images (or, split by device, devices) for three splits.
    """
    per_model: dict[str, Counter] = {}
    for rec, split in zip(chosen, splits, strict=True):
        per_model.setdefault(rec.model, Counter())[split] += 1
    if opts["split_by"] == "image":
        short = {m: c for m, c in sorted(per_model.items()) if any(not c[s] for s in SPLITS)}
        if short:
            m, c = next(iter(short.items()))
            more = f" (and {len(short) - 1} other model(s))" if len(short) > 1 else ""
            raise UsageError(
                f"camera model {m}{more}: {sum(c.values())} image(s) cannot fill three splits "
                f"with --val-frac {opts['val_frac']:g} --test-frac {opts['test_frac']:g} "
                f"(train/val/test {c['train']}/{c['val']}/{c['test']}); each model needs at "
                f"least 3 images: raise --images-per-model (now {opts['images_per_model']}, "
                "0 = all) or add images"
            )
        return
    totals = Counter(splits)
    empty = [s for s in SPLITS if not totals[s]]
    if empty:
        why = (
            "no camera model has two devices to hold one out"
            if "test" in empty
            else "too few images"
        )
        raise UsageError(
            f"--split-by device leaves split(s) {', '.join(empty)} empty ({why}); use "
            "--split-by image or add devices and images"
        )


def _rng(seed: int, purpose: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, *more])


def _psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return None if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _cut(img: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """uint8 ``(n, 3, P, P)`` patches (CHW) of ``img`` at ``pos``."""
    out = np.stack([img[y : y + PATCH, x : x + PATCH] for y, x in pos])
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _build(
    tmp: Path,
    root: Path,
    chosen: list[ImageRecord],
    splits: list[str],
    codec: Any,
    opts: dict[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """Compress, cut and write everything into ``tmp``; returns the manifest (no hash yet)."""
    from tqdm import tqdm

    classes = sorted({r.model for r in chosen})
    label_of = {m: i for i, m in enumerate(classes)}
    seed = opts["seed"]
    writers = {s: ShardWriter(tmp, s, PATCH, SHARD_ROWS) for s in SPLITS}
    increment = IncrementAccumulator(PATCH)
    table: list[dict[str, Any]] = [
        {"id": i, "path": r.rel_path, "model": r.model, "device": r.device, "subset": r.subset}
        for i, r in enumerate(chosen)
    ]
    perm = _rng(seed, _ORDER).permutation(len(chosen))
    order = [int(i) for s in SPLITS for i in perm if splits[i] == s]
    skipped: list[dict[str, str]] = []
    bar = tqdm(order, desc=f"prepare ({codec.spec})", unit="img", disable=not progress)
    for i in bar:
        rec, split, row = chosen[i], splits[i], table[i]
        try:
            original, compressed, nbytes = _compress(rec, codec)
        except DataError as e:
            if not opts["skip_bad"]:
                raise
            skipped.append({"path": str(rec.path), "problem": str(e)})
            row.update(split=None, skipped=str(e), patches=0)
            continue
        pos = select_positions(
            original, opts["patches_per_image"], opts["selection"], _rng(seed, _POSITIONS, i)
        )
        po, pc = _cut(original, pos), _cut(compressed, pos)
        writers[split].add(po, pc, label_of[rec.model], i, pos)
        if split == "train":
            increment.add(po, pc)
        row.update(
            split=split,
            patches=len(pos),
            bpp=round(8.0 * nbytes / (original.shape[0] * original.shape[1]), 5),
            psnr=None if (p := _psnr(original, compressed)) is None else round(p, 3),
            size=[original.shape[1], original.shape[0]],
        )
    bar.close()
    for wr in writers.values():
        wr.close()
    np.save(tmp / INCREMENT, increment.result())
    return _manifest(chosen, table, writers, classes, opts, codec, increment.count, skipped)


def _compress(rec: ImageRecord, codec: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """(original, compressed, bitstream bytes) of one image, checked to be usable."""
    original = read_image(rec.path)
    h, w = original.shape[:2]
    if h < PATCH or w < PATCH:
        raise DataError(f"{rec.path}: image is {w}x{h}, smaller than one {PATCH}x{PATCH} patch")
    result = codec.compress(original, rec.rel_path)
    compressed = np.asarray(result.image)
    if compressed.shape != original.shape or compressed.dtype != np.uint8:
        raise DataError(
            f"{rec.path}: codec {codec.spec} returned {compressed.dtype} "
            f"{compressed.shape}, expected uint8 {original.shape}"
        )
    return original, compressed, int(result.nbytes)


def _manifest(
    chosen: list[ImageRecord],
    table: list[dict[str, Any]],
    writers: dict[str, ShardWriter],
    classes: list[str],
    opts: dict[str, Any],
    codec: Any,
    increment_patches: int,
    skipped: list[dict[str, str]],
) -> dict[str, Any]:
    """The dataset's manifest (without its hash and timings, which prepare adds)."""
    return {
        "format": FORMAT,
        "patch": PATCH,
        "classes": classes,
        "devices": {r.device: r.model for r in chosen},
        "inputs": {"images": len(chosen)},
        "options": opts,
        "codec": {"spec": codec.spec, "fingerprint": codec.fingerprint()},
        "splits": _split_summary(table, writers, classes),
        "stats": {
            "bpp": summary([r.get("bpp") for r in table if r.get("split")]),
            "psnr": summary([r.get("psnr") for r in table if r.get("split")]),
        },
        "amplitude_increment": {
            "file": INCREMENT,
            "split": "train",
            "patches": increment_patches,
            "shape": [3, PATCH, PATCH],
            "convention": "mean|fft2(compressed/255)| - mean|fft2(original/255)| per channel, "
            "unnormalised FFT, DC at [0, 0]",
        },
        "skipped": skipped,
        "images": table,
    }


def _split_summary(
    table: list[dict[str, Any]], writers: dict[str, ShardWriter], classes: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s, wr in writers.items():
        rows = [r for r in table if r.get("split") == s]
        patches = Counter()
        images = Counter()
        for r in rows:
            patches[r["model"]] += r["patches"]
            images[r["model"]] += 1
        out[s] = {
            "patches": wr.count,
            "images": len(rows),
            "shards": wr.files,
            "per_model": {m: {"images": images[m], "patches": patches[m]} for m in classes},
            "bpp": summary([r["bpp"] for r in rows]),
            "psnr": summary([r["psnr"] for r in rows]),
        }
    return out


def _publish(tmp: Path, out: Path, digest: str, say: Callable[[str], None]) -> None:
    """Move the finished ``tmp`` to ``out``, replacing a different dataset there."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        say(f"replacing the dataset at {out} (it was made from other inputs or options)")
    try:
        tmp.rename(out)
    except OSError:
        # Another process published the same target meanwhile (parallel sweep stages): keep
        # theirs if it is this very dataset, otherwise report the clash.
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_complete(out, digest):
            raise DataError(f"{out}: another process wrote a different dataset here") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
