"""Learned-codec architectures of our own, built from CompressAI's layers.

``mdfr-factorized-s2`` and ``mdfr-factorized-s3``: Ballé et al.'s factorized-prior codec
(CompressAI's ``bmshj2018-factorized``: conv + GDN analysis, entropy bottleneck, deconv +
inverse GDN synthesis) with 2 or 3 downsampling stages instead of 4.

Why: the offline demo trains its attack on two CPU cores in about a minute. Measured on the
synthetic demo images (64×64 crops, batch 8, Adam 2e-3, 1 thread), the four-stage model was
still at ~21 dB after 4,000 steps and shifted colours (a green flat field decoded blue): an
attack that leaves no camera signal at all, so nothing — fine-tuning included — can recover
from it. Two or three stages reach 25–27 dB in 3,000 steps and keep colours, which is the
regime the paper's HiFiC attack is in (the camera signal survives in a form a CMI net trained
on originals cannot read). The rate is set by ``lmbda`` as usual; with fewer stages the
latent grid is finer (stride 4 or 8), so these models sit at higher rates than the zoo's.
"""

from __future__ import annotations

from compressai.layers import GDN
from compressai.models import FactorizedPrior
from compressai.models.utils import conv, deconv
from torch import nn

# arch name -> downsampling stages
SHALLOW = {"mdfr-factorized-s2": 2, "mdfr-factorized-s3": 3}


class ShallowFactorizedPrior(FactorizedPrior):
    """``bmshj2018-factorized`` with ``stages`` stride-2 stages (2 or 3) instead of 4.

    Compression, decompression, the entropy bottleneck and the checkpoint format are the
    parent's; only the transforms are shorter.
    """

    def __init__(self, N: int, M: int, stages: int = 2, **kwargs):
        super().__init__(N, M, **kwargs)
        if stages not in (2, 3):
            raise ValueError(f"stages must be 2 or 3, got {stages}")
        self.stages = stages
        chans = [3] + [N] * (stages - 1) + [M]
        analysis: list[nn.Module] = []
        for i in range(stages):
            analysis.append(conv(chans[i], chans[i + 1]))
            if i < stages - 1:
                analysis.append(GDN(chans[i + 1]))
        synthesis: list[nn.Module] = []
        back = chans[::-1]
        for i in range(stages):
            synthesis.append(deconv(back[i], back[i + 1]))
            if i < stages - 1:
                synthesis.append(GDN(back[i + 1], inverse=True))
        self.g_a = nn.Sequential(*analysis)
        self.g_s = nn.Sequential(*synthesis)

    @property
    def downsampling_factor(self) -> int:
        return 2**self.stages


def build_shallow(arch: str, n: int, m: int) -> ShallowFactorizedPrior:
    return ShallowFactorizedPrior(n, m, stages=SHALLOW[arch])
