"""A simulated camera: per-model image pipeline plus a per-device sensor fingerprint.

What a CMI network learns on real cameras is the trace of the in-camera pipeline. Each
simulated *model* therefore has its own pipeline, and each simulated *device* of a model adds
its own fixed PRNU-like multiplicative pattern:

1. optics: Gaussian point-spread function (per model);
2. sensor: spectral mixing matrix (per model), PRNU (per device), Bayer CFA sampling (per model
   pattern), Poisson-Gaussian noise (per model shot and read noise), 12-bit raw quantisation;
3. demosaicing with colour-demosaicing: bilinear, Malvar 2004 or Menon 2007 (per model);
4. colour correction matrix (inverse sensor mixing times a per-model saturation);
5. tone curve: gamma plus an S-shaped contrast curve (per model);
6. post-processing: unsharp-mask sharpening, Gaussian denoising, or nothing (per model);
7. JPEG with the model's own quantisation tables (IJG tables at the model's quality, scaled by
   a smooth per-model factor over frequency) and chroma subsampling (4:4:4, 4:2:2 or 4:2:0).

Models differ in the demosaicer, colour/tone, noise, post-processing and JPEG tables, not in
the Bayer layout alone (a one-pixel CFA shift is invisible to a CNN on random crops).
Discrete choices cycle over model indices and continuous ones are evenly spread and shuffled,
so any two models differ in several traits.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

DEMOSAICERS = ("bilinear", "malvar2004", "menon2007")
CFA_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
POSTPROCESS = ("sharpen", "denoise", "none")
# PIL's codes: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0.
SUBSAMPLING = (0, 1, 2)

# IJG (libjpeg) base tables, natural (row-major) order: Annex K of the JPEG standard.
_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
     14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
     18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float64,
)  # fmt: skip
_CHROMA = np.array(
    [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
     24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99]
    + [99] * 32,
    dtype=np.float64,
)  # fmt: skip


@dataclass(frozen=True)
class CameraModel:
    """Everything that defines one simulated camera model's pipeline.

    Attributes:
        name: VISION-style ``Brand_Model`` name.
        demosaicer: one of :data:`DEMOSAICERS`.
        menon_refine: Menon 2007's refining step (only for ``menon2007``).
        cfa: Bayer pattern, one of :data:`CFA_PATTERNS`.
        psf_sigma: optical blur (pixels).
        sensor: 3×3 spectral mixing (scene RGB -> sensor RGB), rows sum to 1.
        saturation: colour-correction saturation factor.
        gamma: tone-curve gamma.
        contrast: S-curve strength in [0, 1].
        postprocess: one of :data:`POSTPROCESS`.
        post_amount: sharpening amount or denoising sigma.
        shot_noise: Poisson-like noise gain (variance per unit signal).
        read_noise: Gaussian read-noise standard deviation (raw units, [0, 1] scale).
        jpeg_quality: IJG quality the model's tables are built from.
        qtable_tilt: how the model scales its tables with frequency (>0: coarser high freqs).
        subsampling: PIL chroma subsampling code, one of :data:`SUBSAMPLING`.
        prnu_strength: standard deviation of its devices' PRNU patterns.
    """

    name: str
    demosaicer: str
    menon_refine: bool
    cfa: str
    psf_sigma: float
    sensor: tuple[tuple[float, float, float], ...]
    saturation: float
    gamma: float
    contrast: float
    postprocess: str
    post_amount: float
    shot_noise: float
    read_noise: float
    jpeg_quality: int
    qtable_tilt: float
    subsampling: int
    prnu_strength: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def qtables(self) -> list[list[int]]:
        """The model's JPEG quantisation tables (luma, chroma), natural order."""
        q = self.jpeg_quality
        scale = 5000.0 / q if q < 50 else 200.0 - 2.0 * q
        yy, xx = np.divmod(np.arange(64), 8)
        tilt = 1.0 + self.qtable_tilt * (yy + xx) / 14.0
        tables = []
        for base in (_LUMA, _CHROMA):
            t = np.floor((base * scale + 50.0) / 100.0) * tilt
            tables.append([int(v) for v in np.clip(np.round(t), 1, 255)])
        return tables


