"""MDFRNet's training losses (paper §III-E, eqs. 1-8).

``mdfr_loss`` returns ``{"loss", "spa", "freq", "phase_dist", "cmi"}`` as tensors (CompressAI
style: the loop back-propagates ``out["loss"]`` and logs the parts); with the paper's phase
term (``loss.phase_loss: flatness``) the total is

    loss = λ1 · L_spa − λ2 · L_freq + λ3 · L_CMI

``L_freq = log(S_GM / S_AM) <= 0`` is *subtracted*, so training drives the ratio towards 1,
which the paper reads as well-restored phase (the spectral-flatness idea is borrowed from
Noiseprint's regulariser).

**A flaw in the paper's phase term, and our alternative.** ``log(S_GM / S_AM)`` measures how
*flat* the phase-error spectrum is, not how *small*: any uniform error, however large,
maximises it, and it compares unwrapped angles (``P`` and ``P + 2π`` count as different).
Trained on that term alone the low-frequency phase error grew from 0.82 to 2.34 rad while the
loss "improved". ``loss.phase_loss: wrapped`` replaces it in the total by
:func:`wrapped_phase_distance`, the amplitude-weighted ``1 − cos(P_ori − P')``, which is zero
only for the right phase (modulo 2π) and weighs each frequency by the energy the original
has there:

    loss = λ1 · L_spa + λ2 · D_phase + λ3 · L_CMI

Both phase terms are computed and logged either way, so every run shows both.

All terms are computed in float32 whatever autocast produced the outputs in.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mdfr.config import LossConfig
from mdfr.models.mdfrnet import spectrum_of


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


def wrapped_phase_distance(
    p_ori: torch.Tensor, p_restored: torch.Tensor, amp_ori: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Amplitude-weighted wrapped phase distance, ``Σ A (1 − cos ΔP) / Σ A``, in [0, 2].

    ``1 − cos ΔP`` is 0 only when the phases agree modulo 2π and grows with the angle between
    them; weighting by the original's amplitude ``A`` makes it the phase part of the
    spectral error (an error at a frequency with no energy changes no pixel). The weights are
    normalised per patch and channel, so bright and dark patches count alike.

    Args:
        p_ori: original phase ``(B, C, K, K)``.
        p_restored: restored phase, same shape.
        amp_ori: original amplitude ``|FFT(original)|``, same shape.
        eps: guards the normalisation of an all-zero spectrum.

    Returns:
        A scalar tensor ``>= 0``; ``0`` for equal phases.
    """
    if not p_ori.shape == p_restored.shape == amp_ori.shape:
        raise ValueError(
            f"phase/amplitude shapes differ: {tuple(p_ori.shape)}, {tuple(p_restored.shape)}, "
            f"{tuple(amp_ori.shape)}"
        )
    w = amp_ori.float()
    w = w / (w.sum(dim=(-2, -1), keepdim=True) + eps)
    d = 1.0 - torch.cos(p_ori.float() - p_restored.float())
    return (w * d).sum(dim=(-2, -1)).mean()


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
        ``{"loss", "spa", "freq", "phase_dist", "cmi"}``: ``freq`` is the paper's flatness
        term, ``phase_dist`` the wrapped distance; ``cfg.phase_loss`` picks which one enters
        ``loss``. A term whose branch is absent is a zero tensor. With ``phase_restore`` off,
        both phase terms still measure the (unrestored) compressed phase but carry no
        gradient.
    """
    zero = original.new_zeros((), dtype=torch.float32)
    sfr, phase, logits = out.get("sfr"), out.get("phase"), out.get("logits")
    spa = spatial_mse(sfr, original) if sfr is not None else zero
    freq = dist = zero
    if phase is not None:
        amp_ori, p_ori = spectrum_of(original)
        freq = phase_flatness(p_ori, phase, cfg.eps)
        dist = wrapped_phase_distance(p_ori, phase, amp_ori, cfg.eps)
    cmi = cmi_cross_entropy(logits, labels) if logits is not None else zero
    phase_term = -freq if cfg.phase_loss == "flatness" else dist
    loss = cfg.lambda_spa * spa + cfg.lambda_freq * phase_term + cfg.lambda_cmi * cmi
    return {"loss": loss, "spa": spa, "freq": freq, "phase_dist": dist, "cmi": cmi}
