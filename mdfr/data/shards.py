"""Patch shards: uncompressed Arrow IPC files, one record batch each, read memory-mapped.

Each row is one patch pair. Columns:

- ``original``, ``compressed``: ``fixed_size_list<uint8>[3*P*P]``, the patch in CHW order, so
  one patch is one contiguous 3×P×P block and a whole column is one contiguous
  ``(n, 3, P, P)`` uint8 array inside the file;
- ``label`` (int16, class index), ``image`` (int32, id in the manifest's image table),
  ``y``, ``x`` (int16, top-left corner in the image).

Writing each shard as a single, uncompressed record batch is what makes reading zero-copy:
:func:`open_shard` maps the file and views the column buffers as numpy arrays, so a batch is
one fancy-indexing copy out of the page cache, with no per-sample decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

PATCH = 64
SHARD_ROWS = 8192  # ~200 MB per shard with both columns at 64×64


def schema(patch: int = PATCH):
    import pyarrow as pa

    return pa.schema(
        [
            ("original", pa.list_(pa.uint8(), 3 * patch * patch)),
            ("compressed", pa.list_(pa.uint8(), 3 * patch * patch)),
            ("label", pa.int16()),
            ("image", pa.int32()),
            ("y", pa.int16()),
            ("x", pa.int16()),
        ]
    )


def _fixed(arr: np.ndarray, width: int):
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(arr).reshape(-1), type=pa.uint8())
    return pa.FixedSizeListArray.from_arrays(flat, width)


def write_shard(
    path: Path,
    original: np.ndarray,
    compressed: np.ndarray,
    label: np.ndarray,
    image: np.ndarray,
    pos: np.ndarray,
) -> None:
    """Write one shard of ``n`` rows (``original``/``compressed``: uint8 ``(n, 3, P, P)``)."""
    import pyarrow as pa

    patch = original.shape[-1]
    width = 3 * patch * patch
    batch = pa.record_batch(
        [
            _fixed(original, width),
            _fixed(compressed, width),
            pa.array(label.astype(np.int16)),
            pa.array(image.astype(np.int32)),
            pa.array(pos[:, 0].astype(np.int16)),
            pa.array(pos[:, 1].astype(np.int16)),
        ],
        schema=schema(patch),
    )
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)


@dataclass
class Shard:
    """Zero-copy numpy views of one memory-mapped shard.

    Attributes:
        original, compressed: uint8 ``(n, 3, P, P)`` views into the mapped file.
        label, image, y, x: small per-row columns (also views).
    """

    original: np.ndarray
    compressed: np.ndarray
    label: np.ndarray
    image: np.ndarray
    y: np.ndarray
    x: np.ndarray
    _keepalive: object = None  # the memory map and reader the views point into

    def __len__(self) -> int:
        return len(self.label)


def _patches(column, patch: int) -> np.ndarray:
    values = column.flatten()  # respects the array offset, still zero-copy
    return values.to_numpy(zero_copy_only=True).reshape(len(column), 3, patch, patch)


def open_shard(path: Path) -> Shard:
    """Map a shard file; nothing is read until the arrays are indexed."""
    import pyarrow as pa

    source = pa.memory_map(str(path), "r")
    reader = pa.ipc.open_file(source)
    if reader.num_record_batches != 1:
        raise ValueError(f"{path}: expected one record batch, found {reader.num_record_batches}")
    batch = reader.get_batch(0)
    width = batch.schema.field("original").type.list_size
    patch = int(round((width // 3) ** 0.5))

    def col(name: str) -> np.ndarray:
        return batch.column(name).to_numpy(zero_copy_only=True)

    return Shard(
        original=_patches(batch.column("original"), patch),
        compressed=_patches(batch.column("compressed"), patch),
        label=col("label"),
        image=col("image"),
        y=col("y"),
        x=col("x"),
        _keepalive=(source, reader, batch),
    )


class ShardWriter:
    """Buffers one split's patches and writes a shard each time ``rows`` are collected.

    Args:
        folder: dataset folder being written.
        split: ``train``, ``val`` or ``test`` (file names ``<split>-00000.arrow``...).
        patch: patch side.
        rows: rows per shard.
    """

    def __init__(self, folder: Path, split: str, patch: int = PATCH, rows: int = SHARD_ROWS):
        self.folder, self.split, self.patch, self.rows = folder, split, patch, rows
        self.files: list[str] = []
        self.count = 0
        self._parts: list[tuple[np.ndarray, ...]] = []
        self._buffered = 0

    def add(
        self,
        original: np.ndarray,
        compressed: np.ndarray,
        label: int,
        image: int,
        pos: np.ndarray,
    ) -> None:
        """Add the ``n`` patches of one image (uint8 ``(n, 3, P, P)`` each)."""
        n = len(original)
        self._parts.append(
            (original, compressed, np.full(n, label), np.full(n, image), np.asarray(pos))
        )
        self._buffered += n
        self.count += n
        while self._buffered >= self.rows:
            self._flush(self.rows)

    def close(self) -> None:
        """Write what is left (an empty split writes no file)."""
        if self._buffered:
            self._flush(self._buffered)

    def _flush(self, rows: int) -> None:
        cols = [np.concatenate(c) for c in zip(*self._parts, strict=True)]
        head, tail = [c[:rows] for c in cols], [c[rows:] for c in cols]
        name = f"{self.split}-{len(self.files):05d}.arrow"
        write_shard(self.folder / name, *head)
        self.files.append(name)
        self._buffered -= rows
        self._parts = [tuple(tail)] if self._buffered else []
