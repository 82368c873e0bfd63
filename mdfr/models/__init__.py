"""Models: MDFRNet (SFR, FFR, FFS), its UNet, and the CMI backbones of Table I.

Importing this package fills :data:`mdfr.registry.MODELS` and :data:`mdfr.registry.BACKBONES`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mdfr.models import mdfrnet  # noqa: F401  (registration)
from mdfr.models.backbones import PAPER_BACKBONES, backbone_names, create_backbone
from mdfr.models.mdfrnet import FFR, FFS, SFR, MDFRNet, phase_of
from mdfr.models.unet import UNet
from mdfr.registry import MODELS


def create_model(name: str, *args: Any, **kwargs: Any) -> nn.Module:
    """Build registered model ``name`` (``"mdfrnet"``); ``None`` keyword arguments are dropped.

    ``create_model("mdfrnet", cfg, num_classes=..., amplitude_increment=..., cmi=...)``.
    """
    return MODELS.create(name, *args, **kwargs)


def model_names() -> list[str]:
    return MODELS.names()


__all__ = [
    "FFR",
    "FFS",
    "MDFRNet",
    "PAPER_BACKBONES",
    "SFR",
    "UNet",
    "backbone_names",
    "create_backbone",
    "create_model",
    "model_names",
    "phase_of",
]
