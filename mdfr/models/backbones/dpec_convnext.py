"""DPEC ConvNeXt: our interpretation of Huan et al.'s dual-path enhanced ConvNeXt (2024).

Huan, Liu, Yang and Law, "Camera model identification based on dual-path enhanced ConvNeXt
network and patches selected by uniform local binary pattern", Expert Systems with
Applications 241 (2024), publish no code. What the sources say: a ConvNeXt "with a dual-path
attention mechanism and classical residual extraction" (MDFRNet paper, §II) that "leverages
the multi-frequency information present in the image" and learns camera features "without
relying on a residual prediction module" (Huan et al., abstract). We build that from timm's
ConvNeXt, created by name, and add only the two named parts:

1. **Dual input path: content + classical residual.** The normalised RGB patch (low and
   high frequencies) and a fixed, non-learned high-pass residual of it (the three SRM kernels
   of Zhou et al., "Learning rich features for image manipulation detection", CVPR 2018,
   applied to each colour channel: 9 channels of high frequencies) are concatenated into a
   12-channel input of the stem. One stem conv over the concatenation equals two stem convs,
   one per path, summed; the residual path is fixed, so no residual *prediction* is learned.
2. **Dual-path attention after every ConvNeXt stage.** A channel path (average- and
   max-pooled statistics through a shared bottleneck MLP, as CBAM) and a spatial path
   (channel mean and max through a 7×7 conv) run in parallel on the stage output and are
   combined as in BAM (Park et al., 2018): ``x + x ⊙ σ(channel + spatial)``. The identity
   term keeps the pretrained stages' signal intact when the attention is still untrained.

**64×64 input.** timm's ConvNeXt stem is a 4×4 conv with stride 4, which leaves 2×2 after the
last stage for a 64×64 patch. We keep its 4×4 kernel but use stride 2 (padding 1), so the
stages see 32, 16, 8 and 4 pixels; the kernel shape is unchanged, so timm's own loader still
loads (and adapts to 12 input channels) the pretrained stem weights.

``dpec_convnext`` is ConvNeXt-T (``convnext_tiny``: depths 3/3/9/3, dims 96..768);
``test_dpec_convnext`` uses timm's ``test_convnext``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mdfr.models.backbones.common import IMAGENET_MEAN, IMAGENET_STD, Normalized, create_timm
from mdfr.registry import BACKBONES

# Zhou et al.'s three SRM residual kernels (5×5, zero-sum: pure high-pass).
_SRM = (
    [
        [0, 0, 0, 0, 0],
        [0, -1, 2, -1, 0],
        [0, 2, -4, 2, 0],
        [0, -1, 2, -1, 0],
        [0, 0, 0, 0, 0],
    ],
    [
        [-1, 2, -2, 2, -1],
        [2, -6, 8, -6, 2],
        [-2, 8, -12, 8, -2],
        [2, -6, 8, -6, 2],
        [-1, 2, -2, 2, -1],
    ],
    [
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 1, -2, 1, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ],
)
_SRM_SCALE = (4.0, 12.0, 2.0)


class ResidualExtraction(nn.Module):
    """Fixed SRM high-pass residuals of each colour channel: (B, 3, H, W) -> (B, 9, H, W)."""

    def __init__(self, channels: int = 3):
        super().__init__()
        k = torch.stack(
            [
                torch.tensor(w, dtype=torch.float32) / s
                for w, s in zip(_SRM, _SRM_SCALE, strict=True)
            ]
        )
        weight = k.unsqueeze(1).repeat(channels, 1, 1, 1)  # (3 * channels, 1, 5, 5), per colour
        self.register_buffer("weight", weight, persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), padding=2, groups=self.channels)


class DualPathAttention(nn.Module):
    """BAM-style parallel channel and spatial attention: ``x + x ⊙ σ(Mc(x) + Ms(x))``."""

    def __init__(self, dim: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        hidden = max(dim // reduction, 8)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, dim, 1)
        )
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True))
        spatial = self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1))
        return x + x * torch.sigmoid(channel + spatial)


class DPECConvNeXt(nn.Module):
    """Residual extraction + timm ConvNeXt stages with dual-path attention (normalised input).

    Args:
        num_classes: camera models.
        timm_name: the timm ConvNeXt providing stem, stages and head.
        pretrained: load timm's pretrained weights into the ConvNeXt (cache only; see
            :func:`~mdfr.models.backbones.common.create_timm`).
        pretrained_file: a state dict of ``timm_name`` to load instead.
        **kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """

    def __init__(
        self,
        num_classes: int,
        timm_name: str = "convnext_tiny",
        pretrained: bool = False,
        pretrained_file: str | os.PathLike[str] | None = None,
        name: str = "dpec_convnext",
        **kwargs: Any,
    ):
        super().__init__()
        self.residual = ResidualExtraction()
        trunk = create_timm(
            name, timm_name, num_classes, pretrained, pretrained_file, in_chans=12, **kwargs
        )
        old = trunk.stem[0]
        stem = nn.Conv2d(
            12, old.out_channels, old.kernel_size, stride=2, padding=1, bias=old.bias is not None
        )
        with torch.no_grad():
            stem.weight.copy_(old.weight)
            if old.bias is not None:
                stem.bias.copy_(old.bias)
        trunk.stem[0] = stem
        self.trunk = trunk
        self.attention = nn.ModuleList(
            DualPathAttention(info["num_chs"]) for info in trunk.feature_info
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk.stem(torch.cat([x, self.residual(x)], dim=1))
        for stage, attention in zip(self.trunk.stages, self.attention, strict=True):
            h = attention(stage(h))
        return self.trunk.forward_head(self.trunk.norm_pre(h))


def _build(name: str, timm_name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    # The SRM kernels are zero-sum, so residuals of the normalised input are the residuals of
    # the [0, 1] input divided by std: one normalisation serves both paths.
    net = DPECConvNeXt(num_classes, timm_name, name=name, **kwargs)
    cfg = getattr(net.trunk, "pretrained_cfg", None) or {}
    return Normalized(net, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))


@BACKBONES.register("dpec_convnext")
def dpec_convnext(
    num_classes: int,
    pretrained: bool = False,
    pretrained_file: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """DPEC ConvNeXt on ConvNeXt-T (the CMI network of the paper's Table II)."""
    return _build(
        "dpec_convnext",
        "convnext_tiny",
        num_classes,
        pretrained=pretrained,
        pretrained_file=pretrained_file,
        **kwargs,
    )


@BACKBONES.register("test_dpec_convnext")
def test_dpec_convnext(
    num_classes: int,
    pretrained: bool = False,
    pretrained_file: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A tiny DPEC ConvNeXt on timm's ``test_convnext`` for tests."""
    return _build(
        "test_dpec_convnext",
        "test_convnext",
        num_classes,
        pretrained=pretrained,
        pretrained_file=pretrained_file,
        **kwargs,
    )
