"""CMI backbones (paper Table I), created by name.

Every backbone maps ``(B, 3, 64, 64)`` RGB in [0, 1] to logits ``(B, num_classes)`` and
normalises its input itself. Paper-size networks: ``remnet``, ``res2net50``, ``resnet50``,
``mobilenet``, ``dpec_convnext``; ``small_remnet``, a CPU-scale RemNet for the offline demo;
tiny variants for tests: ``test_remnet``, ``test_res2net``, ``test_resnet``,
``test_mobilenet``, ``test_dpec_convnext``.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from mdfr.models.backbones import dpec_convnext, remnet, timm_nets  # noqa: F401  (registration)
from mdfr.registry import BACKBONES, PAPER_BACKBONES

__all__ = ["PAPER_BACKBONES", "backbone_names", "create_backbone"]


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    pretrained_file: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build CMI backbone ``name``.

    Args:
        name: a registered backbone (:func:`backbone_names`).
        num_classes: camera models to classify.
        pretrained: load timm's ImageNet weights from the local cache (RemNet has none).
        pretrained_file: a state dict file to load instead of the cache (implies pretrained).
        **kwargs: architecture overrides for the constructor (``None`` values are dropped).

    Raises:
        UnknownNameError: ``name`` is not registered; the message lists the known names.
        MdfrError: pretrained weights requested but not available.
    """
    return BACKBONES.create(
        name,
        num_classes=num_classes,
        pretrained=pretrained,
        pretrained_file=pretrained_file,
        **kwargs,
    )


def backbone_names() -> list[str]:
    """Registered backbone names, sorted."""
    return BACKBONES.names()
