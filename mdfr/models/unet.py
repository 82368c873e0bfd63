"""The UNet that SFR restores pixels with and FFR restores phase with (paper §III-C).

Encoder: a 3×3 conv ``in_ch -> width`` at full resolution, then ``depth`` stages, each a 2×2
max-pool followed by a 3×3 conv that doubles the channels (paper: width 64, depth 4, so
64 -> 128 -> 256 -> 512 -> 1024 at 4×4). Decoder, mirrored: per stage a 2×2 transposed conv
upsamples and halves the channels, the encoder feature map of that resolution is concatenated
(the skip), and a 3×3 conv brings ``2c`` back to ``c``. A 1×1 conv gives ``out_ch`` channels.

Choices the paper leaves open:

* One 3×3 conv per stage, as the paper describes, not the two of Ronneberger's UNet; it keeps
  the two paper-width UNets at ~15 M parameters each.
* Every 3×3 conv is followed by BatchNorm and ReLU (the paper names no normalisation; BN is
  the usual UNet choice and trains stably at the paper's learning rate). The 1×1 output conv
  is linear: pixel and phase corrections are signed.
* Upsampling is a learned 2×2 transposed conv rather than bilinear interpolation: it is the
  "conv that halves the channels" of the paper's decoder, and unlike bilinear upsampling,
  whose CUDA backward has no deterministic implementation, it leaves
  ``torch.use_deterministic_algorithms(True)`` usable.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    """3×3 conv (no bias: BN follows) + BatchNorm + ReLU, resolution preserved."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Encoder-decoder with skip connections; output has the input's spatial size.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        width: channels after the first conv; stage ``i`` has ``width * 2**i``.
        depth: number of 2× down-sampling stages; the input side must be divisible by
            ``2**depth`` (64×64 patches allow up to 6).
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 3, width: int = 64, depth: int = 4):
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"UNet needs width >= 1 and depth >= 1, got {width=} {depth=}")
        self.depth = depth
        chs = [width * 2**i for i in range(depth + 1)]
        self.inc = conv_bn_relu(in_ch, chs[0])
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList(conv_bn_relu(chs[i], chs[i + 1]) for i in range(depth))
        # Decoder modules are listed deepest first, the order forward() uses them in.
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chs[i + 1], chs[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.dec = nn.ModuleList(conv_bn_relu(2 * chs[i], chs[i]) for i in reversed(range(depth)))
        self.out = nn.Conv2d(chs[0], out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = 2**self.depth
        if x.shape[-2] % side or x.shape[-1] % side:
            raise ValueError(
                f"UNet of depth {self.depth} needs sides divisible by {side}, got {tuple(x.shape)}"
            )
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(self.pool(skips[-1])))
        h = skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            h = dec(torch.cat([up(h), skips.pop()], dim=1))
        return self.out(h)
