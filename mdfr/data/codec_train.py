"""Training, checkpoints and evaluation of the project's own learned codecs.

``train_codec`` is CompressAI's ``examples/train.py`` loop, condensed: a rate-distortion loss
(``lmbda * 255^2 * MSE + bpp``), a main Adam optimiser over the network and an auxiliary one
over the entropy bottleneck's quantiles (``aux_loss``), gradient clipping, and
``update(force=True)`` at the end so the CDF tables the entropy coder needs are stored in the
checkpoint. Training data are random crops from any folder of images (searched recursively).

Checkpoint (a ``torch.save`` dict readable with ``weights_only=True``)::

    {"format": "mdfr-codec", "version": 1, "arch": str, "N": int, "M": int,
     "hparams": {...}, "stats": {...}, "state_dict": {...}, "versions": {...}}
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mdfr import __version__
from mdfr.data.codecs import IMAGE_SUFFIXES, Codec, NeuralCodec
from mdfr.devices import resolve_device
from mdfr.errors import DataError, UsageError

CHECKPOINT_FORMAT = "mdfr-codec"
CHECKPOINT_VERSION = 1
# Architectures `mdfr codec train` builds; all take (N, M). CompressAI's downsample by 2^4 in
# g_a; ours (mdfr.data.codec_models) by 2^2 or 2^3 and train to a usable quality on a CPU.
TRAIN_ARCHS = (
    "bmshj2018-factorized",
    "bmshj2018-hyperprior",
    "mbt2018-mean",
    "mdfr-factorized-s2",
    "mdfr-factorized-s3",
)


@dataclass(frozen=True)
class CodecTrainConfig:
    """Hyperparameters of ``mdfr codec train`` (defaults follow CompressAI's examples)."""

    arch: str = "bmshj2018-factorized"  # one of TRAIN_ARCHS
    quality: int = 3  # picks (N, M) from the zoo's table for `arch` unless `channels` is set
    channels: tuple[int, int] | None = None  # (N, M) override, e.g. (16, 16) for tests
    lmbda: float = 0.01  # rate-distortion trade-off; larger = higher quality, more bits
    steps: int = 2000  # optimiser steps
    batch: int = 8  # crops per step
    crop: int = 64  # crop side; a multiple of the model's downsampling factor
    lr: float = 1e-4  # main optimiser learning rate
    aux_lr: float = 1e-3  # quantile (aux) optimiser learning rate
    clip_max_norm: float = 1.0  # gradient clipping, as in CompressAI's train.py
    decay_at: float = 0.9  # fraction of steps after which lr drops 10x (1.0: never)
    pool: int = 2048  # crops decoded up front and reused (decoding photos per step is slow)
    seed: int = 0  # seeds model init, crop sampling and batching
    device: str = "auto"  # auto | cpu | cuda | cuda:<i>

    def resolved_channels(self) -> tuple[int, int]:
        """(N, M): the override, else the zoo's table for ``arch`` at ``quality`` (our
        shallow archs follow bmshj2018-factorized's table)."""
        from compressai.zoo.image import cfgs

        if self.channels is not None:
            return self.channels
        return cfgs[_zoo_table_arch(self.arch)][self.quality]

    def validate(self) -> None:
        """Raise UsageError naming the first bad field."""
        from compressai.zoo.image import cfgs

        if self.arch not in TRAIN_ARCHS:
            raise UsageError(f"--arch {self.arch!r}: trainable archs are {', '.join(TRAIN_ARCHS)}")
        table = cfgs[_zoo_table_arch(self.arch)]
        if self.channels is None and self.quality not in table:
            raise UsageError(f"--quality {self.quality}: {self.arch} has {sorted(table)}")
        if self.channels is not None and (len(self.channels) != 2 or min(self.channels) < 1):
            raise UsageError(f"--channels must be two positive integers N,M, got {self.channels}")
        factor = downsampling_factor(self.arch)
        if self.crop < factor or self.crop % factor:
            raise UsageError(f"--crop {self.crop}: {self.arch} needs a multiple of {factor}")
        if not 0 < self.decay_at <= 1:
            raise UsageError(f"decay_at must be in (0, 1], got {self.decay_at}")
        for name in ("lmbda", "lr", "aux_lr"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name.replace('_', '-')} must be > 0")
        for name in ("steps", "batch", "pool"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1")


def _zoo_table_arch(arch: str) -> str:
    return "bmshj2018-factorized" if arch.startswith("mdfr-factorized") else arch


def downsampling_factor(arch: str) -> int:
    """Total stride of the model: 16 for the factorized prior, 64 with a hyperprior, 4 or 8
    for our shallow factorized priors."""
    # Lazy: codec_models imports CompressAI and torch, which this module loads only when a
    # codec is built or trained (`mdfr codec --help`, JPEG-only datasets never need them).
    from mdfr.data.codec_models import SHALLOW

    if arch in SHALLOW:
        return 2 ** SHALLOW[arch]
    return 16 if arch.startswith("bmshj2018-factorized") else 64


def build_model(arch: str, n: int, m: int) -> Any:
    """A fresh model of ``arch`` (CompressAI's zoo classes, or ours) with ``n``/``m``
    channels."""
    # Lazy: CompressAI and torch, as in downsampling_factor.
    from compressai.zoo.image import model_architectures

    from mdfr.data.codec_models import SHALLOW, build_shallow

    if arch in SHALLOW:
        return build_shallow(arch, n, m)
    return model_architectures[arch](n, m)


# --- data ---------------------------------------------------------------------------------


def list_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted (deterministic order)."""
    if not root.is_dir():
        raise UsageError(f"--images {root}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found under it")
    return files


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to uint8 ``HxWx3``; DataError naming the file if it cannot."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


def crop_pool(files: list[Path], size: int, crop: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` random ``crop``x``crop`` crops, about 8 per image, from a random subset.

    Returns:
        uint8 array ``(size, crop, crop, 3)``.
    """
    n_files = min(len(files), max(1, math.ceil(size / 8)))
    chosen = [files[i] for i in sorted(rng.choice(len(files), n_files, replace=False))]
    per_image = math.ceil(size / n_files)
    crops: list[np.ndarray] = []
    too_small = []
    for path in chosen:
        img = read_rgb(path)
        h, w = img.shape[:2]
        if h < crop or w < crop:
            too_small.append(path)
            continue
        for _ in range(per_image):
            y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
            crops.append(img[y : y + crop, x : x + crop])
    if not crops:
        raise DataError(f"no image is at least {crop}x{crop} pixels (e.g. {too_small[0]})")
    pool = np.stack(crops)
    return pool[rng.permutation(len(pool))[:size]]


# --- training -----------------------------------------------------------------------------


def train_codec(
    images: Path, out: Path, cfg: CodecTrainConfig, progress: bool = True
) -> dict[str, Any]:
    """Train a codec on random crops of the images under ``images``; write ``out``.

    Args:
        images: folder searched recursively for JPEG/PNG/... files.
        out: checkpoint path, written atomically (temporary file, then rename).
        cfg: hyperparameters.
        progress: show a tqdm bar on stderr.

    Returns:
        The training statistics stored in the checkpoint.
    """
    import torch
    from compressai.losses import RateDistortionLoss
    from tqdm import tqdm

    cfg.validate()
    if Path(out).is_dir():  # found before training, not after it
        raise UsageError(f"--out {out}: a folder; give the checkpoint file to write")
    device = resolve_device(cfg.device)
    files = list_images(images)
    rng = np.random.default_rng(cfg.seed)
    pool = crop_pool(files, min(cfg.pool, cfg.steps * cfg.batch), cfg.crop, rng)
    pool_t = torch.from_numpy(pool).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW, on CPU

    torch.manual_seed(cfg.seed)
    n, m = cfg.resolved_channels()
    net = build_model(cfg.arch, n, m).to(device).train()
    criterion = RateDistortionLoss(lmbda=cfg.lmbda)
    optimizer, aux_optimizer = _optimizers(net, cfg)

    history: list[tuple[float, float, float, float]] = []
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="codec train", disable=not progress, leave=False)
    decay_step = int(cfg.decay_at * cfg.steps)
    for step in bar:
        if step == decay_step:
            # A fixed-step stand-in for train.py's ReduceLROnPlateau (we have no val epochs):
            # the final low-lr phase settles the weights the checkpoint keeps.
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr / 10
        idx = torch.from_numpy(rng.integers(0, len(pool_t), cfg.batch))
        x = pool_t[idx].to(device).float().div_(255.0)
        if rng.random() < 0.5:  # one flip per batch keeps rng use fixed per step
            x = x.flip(-1)
        history.append(_step(net, x, criterion, optimizer, aux_optimizer, cfg.clip_max_norm))
        loss, bpp, mse, _ = history[-1]
        bar.set_postfix(loss=f"{loss:.3f}", bpp=f"{bpp:.3f}", psnr=f"{mse_psnr(mse):.1f}")
    bar.close()

    net.update(force=True)
    net.eval()
    tail = np.asarray(history[-max(1, len(history) // 10) :])
    stats: dict[str, Any] = {
        "loss": float(tail[:, 0].mean()),
        "bpp_loss": float(tail[:, 1].mean()),
        "psnr_train": mse_psnr(float(tail[:, 2].mean())),
        "aux_loss": float(tail[:, 3].mean()),
        "seconds": round(time.perf_counter() - start, 2),
        "n_images": len(files),
        "pool_crops": len(pool),
    }
    # Real bitstreams on (up to 256x256 of) a few training images: what the codec spends.
    # Not the crops: padding a 32x32 crop to 64x64 would quadruple its latents.
    codec = NeuralCodec("learned", "learned:<training>", net, device)
    heads = (read_rgb(f)[:256, :256] for f in files[:4])
    sample = [im for im in heads if min(im.shape[:2]) >= cfg.crop] or list(pool[:4])
    stats.update(evaluate_codec(codec, sample, peaks=False))
    save_checkpoint(out, net, cfg, (n, m), stats, images)
    return stats


def _optimizers(net: Any, cfg: CodecTrainConfig) -> tuple[Any, Any]:
    """As in CompressAI's train.py: the quantiles only get the aux loss, everything else the
    rate-distortion loss."""
    import torch

    params = dict(net.named_parameters())
    main_names = sorted(
        k for k, p in params.items() if p.requires_grad and not k.endswith(".quantiles")
    )
    aux_names = sorted(k for k, p in params.items() if p.requires_grad and k.endswith(".quantiles"))
    optimizer = torch.optim.Adam([params[k] for k in main_names], lr=cfg.lr)
    aux_optimizer = torch.optim.Adam([params[k] for k in aux_names], lr=cfg.aux_lr)
    return optimizer, aux_optimizer


def _step(
    net: Any, x: Any, criterion: Any, optimizer: Any, aux_optimizer: Any, clip_max_norm: float
) -> tuple[float, float, float, float]:
    """One rate-distortion step and one aux step: (loss, bpp, mse, aux loss)."""
    import torch

    optimizer.zero_grad()
    aux_optimizer.zero_grad()
    out_net = net(x)
    losses = criterion(out_net, x)
    losses["loss"].backward()
    if clip_max_norm > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip_max_norm)
    optimizer.step()
    aux_loss = net.aux_loss()
    aux_loss.backward()
    aux_optimizer.step()
    loss, bpp, mse = (float(losses[k].detach()) for k in ("loss", "bpp_loss", "mse_loss"))
    if not math.isfinite(loss):
        raise DataError(f"codec training diverged (loss {loss}); lower --lr or --lmbda")
    return loss, bpp, mse, float(aux_loss.detach())


def save_checkpoint(
    out: Path,
    net: Any,
    cfg: CodecTrainConfig,
    channels: tuple[int, int],
    stats: dict[str, Any],
    images: Path,
) -> None:
    """Write the checkpoint dict to ``out`` atomically (no half-written file at ``out``)."""
    import compressai
    import torch

    hparams = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    hparams["images"] = str(images)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": cfg.arch,
        "N": int(channels[0]),
        "M": int(channels[1]),
        "hparams": hparams,
        "stats": stats,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "versions": {
            "mdfr": __version__,
            "compressai": compressai.__version__,
            "torch": str(torch.__version__),  # TorchVersion is not weights_only-loadable
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, validated; DataError naming the file if it is not one of ours."""
    # Lazy: mdfr.checkpoints imports torch, which this module imports only where it trains.
    from mdfr.checkpoints import load_weights

    ckpt = load_weights(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DataError(
            f"{path}: not an 'mdfr codec train' checkpoint (for CompressAI weights use "
            "compressai:<zoo-name>:<quality>:<checkpoint>)"
        )
    if ckpt.get("version") != CHECKPOINT_VERSION or ckpt.get("arch") not in TRAIN_ARCHS:
        raise DataError(
            f"{path}: unsupported checkpoint version/arch {ckpt.get('version')}/{ckpt.get('arch')}"
        )
    return ckpt


def load_checkpoint(path: Path) -> tuple[Any, dict[str, Any]]:
    """Rebuild the model of a checkpoint (eval mode, CPU).

    Returns:
        ``(model, checkpoint_dict)``.
    """
    ckpt = read_checkpoint(path)
    net = build_model(ckpt["arch"], ckpt["N"], ckpt["M"])
    try:
        # CompressAI's load_state_dict resizes the entropy coder's CDF buffers first.
        net.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as e:
        raise DataError(
            f"{path}: weights do not fit {ckpt['arch']} N={ckpt['N']} M={ckpt['M']}: {e}"
        ) from None
    return net.eval(), ckpt


# --- evaluation ---------------------------------------------------------------------------


def mse_psnr(mse: float, peak: float = 1.0) -> float:
    """PSNR in dB for a mean squared error on a ``[0, peak]`` scale (capped at 99 dB)."""
    return 99.0 if mse <= 0 else min(99.0, 10 * math.log10(peak * peak / mse))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    return mse_psnr(float(np.mean(diff * diff)), 255.0)


def mean_amplitude(images: list[np.ndarray], patch: int = 64) -> np.ndarray:
    """Mean |FFT2| over all non-overlapping ``patch``x``patch`` tiles (and channels).

    Tiles start at multiples of ``patch`` from the image origin, the same grid a codec's
    padding keeps aligned. Returns a ``(patch, patch)`` array, unshifted (DC at [0, 0]).
    """
    total = np.zeros((patch, patch))
    count = 0
    for img in images:
        h, w = img.shape[0] // patch * patch, img.shape[1] // patch * patch
        if not h or not w:
            continue
        tiles = img[:h, :w].astype(np.float64).reshape(h // patch, patch, w // patch, patch, -1)
        tiles = tiles.transpose(0, 2, 4, 1, 3).reshape(-1, patch, patch)
        total += np.abs(np.fft.fft2(tiles)).sum(axis=0)
        count += len(tiles)
    if not count:
        raise DataError(f"no image is at least {patch}x{patch} pixels")
    return total / count


def periodic_peak_ratio(amplitude: np.ndarray, period: int = 16, offset: int = 0) -> float:
    """How far the spectrum at multiples of ``size/period`` stands above its neighbours.

    AI codecs with four stride-2 stages leave a ``period``-pixel grid in their output, i.e.
    amplitude peaks at frequencies ``k * size / period`` (Bergmann et al.). For each such
    frequency (shifted by ``offset`` in both axes; DC skipped) this takes ``log A(f) - mean
    log A(4-neighbours of f)`` and returns ``exp`` of the mean: ~1 for a smooth
    (natural-image) spectrum, > 1 with peaks. ``offset=step/2`` measures the same statistic
    between the peaks, a control. On the axes the neighbours are taken along the axis,
    because the tiles' border discontinuities put a ridge of energy on both axes of any
    image's spectrum.
    """
    size = amplitude.shape[0]
    step = size // period
    if step < 2 or size % period:
        raise ValueError(f"patch size {size} must be a multiple of 2*{period}")
    log_a = np.log(amplitude + 1e-12)
    diffs = []
    for u in range(offset, size, step):
        for v in range(offset, size, step):
            if u == 0 and v == 0:
                continue
            if u == 0:
                nbrs = [(0, v - 1), (0, v + 1)]
            elif v == 0:
                nbrs = [(u - 1, 0), (u + 1, 0)]
            else:
                nbrs = [(u - 1, v), (u + 1, v), (u, v - 1), (u, v + 1)]
            ring = np.mean([log_a[a % size, b % size] for a, b in nbrs])
            diffs.append(log_a[u, v] - ring)
    return float(np.exp(np.mean(diffs)))


def evaluate_codec(
    codec: Codec,
    images: list[np.ndarray],
    rel_paths: list[str] | None = None,
    peaks: bool = True,
) -> dict[str, float]:
    """Mean bpp and PSNR of ``codec`` over ``images``, and the N/16 peak ratios.

    Returns:
        ``bpp`` (bits from the real compressed bytes per pixel), ``psnr`` (dB, mean over
        images) and, with ``peaks``, ``peak_ratio_original``, ``peak_ratio_compressed`` and
        their quotient ``peak_gain`` (see :func:`periodic_peak_ratio`).
    """
    bits = pixels = 0
    psnrs = []
    decoded = []
    for i, img in enumerate(images):
        res = codec.compress(img, rel_paths[i] if rel_paths else None)
        bits += 8 * res.nbytes
        pixels += img.shape[0] * img.shape[1]
        psnrs.append(psnr(img, res.image))
        decoded.append(res.image)
    stats = {"bpp": bits / pixels, "psnr": float(np.mean(psnrs))}
    if peaks:
        orig = periodic_peak_ratio(mean_amplitude(images))
        comp = periodic_peak_ratio(mean_amplitude(decoded))
        stats.update(peak_ratio_original=orig, peak_ratio_compressed=comp, peak_gain=comp / orig)
    return stats
