"""Figures of a report: Fig. 4 confusion matrices, Fig. 2 spectra, and search plots.

All drawing is matplotlib on the Agg backend (no display). Confusion matrices are the PNGs
the trial itself logged to MLflow (``mdfr.evaluate.plot_confusion``), not redrawn, so the
report shows exactly what the run recorded; the ``.npy`` counts beside them give the
per-model accuracies.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mdfr.data.shards import open_shard
from mdfr.data.spectra import draw_figure, spectrum_stats
from mdfr.report.tables import VIEWS


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- Fig. 4


def confusion_from_artifacts(
    artifacts: Path, out_dir: Path
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Counts and copied PNGs of ``confusion_{original,compressed,restored}`` in a run's
    downloaded artifact folder.

    Returns:
        (view -> count matrix, view -> PNG path relative to ``out_dir``) for the views found.
    """
    counts: dict[str, np.ndarray] = {}
    pngs: dict[str, str] = {}
    fig_dir = out_dir / "figures"
    for view in VIEWS:
        npy = artifacts / f"confusion_{view}.npy"
        png = artifacts / f"confusion_{view}.png"
        if npy.is_file():
            counts[view] = np.load(npy)
        if png.is_file():
            fig_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, fig_dir / png.name)
            pngs[view] = f"figures/{png.name}"
    return counts, pngs


def per_model_accuracy(cm: np.ndarray) -> list[float | None]:
    """Recall of each camera model (percent): diagonal over row sums; None without patches."""
    totals = cm.sum(axis=1)
    return [100.0 * cm[i, i] / t if t else None for i, t in enumerate(totals)]


# --------------------------------------------------------------------------- Fig. 2