def _spread(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """``n`` values evenly spread over [lo, hi], jittered and shuffled: distinct per model."""
    if n == 1:
        return np.array([rng.uniform(lo, hi)])
    step = (hi - lo) / n
    values = lo + step * (np.arange(n) + rng.uniform(0.2, 0.8, size=n))
    return rng.permutation(values)


def make_models(names: list[str], rng: np.random.Generator) -> list[CameraModel]:
    """Build one distinct pipeline per model name from ``rng``."""
    n = len(names)
    read = _spread(rng, n, 0.002, 0.016)
    shot = _spread(rng, n, 0.0005, 0.006)
    quality = _spread(rng, n, 72, 97)
    gamma = _spread(rng, n, 1.8, 2.6)
    psf = _spread(rng, n, 0.0, 0.9)
    models = []
    for k, name in enumerate(names):
        mix = np.eye(3) + rng.normal(0.0, 0.08, size=(3, 3))
        mix = np.abs(mix)
        mix /= mix.sum(axis=1, keepdims=True)
        # Strides coprime to 3 so that neighbouring models differ in every discrete trait.
        post = POSTPROCESS[(2 * k + 1) % 3]
        amount = rng.uniform(0.6, 1.6) if post == "sharpen" else rng.uniform(0.5, 1.0)
        models.append(
            CameraModel(
                name=name,
                demosaicer=DEMOSAICERS[k % 3],
                menon_refine=bool(rng.random() < 0.5),
                cfa=CFA_PATTERNS[int(rng.integers(4))],
                psf_sigma=round(float(psf[k]), 4),
                sensor=tuple(tuple(round(float(v), 5) for v in row) for row in mix),
                saturation=round(float(rng.uniform(0.9, 1.4)), 4),
                gamma=round(float(gamma[k]), 4),
                contrast=round(float(rng.uniform(0.0, 0.6)), 4),
                postprocess=post,
                post_amount=round(float(amount), 4),
                shot_noise=round(float(shot[k]), 6),
                read_noise=round(float(read[k]), 6),
                jpeg_quality=int(round(float(quality[k]))),
                qtable_tilt=round(float(rng.uniform(-0.3, 0.8)), 4),
                subsampling=SUBSAMPLING[(2 * k + (k // 3)) % 3],
                prnu_strength=round(float(rng.uniform(0.01, 0.025)), 5),
            )
        )
    return models


def device_prnu(model: CameraModel, rng: np.random.Generator, size: int) -> np.ndarray:
    """A device's fixed multiplicative sensor pattern (``size``×``size`` float32, mean 1).

    Real PRNU is mostly white with a faint low-frequency part; a slight blur mimics the latter.
    """
    from scipy.ndimage import gaussian_filter

    k = rng.normal(0.0, 1.0, size=(size, size)).astype(np.float32)
    k = 0.85 * k + 0.15 * gaussian_filter(k, 2.0) / 0.2
    return (1.0 + model.prnu_strength * k / k.std()).astype(np.float32)


def _colour_demosaicing():
    import warnings

    # colour-demosaicing 0.2.5 imports from scipy.ndimage.filters (deprecated): not ours to fix.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import colour_demosaicing

    return colour_demosaicing


def _demosaic(cfa: np.ndarray, model: CameraModel) -> np.ndarray:
    cd = _colour_demosaicing()
    if model.demosaicer == "bilinear":
        return cd.demosaicing_CFA_Bayer_bilinear(cfa, model.cfa)
    if model.demosaicer == "malvar2004":
        return cd.demosaicing_CFA_Bayer_Malvar2004(cfa, model.cfa)
    return cd.demosaicing_CFA_Bayer_Menon2007(cfa, model.cfa, refining_step=model.menon_refine)


def _tone(x: np.ndarray, model: CameraModel) -> np.ndarray:
    y = np.clip(x, 0.0, 1.0) ** (1.0 / model.gamma)
    # Smoothstep blend: a mild S-curve that keeps 0 and 1 fixed.
    s = y * y * (3.0 - 2.0 * y)
    return (1.0 - model.contrast) * y + model.contrast * s


def render(
    scene: np.ndarray, model: CameraModel, prnu: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Take a picture of ``scene`` (linear RGB float32 in [0, 1]) with ``model``.

    Args:
        scene: ``HxWx3`` linear scene, the same size as ``prnu``.
        model: the camera model's pipeline.
        prnu: the device's PRNU pattern (``HxW``).
        rng: per-image noise stream.

    Returns:
        The processed ``HxWx3`` uint8 image, before JPEG encoding.
    """
    from scipy.ndimage import gaussian_filter

    cd = _colour_demosaicing()
    x = scene.astype(np.float64)
    if model.psf_sigma > 0.05:
        x = gaussian_filter(x, sigma=(model.psf_sigma, model.psf_sigma, 0))
    sensor = np.asarray(model.sensor)
    x = x @ sensor.T
    raw = cd.mosaicing_CFA_Bayer(x, model.cfa) * prnu
    noise_sd = np.sqrt(model.shot_noise * np.clip(raw, 0.0, None) + model.read_noise**2)
    raw = raw + rng.normal(0.0, 1.0, size=raw.shape) * noise_sd
    raw = np.round(np.clip(raw, 0.0, 1.0) * 4095.0) / 4095.0
    rgb = _demosaic(raw, model)
    # Colour correction: undo the sensor mixing, then the model's saturation preference.
    luma = np.array([0.2126, 0.7152, 0.0722])
    sat = model.saturation * np.eye(3) + (1.0 - model.saturation) * np.tile(luma, (3, 1))
    rgb = rgb @ (sat @ np.linalg.inv(sensor)).T
    out = _tone(rgb, model)
    if model.postprocess == "sharpen":
        blur = gaussian_filter(out, sigma=(1.0, 1.0, 0))
        out = out + model.post_amount * (out - blur)
    elif model.postprocess == "denoise":
        out = gaussian_filter(out, sigma=(model.post_amount, model.post_amount, 0))
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def encode_jpeg(img: np.ndarray, model: CameraModel, device: str) -> bytes:
    """The camera's JPEG file: its own tables and subsampling, with EXIF make and model."""
    from PIL import Image

    brand, _, product = model.name.partition("_")
    exif = Image.Exif()
    exif[0x010F] = brand  # Make
    exif[0x0110] = product  # Model
    exif[0x0131] = f"mdfr synthetic camera {device}"  # Software
    buf = io.BytesIO()
    Image.fromarray(img).save(
        buf,
        format="JPEG",
        qtables=model.qtables(),
        subsampling=model.subsampling,
        exif=exif.tobytes(),
    )
    return buf.getvalue()
