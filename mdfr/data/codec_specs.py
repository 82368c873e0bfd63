"""Attack specs a sweep can name, checked without torch, and codecs trained on demand.

Besides the codec specs of :mod:`mdfr.data.codecs` (``jpeg:Q``, ``compressai:<zoo>:<q>``,
``learned:<ckpt>``, ``external:<dir>``), a sweep may name a codec that does not exist yet::

    train:lmbda=0.01                          # mdfr codec train with these settings
    train:arch=mdfr-factorized-s3,lmbda=0.02  # any CodecTrainConfig field, comma-separated

The keys are :class:`~mdfr.data.codec_train.CodecTrainConfig` fields (``channels`` as
``32x32``); what a spec leaves out comes from the sweep's ``prepare.codec_train`` defaults,
then from the dataclass. The sweep driver (:mod:`mdfr.sweep.attacks`) trains each such codec
once on ``prepare.images`` (:func:`train_into`) and caches it by content (:func:`train_key`:
every setting except the device, and the bytes of every training image) under
``<storage>/cache/codecs/<key>/``; the spec then stands for ``learned:<that checkpoint>``.
Several λ values of one architecture make a codec family: one rate-distortion curve.

Why here and not a codec scheme: a codec constructor gets only its spec, and training needs
the images and a cache folder, which only the sweep knows. ``mdfr codec train`` +
``learned:<ckpt>`` is the same thing by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

from mdfr.data.codec_train import (
    CHECKPOINT_VERSION,
    TRAIN_ARCHS,
    CodecTrainConfig,
    list_images,
    read_checkpoint,
    train_codec,
)
from mdfr.data.codecs import SCHEME_SYNTAX, JpegCodec
from mdfr.errors import UsageError
from mdfr.hashing import file_sha256
from mdfr.registry import codec_names
from mdfr.validation import did_you_mean

TRAIN_SCHEME = "train"
TRAIN_SYNTAX = "train:<key>=<value>,... (mdfr codec train settings, e.g. train:lmbda=0.01)"
CHECKPOINT = "codec.pt"
# Settings that change where a codec trains, not what it learns: not part of its cache key.
_NOT_IN_KEY = ("device",)
_FIELDS = {f.name: f for f in dataclasses.fields(CodecTrainConfig)}


def schemes() -> list[str]:
    """Every scheme an attack spec may start with: the registered codecs and ``train``."""
    return [*codec_names(), TRAIN_SCHEME]


def check_spec(spec: Any, defaults: dict[str, Any] | None = None) -> None:
    """Check an attack spec's syntax without loading torch, a checkpoint or an image.

    Raises:
        UsageError: naming the spec and what is allowed.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise UsageError(f"expected a codec spec <scheme>:<arguments>, got {spec!r}")
    scheme, arg = spec.split(":", 1)
    known = schemes()
    if scheme not in known:
        raise UsageError(
            f"unknown codec {spec!r}{did_you_mean(scheme, known)}; known schemes: "
            f"{', '.join(known)}"
        )
    if scheme == "jpeg":
        JpegCodec(arg)  # checks the quality; PIL is only used when compressing
    elif scheme == TRAIN_SCHEME:
        train_config(spec, defaults)
    elif scheme in SCHEME_SYNTAX and not arg.strip(":"):
        raise UsageError(f"codec spec {spec!r} has no arguments; expected {SCHEME_SYNTAX[scheme]}")


def is_train_spec(spec: str) -> bool:
    return spec.split(":", 1)[0] == TRAIN_SCHEME


