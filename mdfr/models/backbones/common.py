"""What every CMI backbone shares: input normalisation and pretrained-weight lookup.

Backbones take ``(B, 3, 64, 64)`` RGB in [0, 1] and normalise inside (:class:`Normalized`), so
the engine, MDFRNet's ``restored`` output and evaluation never need to know a backbone's
statistics.

Pretrained weights cannot be downloaded on the machines this project targets, so
:func:`create_timm` looks for timm's weights in the local caches first (the Hugging Face hub
cache, then torch.hub's checkpoint folder) and hands the file to timm's own loader through
``pretrained_cfg_overlay=dict(file=...)``. Only when nothing is cached and ``HF_HUB_OFFLINE``
is not set does it let timm try to download. Every failure becomes an
:class:`~mdfr.errors.MdfrError` naming the model and the cache folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdfr.errors import MdfrError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalized(nn.Module):
    """``net((x - mean) / std)``; mean/std are non-persistent buffers (not in checkpoints)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment now (as huggingface_hub does)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache")), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_weights(timm_name: str) -> Path | None:
    """The cached weight file of timm model ``timm_name``'s default pretrained tag, if any."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        names += ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            hit = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=hf_cache_dir())
            if isinstance(hit, str):
                return Path(hit)
    if cfg.url:
        legacy = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if legacy.is_file():
            return legacy
    return None


def missing_weights_message(name: str, timm_name: str) -> str:
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    repo = cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else f"timm/{timm_name}"
    return (
        f"pretrained weights for backbone {name!r} (timm model {timm_name!r}, Hugging Face repo "
        f"{repo!r}) are not in the local cache {hf_cache_dir()}; copy them there from a machine "
        f"with internet (`huggingface-cli download {repo}`, then copy the cache folder), pass "
        "pretrained_file=<state dict>, or set model.pretrained: false"
    )


def resolve_pretrained_file(
    name: str, timm_name: str, pretrained_file: str | os.PathLike[str] | None
) -> Path | None:
    """Where to load ``timm_name``'s weights from, ``None`` meaning "let timm download".

    Raises:
        MdfrError: an explicit file that does not exist, or nothing cached while offline.
    """
    if pretrained_file is not None:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise MdfrError(f"pretrained weights for backbone {name!r}: no file {path}")
        return path
    path = cached_weights(timm_name)
    if path is None and _offline():
        raise MdfrError(missing_weights_message(name, timm_name) + " (HF_HUB_OFFLINE is set)")
    return path


def create_timm(
    name: str,
    timm_name: str,
    num_classes: int,
    pretrained: bool = False,
    pretrained_file: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(timm_name, ...)`` with cache-first pretrained loading.

    Args:
        name: our backbone name (for messages).
        timm_name: timm's model name.
        num_classes: classifier outputs; a pretrained ImageNet head is dropped when it differs.
        pretrained: load timm's pretrained weights.
        pretrained_file: load this state dict file instead of looking in the caches (implies
            ``pretrained``).
        **kwargs: passed to ``timm.create_model`` (architecture overrides for tiny variants).
    """
    import timm

    if not pretrained and pretrained_file is None:
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)
    path = resolve_pretrained_file(name, timm_name, pretrained_file)
    if path is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        model = timm.create_model(timm_name, pretrained=True, num_classes=num_classes, **kwargs)
    except Exception as e:  # network, file format, shape mismatch: all explained the same way
        if path is None:
            msg = f"{missing_weights_message(name, timm_name)}; downloading them failed"
        else:
            msg = f"could not load pretrained weights for backbone {name!r} from {path}"
        raise MdfrError(f"{msg}: {type(e).__name__}: {e}") from e
    if path is not None:
        _check_loaded(name, model, path)
    return model


def _check_loaded(name: str, model: nn.Module, path: Path) -> None:
    """Fail if the file left weights of ``model`` untouched.

    timm loads non-strictly whenever it drops a mismatched ImageNet classifier, so a file of
    another architecture would otherwise "load" without setting a single weight.
    """
    from timm.models import load_state_dict

    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    file_keys = set(load_state_dict(str(path)))
    missing = [
        k
        for k in model.state_dict()
        if k not in file_keys
        and not k.endswith("num_batches_tracked")
        and not any(k.startswith(h + ".") for h in heads)
    ]
    if missing:
        raise MdfrError(
            f"pretrained weights for backbone {name!r} in {path} do not match the model: "
            f"{len(missing)} tensors missing (first: {', '.join(missing[:3])})"
        )
