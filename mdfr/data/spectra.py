"""Average Fourier spectra of patches: the amplitude-increment template and the paper's Fig. 2.

Convention (shared with MDFRNet's FFR, which must subtract the template from spectra computed
the same way): patch pixels scaled to [0, 1] float, per-channel 2-D FFT over the patch
(``numpy.fft.fft2`` / ``torch.fft.fft2`` with the default unnormalised "backward" norm), DC at
index ``[0, 0]`` (no ``fftshift``). The average amplitude increment is

    M[c, u, v] = mean_n |F(compressed_n)[c, u, v]| - mean_n |F(original_n)[c, u, v]|

over the patches of the *training split only* (test patches must not shape the model), a
float32 ``(3, P, P)`` array stored as ``amplitude_increment.npy`` beside the shards.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


def amplitude(patches_u8: np.ndarray) -> np.ndarray:
    """|FFT| per channel of uint8 ``(n, 3, P, P)`` patches on the [0, 1] scale (float64)."""
    return np.abs(np.fft.fft2(patches_u8.astype(np.float32) / 255.0))


class IncrementAccumulator:
    """Running mean of |F(compressed)| - |F(original)| over the patches it is fed."""

    def __init__(self, patch: int = 64):
        self.total = np.zeros((3, patch, patch), dtype=np.float64)
        self.count = 0

    def add(self, original: np.ndarray, compressed: np.ndarray) -> None:
        """Add uint8 ``(n, 3, P, P)`` patch pairs."""
        self.total += (amplitude(compressed) - amplitude(original)).sum(axis=0)
        self.count += len(original)

    def result(self) -> np.ndarray:
        """The mean increment, float32 ``(3, P, P)`` (zeros when nothing was added)."""
        return (self.total / max(self.count, 1)).astype(np.float32)


def spectrum_stats(chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Mean amplitude and mean phase (channel-averaged, ``fftshift``-ed for display) of
    original and compressed patches, fed as chunks of uint8 ``(n, 3, P, P)`` pairs."""
    sums: dict[str, np.ndarray] = {}
    count = 0
    for original, compressed in chunks:
        count += len(original)
        for name, data in (("original", original), ("compressed", compressed)):
            spec = np.fft.fft2(data.astype(np.float32) / 255.0)
            for kind, value in (("amplitude", np.abs(spec)), ("phase", np.angle(spec))):
                key = f"{kind}_{name}"
                sums[key] = sums.get(key, 0.0) + value.sum(axis=(0, 1))
    n = max(count, 1) * 3
    return {k: np.fft.fftshift(v / n) for k, v in sums.items()}


def draw_figure(stats: dict[str, np.ndarray], out: str | Path, title: str = "") -> Path:
    """Draw the paper's Fig. 2: average log-amplitude and phase, original vs compressed, with
    lateral (horizontal, through DC) and longitudinal (vertical, through DC) slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    fig, axes = plt.subplots(2, 4, figsize=(17, 8))
    letters = iter("abcdefgh")
    for row, kind in enumerate(("amplitude", "phase")):
        ori, comp = stats[f"{kind}_original"], stats[f"{kind}_compressed"]
        if kind == "amplitude":
            ori, comp = np.log10(ori + 1e-6), np.log10(comp + 1e-6)
            label = "log10 average amplitude"
        else:
            label = "average phase (rad)"
        lo, hi = min(ori.min(), comp.min()), max(ori.max(), comp.max())
        n = ori.shape[0]
        freqs = np.arange(n) - n // 2
        for col, (img, name) in enumerate(((ori, "original"), (comp, "compressed"))):
            ax = axes[row, col]
            im = ax.imshow(img, cmap="viridis", vmin=lo, vmax=hi, extent=_extent(n))
            ax.set_title(f"({next(letters)}) {label}, {name}")
            ax.set_xlabel("horizontal frequency")
            ax.set_ylabel("vertical frequency")
            fig.colorbar(im, ax=ax, fraction=0.046)
        for col, (axis, name) in enumerate(((0, "lateral"), (1, "longitudinal")), start=2):
            ax = axes[row, col]
            for img, style, who in ((ori, "-", "original"), (comp, "--", "compressed")):
                line = img[n // 2, :] if axis == 0 else img[:, n // 2]
                ax.plot(freqs, line, style, label=who)
            ax.set_title(f"({next(letters)}) {name} slice through DC")
            ax.set_xlabel("frequency (bins)")
            ax.set_ylabel(label)
            # Peaks of stride-16 codecs fall at multiples of N/16.
            for f in range(-n // 2, n // 2 + 1, max(n // 16, 1)):
                ax.axvline(f, color="0.85", lw=0.6, zorder=0)
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _extent(n: int) -> tuple[float, float, float, float]:
    return (-n / 2 - 0.5, n / 2 - 0.5, n / 2 - 0.5, -n / 2 - 0.5)
