"""Torch access to a prepared dataset: whole batches fancy-indexed out of memory-mapped shards.

``make_loader`` yields ``(original_u8[B,3,64,64], compressed_u8[B,3,64,64], label_i64[B])``;
the engine converts to float on its device. A batch is built with one numpy fancy-indexing
copy per shard it touches (no per-sample Python work, no decoding), which is what keeps a GPU
fed from two CPU cores. Indices inside a batch are sorted before the copy for page-cache
locality; which patches form a batch is still a seeded shuffle.

Determinism: epoch ``e`` (the ``e``-th iteration over a loader) uses the permutation drawn from
``(seed, e)``, so two loaders built with the same arguments yield identical batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdfr.data.manifest import INCREMENT, load_manifest
from mdfr.data.shards import Shard, open_shard
from mdfr.errors import DataError

__all__ = ["PatchDataset", "load_amplitude_increment", "load_manifest", "make_loader"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def load_amplitude_increment(root: str | Path) -> torch.Tensor:
    """The dataset's average amplitude increment M, float32 ``(3, 64, 64)`` (training split;
    convention in :mod:`mdfr.data.spectra`)."""
    manifest = load_manifest(root)
    path = Path(root).expanduser() / manifest.get("amplitude_increment", {}).get("file", INCREMENT)
    try:
        arr = np.load(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable amplitude increment ({e})") from None
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


class PatchDataset(torch.utils.data.Dataset):
    """One split of a prepared dataset.

    ``ds[i]`` is one sample ``(original[3,64,64], compressed[3,64,64], label)``;
    ``ds[indices]`` (a sequence or array) is a whole batch, built with one copy.

    Args:
        root: dataset folder (holds ``manifest.json``).
        split: ``train``, ``val`` or ``test``.
        limit: use only ``limit`` patches (0 = all): a fixed random subset, the same for
            every caller and seed (so limited evaluations stay comparable across trials),
            spread over the whole split rather than a prefix of a few images.

    Attributes:
        classes: camera-model names; label ``i`` is ``classes[i]``.
        labels: int64 label of every patch (numpy).
        image_ids: manifest image id of every patch (numpy), for per-image evaluation.
    """

    def __init__(self, root: str | Path, split: str, limit: int = 0):
        self.root = Path(root).expanduser()
        self.manifest = load_manifest(self.root)
        splits = self.manifest["splits"]
        if split not in splits:
            raise DataError(f"{self.root}: no split {split!r}; have {', '.join(splits)}")
        self.split = split
        self.classes: list[str] = list(self.manifest["classes"])
        self.files = [self.root / f for f in splits[split]["shards"]]
        self._shards: list[Shard] | None = None
        shards = self._open()
        sizes = np.array([len(s) for s in shards], dtype=np.int64)
        total = int(sizes.sum())
        # rows[i] = row of dataset index i in the concatenated shards (None = identity)
        self.rows: np.ndarray | None = None
        if 0 < limit < total:
            self.rows = np.sort(np.random.default_rng(0).choice(total, limit, replace=False))
        self.length = total if self.rows is None else limit
        # offsets[k] = first global row of shard k
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        labels = np.concatenate([s.label for s in shards] or [np.zeros(0, np.int16)])
        images = np.concatenate([s.image for s in shards] or [np.zeros(0, np.int32)])
        keep = slice(None) if self.rows is None else self.rows
        self.labels = labels.astype(np.int64)[keep]
        self.image_ids = images.astype(np.int64)[keep]

    def _open(self) -> list[Shard]:
        # Opened lazily per process: DataLoader workers get a pickled copy without the maps.
        if self._shards is None:
            try:
                self._shards = [open_shard(f) for f in self.files]
            except (OSError, ValueError) as e:
                raise DataError(f"{self.root}: unreadable shard ({e})") from None
        return self._shards

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_shards"] = None
        return state

    def __len__(self) -> int:
        return self.length

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: int | Sequence[int] | np.ndarray) -> Batch:
        if isinstance(index, int | np.integer):
            if not -self.length <= index < self.length:
                raise IndexError(f"patch {index} out of range for {self.length} patches")
            o, c, y = self.batch(np.array([int(index) % self.length]))
            return o[0], c[0], y[0]
        return self.batch(np.asarray(index, dtype=np.int64))

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """Batched fetch for ``torch.utils.data`` (one copy instead of one per sample)."""
        return self.batch(np.asarray(indices, dtype=np.int64))

    def batch(self, indices: np.ndarray) -> Batch:
        """Uint8 patch pairs and int64 labels of ``indices`` (global, < ``len(self)``)."""
        if indices.size and (indices.min() < 0 or indices.max() >= self.length):
            raise IndexError(f"patch index out of range for {self.length} patches")
        shards = self._open()
        labels = torch.from_numpy(self.labels[indices])
        if self.rows is not None:
            indices = self.rows[indices]
        n = len(indices)
        if len(shards) == 1:
            ori = shards[0].original[indices]
            comp = shards[0].compressed[indices]
        else:
            shape = (n, *shards[0].original.shape[1:]) if shards else (n, 3, 64, 64)
            ori = np.empty(shape, dtype=np.uint8)
            comp = np.empty(shape, dtype=np.uint8)
            which = np.searchsorted(self.offsets, indices, side="right") - 1
            for k in np.unique(which):
                mask = which == k
                local = indices[mask] - self.offsets[k]
                ori[mask] = shards[k].original[local]
                comp[mask] = shards[k].compressed[local]
        return torch.from_numpy(ori), torch.from_numpy(comp), labels


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yields sorted index arrays, one per batch; epoch ``e`` is shuffled with ``(seed, e)``.

    Args:
        n: dataset length.
        batch_size: patches per batch.
        shuffle: draw a new permutation every epoch (else sequential order).
        seed: base seed of the permutations.
        drop_last: drop a final short batch.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.drop_last = seed, drop_last
        self.epoch = 0

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        self.epoch += 1
        for b in range(len(self)):
            chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield np.sort(chunk) if self.shuffle else chunk


def make_loader(
    root: str | Path,
    split: str,
    batch_size: int,
    shuffle: bool,
    seed: int,
    limit: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over one split yielding ``(original_u8, compressed_u8, label_i64)`` batches.

    Args:
        root: dataset folder.
        split: ``train``, ``val`` or ``test``.
        batch_size: patches per batch.
        shuffle: reshuffle every epoch (deterministic per ``seed`` and epoch number).
        seed: shuffle seed.
        limit: use only the first ``limit`` patches of the split (0 = all).
        num_workers: worker processes (0 = load in this process, fastest for memory maps on
            few cores).
        pin_memory: page-lock batches for faster host-to-GPU copies.
        drop_last: drop the final short batch.
    """
    dataset = PatchDataset(root, split, limit=limit)
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last)
    # batch_size=None: each sampler item is a whole index array and dataset[indices] returns
    # the finished batch, so the DataLoader neither loops over samples nor collates.
    return torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
