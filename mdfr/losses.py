"""MDFRNet's training losses (paper §III-E, eqs. 1-8).

``mdfr_loss`` returns ``{"loss", "spa", "freq", "cmi"}`` as tensors (CompressAI style: the
loop back-propagates ``out["loss"]`` and logs the parts); the total is

    loss = λ1 · L_spa − λ2 · L_freq + λ3 · L_CMI

``L_freq = log(S_GM / S_AM) <= 0`` is *subtracted*, so training drives the ratio towards 1,
which the paper reads as well-restored phase (the spectral-flatness idea is borrowed from
Noiseprint's regulariser).

All terms are computed in float32 whatever autocast produced the outputs in.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mdfr.config import LossConfig
from mdfr.models.mdfrnet import phase_of


def spatial_mse(sfr: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Eq. 1: mean squared error between the SFR output and the original patch."""
    return F.mse_loss(sfr.float(), original.float())


def phase_flatness(
    p_ori: torch.Tensor, p_restored: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Eqs. 4-6: ``log(S_GM / S_AM)`` of the batch-mean squared phase error.

    ``S(u, v) = mean_k |P_ori,k(u, v) − P_restored,k(u, v)|²`` over the batch (dim 0). The
    paper's phases are single maps; ours have colour channels, so the ratio is computed per
    channel, over that channel's K×K frequencies, and then averaged over channels (one flat
    channel cannot hide a structured one, and each channel's scale stays its own).

    ``eps`` sits inside both logs, ``mean log(S + eps) − log(mean S + eps)``, which keeps the
    value finite for a zero error and, by Jensen's inequality, still exactly ``<= 0``; it is
    ``0`` when S is flat (including S ≡ 0: perfectly restored phase).

    Args:
        p_ori: original phase ``(B, ..., K, K)``.
        p_restored: restored phase, same shape.
        eps: guard of the logs.

    Returns:
        A scalar tensor ``<= 0``.
    """
    if p_ori.shape != p_restored.shape:
        raise ValueError(f"phase shapes differ: {tuple(p_ori.shape)} vs {tuple(p_restored.shape)}")
    s = (p_ori.float() - p_restored.float()).pow(2).mean(dim=0)  # (..., K, K)
    log_gm = torch.log(s + eps).mean(dim=(-2, -1))
    log_am = torch.log(s.mean(dim=(-2, -1)) + eps)
    return (log_gm - log_am).mean()


def cmi_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 7: cross-entropy of the CMI network's logits against the camera-model labels."""
    return F.cross_entropy(logits.float(), labels)


def mdfr_loss(
    out: dict[str, Any], original: torch.Tensor, labels: torch.Tensor, cfg: LossConfig
) -> dict[str, torch.Tensor]:
    """Eq. 8 on an MDFRNet output dict.

    Args:
        out: ``MDFRNet.forward`` result: ``sfr``, ``phase`` (``None`` when that branch is
            off) and ``logits`` (absent without a CMI net).
        original: original patches ``(B, 3, 64, 64)`` in [0, 1] (float).
        labels: camera-model indices ``(B,)``.
        cfg: λ1..λ3 and the log guard.

    Returns:
        ``{"loss", "spa", "freq", "cmi"}``; a term whose branch is absent is a zero tensor.
        With ``phase_restore`` off, ``freq`` still measures the (unrestored) compressed phase
        but carries no gradient.
    """
    zero = original.new_zeros((), dtype=torch.float32)
    sfr, phase, logits = out.get("sfr"), out.get("phase"), out.get("logits")
    spa = spatial_mse(sfr, original) if sfr is not None else zero
    freq = phase_flatness(phase_of(original), phase, cfg.eps) if phase is not None else zero
    cmi = cmi_cross_entropy(logits, labels) if logits is not None else zero
    loss = cfg.lambda_spa * spa - cfg.lambda_freq * freq + cfg.lambda_cmi * cmi
    return {"loss": loss, "spa": spa, "freq": freq, "cmi": cmi}
