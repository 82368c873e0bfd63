"""Scene content for the synthetic camera dataset: real photos shipped inside scikit-image.

No camera data can be downloaded here, so scene *content* comes from the photographs that
scikit-image bundles in its wheel (no network access: only loaders whose files ship in
``skimage/data`` are used). Each synthetic image draws its own source photo, crop, scale,
flip/rotation and exposure from its own random stream, independently of the camera that
"takes" it. Content therefore carries no information about the label, and two images (hence
two splits, which are drawn by image) never share the same crop: a classifier can only win by
learning the camera pipeline, not by recognising scenes.

Scenes are returned in *linear* light (sRGB decoded with a 2.2 power), float32 in [0, 1],
because the camera pipeline applies its own tone curve afterwards.
"""

from __future__ import annotations

import functools

import numpy as np

# Colour photos bundled with scikit-image (file names in skimage/data).
COLOUR_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "motorcycle",
)
# Greyscale photos/textures; tinted per image so they still span colours.
GREY_PHOTOS = ("camera", "grass", "gravel", "brick", "moon", "coins")
SOURCE_PHOTOS = COLOUR_PHOTOS + GREY_PHOTOS


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """A bundled photo as float32 ``HxWx3`` in linear light [0, 1] (cached per process)."""
    import skimage.data as sd

    img = sd.stereo_motorcycle()[0] if name == "motorcycle" else getattr(sd, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].astype(np.float32) / 255.0
    return np.ascontiguousarray(img**2.2)


def _random_crop(photo: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop of ``photo`` resized to ``size``, randomly flipped and rotated."""
    from skimage.transform import resize

    h, w = photo.shape[:2]
    side_max = min(h, w)
    # Crops between 30 % and 100 % of the short side: some images are close-ups (upsampled,
    # smooth), some wide shots (downsampled, detailed), as with real framing.
    side = int(rng.uniform(0.3, 1.0) * side_max)
    side = max(side, min(32, side_max))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    crop = photo[y : y + side, x : x + side]
    crop = resize(crop, (size, size), order=1, anti_aliasing=side > size, preserve_range=True)
    crop = np.rot90(crop, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop, dtype=np.float32)


def natural_scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``size``×``size`` natural scene (linear RGB float32), independent of any camera."""
    name = SOURCE_PHOTOS[int(rng.integers(len(SOURCE_PHOTOS)))]
    scene = _random_crop(load_photo(name), rng, size)
    if name in GREY_PHOTOS:
        tint = rng.uniform(0.55, 1.0, size=3).astype(np.float32)
        scene = scene * tint / tint.max()
    exposure = np.float32(rng.uniform(0.6, 1.15))
    return np.clip(scene * exposure, 0.0, 1.0)


def flat_scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A flat-field scene (wall, sky, paper): uniform colour, a gentle gradient and a faint,
    heavily blurred trace of a photo, like VISION's ``flat`` images."""
    from scipy.ndimage import gaussian_filter

    base = rng.uniform(0.15, 0.75, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) - 0.5
    gradient = 1.0 + np.float32(rng.uniform(0.0, 0.35)) * ramp
    texture = natural_scene(rng, size)
    texture = gaussian_filter(texture, sigma=(size / 12, size / 12, 0))
    texture = texture - texture.mean(axis=(0, 1), keepdims=True)
    scene = base * gradient[..., None] + np.float32(rng.uniform(0.05, 0.2)) * texture
    return np.clip(scene, 0.0, 1.0).astype(np.float32)
