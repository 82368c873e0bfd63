"""Accuracy, per-camera-model accuracy and confusion matrices (the paper's Fig. 4)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def predict(
    fn: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``fn`` (images -> logits) over ``(images, labels)`` batches.

    Returns:
        (predicted class ids, true class ids) as int64 arrays.
    """
    preds, labels = [], []
    for x, y in batches:
        preds.append(fn(x).argmax(dim=1).cpu())
        labels.append(y.cpu())
    if not preds:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return torch.cat(preds).numpy().astype(np.int64), torch.cat(labels).numpy().astype(np.int64)


def accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction correct; NaN for an empty split (so it never passes for a perfect score)."""
    return float((pred == true).mean()) if len(true) else float("nan")


def balanced_accuracy(pred: np.ndarray, true: np.ndarray, num_classes: int) -> float:
    """Mean per-class recall over the classes present in ``true`` (NaN for an empty split).

    Unlike accuracy it cannot be inflated by class imbalance: a predictor that always answers
    the largest class scores exactly ``1 / classes present``.
    """
    if not len(true):
        return float("nan")
    cm = confusion_matrix(pred, true, num_classes)
    totals = cm.sum(axis=1)
    present = totals > 0
    return float(np.mean(np.diag(cm)[present] / totals[present]))


def confusion_matrix(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (true, pred), 1)
    return cm


def per_class_accuracy(cm: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Recall of each class (diagonal over row sums); NaN where a class has no test patches."""
    totals = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.diag(cm) / totals
    return {name: float(a) for name, a in zip(classes, acc, strict=True)}


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix as a PNG (Fig. 4 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    n = len(classes)
    size = max(4.0, 0.35 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted camera model")
    ax.set_ylabel("true camera model")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title}\naccuracy {100 * acc:.1f}%", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