def _chunks(
    dataset: Path, manifest: dict[str, Any], split: str, limit: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(original, compressed) uint8 chunks of ``split`` straight from the memory-mapped
    shards (no torch needed), at most ``limit`` patches in all."""
    left = limit
    for name in manifest["splits"][split]["shards"]:
        shard = open_shard(dataset / name)
        for i in range(0, len(shard), 2048):
            if left <= 0:
                return
            j = min(i + 2048, len(shard), i + left)
            left -= j - i
            yield np.array(shard.original[i:j]), np.array(shard.compressed[i:j])


def spectra(
    dataset: Path, manifest: dict[str, Any], out: Path, split: str = "train", limit: int = 4096
) -> tuple[Path, int]:
    """Draw Fig. 2 for ``split`` of a prepared dataset with :mod:`mdfr.data.spectra`.

    Returns:
        (the PNG, number of patches averaged).
    """
    available = int(manifest["splits"][split]["patches"])
    n = min(available, limit) if limit > 0 else available
    stats = spectrum_stats(_chunks(dataset, manifest, split, n))
    title = (
        f"{manifest['codec']['spec']}: {n} {split} patches of dataset {manifest['dataset_hash']}"
    )
    return draw_figure(stats, out, title=title), n


# --------------------------------------------------------------------------- search


def importances(values: dict[str, float], out: Path, title: str) -> Path:
    """Horizontal bars of parameter importances (largest on top)."""
    plt = _plt()
    names = list(values)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.4))
    ax.barh(names, [values[n] for n in names], color="#4477aa")
    ax.set_xlabel("importance (normalised)")
    ax.set_title(title)
    ax.set_xlim(0, max(1.0, max(values.values(), default=0) * 1.05))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _axis_positions(vals: list[Any], log: bool) -> tuple[list[float], list[tuple[float, str]]]:
    """Map one parameter's values to [0, 1] plus a few (position, label) ticks."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
        xs = [math.log10(v) if log and v > 0 else float(v) for v in vals]
        lo, hi = min(xs), max(xs)
        span = hi - lo or 1.0
        ticks = [(0.0, f"{min(vals):.3g}"), (1.0, f"{max(vals):.3g}")] if hi > lo else []
        return [(x - lo) / span if hi > lo else 0.5 for x in xs], ticks or [(0.5, f"{vals[0]:.3g}")]
    cats = sorted({str(v) for v in vals})
    step = 1.0 / max(len(cats) - 1, 1)
    pos = {c: (i * step if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
    return [pos[str(v)] for v in vals], [(p, c) for c, p in pos.items()]


def parallel_coordinates(
    trials: list[dict[str, Any]], params: list[str], logs: set[str], objective: str, out: Path
) -> Path:
    """One line per completed trial across one vertical axis per parameter and a last axis
    for the objective; colour = objective (bright = better for ``max``)."""
    plt = _plt()
    axes_names = [*params, objective]
    columns = [[t["params"][p] for t in trials] for p in params] + [[t["value"] for t in trials]]
    mapped = [
        _axis_positions(col, name in logs) for col, name in zip(columns, axes_names, strict=True)
    ]
    values = np.array([t["value"] for t in trials], dtype=float)
    lo, hi = float(values.min()), float(values.max())
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(max(6, 1.9 * len(axes_names)), 4.8))
    order = np.argsort(values)  # best drawn last, on top
    for i in order:
        ys = [m[0][i] for m in mapped]
        c = cmap((values[i] - lo) / (hi - lo) if hi > lo else 0.5)
        ax.plot(range(len(axes_names)), ys, color=c, alpha=0.8, lw=1.4)
    for x, (_, ticks) in enumerate(mapped):
        ax.axvline(x, color="0.3", lw=0.8)
        for y, label in ticks:
            ax.text(x + 0.03, y, label, fontsize=7, va="center")
    ax.set_xticks(range(len(axes_names)))
    ax.set_xticklabels([f"{n}{' (log)' if n in logs else ''}" for n in axes_names], fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes_names) - 0.5)
    ax.set_ylim(-0.08, 1.08)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    fig.colorbar(sm, ax=ax, label=objective, fraction=0.04)
    ax.set_title(f"parallel coordinates: {len(trials)} completed trials")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- attack rate

# One colour per curve (original, compressed, then the setups), one marker per codec family.
_CURVE_COLOURS = ("#444444", "#cc3311", "#0077bb", "#009988", "#ee7733", "#aa3377", "#33bbee")
_FAMILY_MARKERS = ("o", "s", "^", "D", "v", "P")


def attack_rate(
    pts: list[Any],
    curves: list[str],
    labels: dict[str, str],
    marks: list[dict[str, Any]],
    out: Path,
) -> Path:
    """Accuracy against bpp (left) and PSNR (right): one line per (curve, codec family) with
    95% CI error bars, half of the original accuracy dotted, and ``marks`` (where a curve
    first falls below it, from :func:`mdfr.report.attack.half_point`) as stars.

    Colour tells the curve, marker and line style the codec family (the family with the most
    rates drawn solid).

    Args:
        pts: :class:`mdfr.report.attack.AttackPoint` s.
        curves: curve names to draw; ``labels`` gives their legend text.
        marks: crossing points (``bpp``, ``psnr``, ``threshold``, ``curve``) to mark.
    """
    plt = _plt()
    counts: dict[str, int] = {}
    for p in pts:
        counts[p.family] = counts.get(p.family, 0) + 1
    fams = sorted(counts, key=lambda f: (-counts[f], f))
    colour = {c: _CURVE_COLOURS[i % len(_CURVE_COLOURS)] for i, c in enumerate(curves)}
    style = {
        f: (_FAMILY_MARKERS[i % len(_FAMILY_MARKERS)], "-" if i == 0 else "--")
        for i, f in enumerate(fams)
    }
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.4), sharey=True)
    for ax, x_key, x_label in (
        (axes[0], "bpp", "bits per pixel (measured from the bitstreams)"),
        (axes[1], "psnr", "PSNR of the compressed images, dB"),
    ):
        for fam in fams:
            mine = sorted(
                (p for p in pts if p.family == fam and getattr(p, x_key) is not None),
                key=lambda p: getattr(p, x_key),
            )
            for curve in curves:
                xyz = [
                    (getattr(p, x_key), r.summary.mean, r.summary.half or 0.0)
                    for p in mine
                    if (r := p.curves.get(curve)) is not None and r.summary.mean is not None
                ]
                if xyz:
                    xs, ys, errs = zip(*xyz, strict=True)
                    marker, ls = style[fam]
                    ax.errorbar(
                        xs, ys, yerr=errs, color=colour[curve], marker=marker, ls=ls,
                        capsize=3, lw=1.6, ms=6,
                    )  # fmt: skip
        for m in marks:
            if m.get(x_key) is not None and m["curve"] in colour:
                ax.axvline(m[x_key], color=colour[m["curve"]], ls=":", lw=1)
                ax.plot(
                    [m[x_key]], [m["threshold"]], marker="*", ms=16, color=colour[m["curve"]],
                    mec="k", zorder=5,
                )  # fmt: skip
        for t in {round(m["threshold"], 6) for m in marks if m.get("threshold") is not None}:
            ax.axhline(t, color="0.5", ls=":", lw=1)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy, % (mean ± 95% CI over seeds)")
    axes[0].set_title("accuracy against rate (★: first below half of original, dotted)")
    axes[1].set_title("accuracy against distortion")
    handles = [plt.Line2D([], [], color=colour[c], lw=2, label=labels[c]) for c in curves]
    handles += [
        plt.Line2D([], [], color="0.3", marker=style[f][0], ls=style[f][1], label=f) for f in fams
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.05 + 0.035 * ((len(handles) - 1) // 3), 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
