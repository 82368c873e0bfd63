"""The Table I backbones that timm already implements, created by name, never rewritten.

=============  ==========================  ==============================================
ours           timm model                  paper
=============  ==========================  ==============================================
res2net50      ``res2net50_26w_4s``        Res2Net-50 (Liu et al.)
resnet50       ``resnet50``                ResNet50 (Bennabhaktula et al.)
mobilenet      ``mobilenetv3_small_100``   MobileNet V3-small (Bennabhaktula et al.)
=============  ==========================  ==============================================

They keep their ImageNet stems: on a 64×64 patch the last feature map is 2×2, which still
classifies (global average pooling) and is what "the network by name" means. Inputs are
normalised inside with the statistics of timm's pretrained config (ImageNet's for the
paper's three), so ``pretrained=True`` weights see what they were trained on.

Tiny variants for tests (same timm code, a few thousand to a few hundred thousand weights):
``test_res2net`` (res2net50_26w_4s with one block per stage and narrow channels),
``test_resnet`` (timm's ``test_resnet``), ``test_mobilenet`` (``mobilenetv3_small_050``).
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from mdfr.models.backbones.common import IMAGENET_MEAN, IMAGENET_STD, Normalized, create_timm
from mdfr.registry import BACKBONES


def _timm_backbone(name: str, timm_name: str, arch: dict[str, Any] | None = None) -> None:
    """Register backbone ``name`` as timm's ``timm_name`` (with architecture overrides)."""

    def build(
        num_classes: int,
        pretrained: bool = False,
        pretrained_file: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        net = create_timm(
            name, timm_name, num_classes, pretrained, pretrained_file, **{**(arch or {}), **kwargs}
        )
        cfg = getattr(net, "pretrained_cfg", None) or {}
        return Normalized(net, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))

    build.__doc__ = f"Backbone {name!r}: timm {timm_name!r} on [0, 1] input."
    BACKBONES.register(name)(build)


_timm_backbone("res2net50", "res2net50_26w_4s")
_timm_backbone("resnet50", "resnet50")
_timm_backbone("mobilenet", "mobilenetv3_small_100")

_timm_backbone(
    "test_res2net",
    "res2net50_26w_4s",
    dict(layers=(1, 1, 1, 1), channels=(16, 24, 32, 48), stem_width=16),
)
_timm_backbone("test_resnet", "test_resnet")
_timm_backbone("test_mobilenet", "mobilenetv3_small_050")