def train_config(spec: str, defaults: dict[str, Any] | None = None) -> CodecTrainConfig:
    """The :class:`CodecTrainConfig` a ``train:`` spec stands for (``defaults`` under it).

    Raises:
        UsageError: an unknown key, a value of the wrong type, a bad architecture.
    """
    items: dict[str, Any] = {}
    body = spec.split(":", 1)[1] if ":" in spec else ""
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise UsageError(f"codec spec {spec!r}: {part!r} is not <key>=<value>; {TRAIN_SYNTAX}")
        items[key.strip()] = value.strip()
    merged = {**(defaults or {}), **items}
    for key in merged:
        if key not in _FIELDS:
            raise UsageError(
                f"codec spec {spec!r}: unknown setting {key!r}{did_you_mean(key, _FIELDS)}; "
                f"known: {', '.join(_FIELDS)}"
            )
    cfg = CodecTrainConfig(**{k: _coerce(spec, k, v) for k, v in merged.items()})
    _check_light(spec, cfg)
    return cfg


def _coerce(spec: str, key: str, value: Any) -> Any:
    """A spec's text (or a YAML default) as the field's type."""
    default = _FIELDS[key].default
    try:
        if key == "channels":
            if value is None:
                return None
            parts = re.split(r"[x,]", value) if isinstance(value, str) else list(value)
            n, m = (int(v) for v in parts)
            return (n, m)
        if isinstance(value, bool) or isinstance(value, list | dict):
            raise ValueError
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        kind = "N x M integers (e.g. 32x32)" if key == "channels" else type(default).__name__
        raise UsageError(f"codec spec {spec!r}: {key} must be {kind}, got {value!r}") from None


def _check_light(spec: str, cfg: CodecTrainConfig) -> None:
    """What can be checked without CompressAI; the rest when the codec trains."""
    if cfg.arch not in TRAIN_ARCHS:
        raise UsageError(
            f"codec spec {spec!r}: arch {cfg.arch!r} is not trainable; known: "
            f"{', '.join(TRAIN_ARCHS)}"
        )
    for name in ("lmbda", "lr", "aux_lr"):
        if not 0 < getattr(cfg, name) < math.inf:
            raise UsageError(f"codec spec {spec!r}: {name} must be > 0, got {getattr(cfg, name)}")
    for name in ("steps", "batch", "pool", "crop"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"codec spec {spec!r}: {name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.channels is not None and min(cfg.channels) < 1:
        raise UsageError(f"codec spec {spec!r}: channels must be positive, got {cfg.channels}")


# --------------------------------------------------------------------------- the cache


def images_digest(images: Path) -> str:
    """SHA-256 over the relative paths and bytes of every image a codec trains on."""
    root = Path(images)
    h = hashlib.sha256()
    for path in list_images(root):
        h.update(f"{path.relative_to(root).as_posix()} {file_sha256(path)}\n".encode())
    return h.hexdigest()


def train_key(cfg: CodecTrainConfig, digest: str) -> str:
    """Cache key of a trained codec: its settings (not the device) and its training images."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_KEY}
    blob = json.dumps(
        {"version": CHECKPOINT_VERSION, "settings": settings, "images": digest},
        sort_keys=True,
        default=list,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_into(spec: str, cfg: CodecTrainConfig, images: Path, folder: Path) -> dict[str, Any]:
    """Train ``cfg`` on ``images`` into ``folder/codec.pt``; what the cache records of it
    (``spec``, ``checkpoint``, ``settings``, training ``stats``), JSON-ready."""
    ckpt = folder / CHECKPOINT
    stats = train_codec(images, ckpt, cfg, progress=False)
    read_checkpoint(ckpt)  # fails loudly if what was written is unusable
    info = {"spec": spec, "checkpoint": str(ckpt), "settings": dataclasses.asdict(cfg)}
    return json.loads(json.dumps({**info, "stats": stats}, default=list))


def attack_slug(spec: str) -> str:
    """A folder name for an attack spec (``jpeg-50``, ``train-lmbda=0.01``): readable, safe,
    and distinct for distinct specs (a short hash is added when characters were replaced)."""
    slug = re.sub(r"[^A-Za-z0-9_.=+-]+", "-", spec.replace(":", "-")).strip("-.")
    if slug != spec.replace(":", "-") or len(slug) > 60:
        slug = f"{slug[:48]}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"
    return slug or hashlib.sha256(spec.encode()).hexdigest()[:16]
