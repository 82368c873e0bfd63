"""RemNet (Rafi et al., "RemNet: remnant convolutional neural network for camera model
identification", Neural Computing and Applications 33, 2021), written here: no library ships it.

Our reading of the paper:

* **Pre-processing: three remnant blocks** with F = 64, 128, 256 filters, applied one after
  the other at full resolution. Each block is conv3×3(3→F)-BN-ReLU, conv3×3(F→F)-BN-ReLU,
  conv3×3(F→3) and estimates the scene content of its input; the block outputs the *remnant*,
  ``x - block(x)``, so content is suppressed step by step while the camera traces (the
  remnant) pass through. The residual form also means an untrained block is close to the
  identity, which is what makes the pre-processing "dynamic" rather than a fixed high-pass.
* **Classifier: a shallow strided CNN.** Five conv3×3-BN-ReLU layers (64, 128, 256, 256, 256
  filters; the first four with stride 2, taking 64×64 to 4×4), global average pooling, and
  two fully connected layers (256 hidden units, dropout 0.5). Strided convolutions replace
  pooling layers so that the downsampling is learned, as in the paper's classification block.

Input: ``(B, 3, 64, 64)`` in [0, 1], normalised to [-1, 1] inside. No public weights exist, so
``pretrained=True`` needs ``pretrained_file=`` (a state dict of this network).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mdfr.errors import MdfrError
from mdfr.models.backbones.common import Normalized
from mdfr.registry import BACKBONES


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class RemnantBlock(nn.Module):
    """``x - content(x)``: a three-conv content estimator subtracted from its input."""

    def __init__(self, filters: int, channels: int = 3):
        super().__init__()
        self.content = nn.Sequential(
            _conv_bn_relu(channels, filters),
            _conv_bn_relu(filters, filters),
            nn.Conv2d(filters, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.content(x)


class RemNet(nn.Module):
    """Remnant pre-processing + shallow strided classifier (normalised input).

    Args:
        num_classes: camera models.
        remnant_filters: F of each remnant block (paper: 64, 128, 256).
        channels: filters of the classifier's conv layers; all but the last use stride 2.
        hidden: units of the hidden fully connected layer.
        dropout: dropout before the last layer.
    """

    def __init__(
        self,
        num_classes: int,
        remnant_filters: Sequence[int] = (64, 128, 256),
        channels: Sequence[int] = (64, 128, 256, 256, 256),
        hidden: int = 256,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.remnant = nn.Sequential(*(RemnantBlock(f) for f in remnant_filters))
        layers, prev = [], 3
        for i, ch in enumerate(channels):
            layers.append(_conv_bn_relu(prev, ch, stride=2 if i < len(channels) - 1 else 1))
            prev = ch
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(prev, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Global average pooling as a mean: unlike AdaptiveAvgPool2d its CUDA backward is
        # deterministic.
        return self.head(self.features(self.remnant(x)).mean(dim=(2, 3)))


def _build(
    name: str,
    num_classes: int,
    pretrained: bool,
    pretrained_file: str | os.PathLike[str] | None,
    **arch: object,
) -> nn.Module:
    net = RemNet(num_classes, **arch)  # type: ignore[arg-type]
    if pretrained or pretrained_file is not None:
        if pretrained_file is None:
            raise MdfrError(
                f"backbone {name!r} has no published pretrained weights; pass "
                "pretrained_file=<state dict of this network> or set model.pretrained: false"
            )
        path = Path(pretrained_file).expanduser()
        try:
            from timm.models import load_state_dict

            state = load_state_dict(str(path))
            if state and all(k.startswith("net.") for k in state):  # saved with the wrapper
                state = {k[4:]: v for k, v in state.items()}
            net.load_state_dict(state)
        except Exception as e:
            raise MdfrError(
                f"could not load pretrained weights for backbone {name!r} from {path}: "
                f"{type(e).__name__}: {e}"
            ) from e
    # [0, 1] -> [-1, 1]: zero-centred input for the remnant blocks.
    return Normalized(net, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@BACKBONES.register("remnet")
def remnet(
    num_classes: int,
    pretrained: bool = False,
    pretrained_file: str | os.PathLike[str] | None = None,
    **kwargs: object,
) -> nn.Module:
    """RemNet at the paper's size (F = 64/128/256)."""
    return _build("remnet", num_classes, pretrained, pretrained_file, **kwargs)


@BACKBONES.register("small_remnet")
def small_remnet(
    num_classes: int,
    pretrained: bool = False,
    pretrained_file: str | os.PathLike[str] | None = None,
    **kwargs: object,
) -> nn.Module:
    """RemNet at CPU scale, the offline demo's CMI net: one remnant block (F = 8) and a
    16-32-64-64-64 classifier, ~0.1 M parameters.

    Full-resolution convolutions dominate a CPU step (each remnant block costs more than the
    whole strided classifier), and the frozen CMI net is run forward and backward in every
    MDFRNet step; one narrow remnant block keeps a demo trial in seconds. On the synthetic
    demo set it reaches ~99% on original test patches (docs/science.md).
    """
    arch = dict(remnant_filters=(8,), channels=(16, 32, 64, 64, 64), hidden=64)
    return _build("small_remnet", num_classes, pretrained, pretrained_file, **{**arch, **kwargs})


@BACKBONES.register("test_remnet")
def test_remnet(
    num_classes: int,
    pretrained: bool = False,
    pretrained_file: str | os.PathLike[str] | None = None,
    **kwargs: object,
) -> nn.Module:
    """A tiny RemNet for tests."""
    arch = dict(remnant_filters=(4, 8, 8), channels=(8, 16, 16, 16, 16), hidden=16)
    return _build("test_remnet", num_classes, pretrained, pretrained_file, **{**arch, **kwargs})
