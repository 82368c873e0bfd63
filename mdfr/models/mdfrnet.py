"""MDFRNet: multi-domain CMI feature restoration (Zhang et al., paper §III).

A 64×64 AI-compressed RGB patch in [0, 1] goes through two restoration branches,

* **SFR** (spatial): a UNet restores the pixels;
* **FFR** (frequency): per-channel 2-D FFT; the amplitude loses the dataset's average
  amplitude increment M, ``A' = max(A - M, 0)``; the phase goes through a second UNet,
  ``P' = UNet(P)``; the output is ``real(IFFT(A' · e^{iP'}))``;

whose outputs **FFS** fuses (two 3×3 convs) and re-weights per channel (dual-pooling cross
channel attention) before a 1×1 conv maps them back to an RGB patch, ``restored``, which the
(normally frozen) CMI network classifies.

Decisions on points the paper leaves open (each one is ours, not the paper's):

* **Identity start** (``model.identity_start``, default on). At initialisation ``restored``
  equals the compressed input exactly, whatever the switches and the amplitude increment:
  both UNets predict a *correction* (``sfr = x + UNet(x)``, ``P' = P + π · UNet(P / π)``)
  whose output conv starts at zero, and FFS predicts a correction too,
  ``restored = x + FFS(sfr, ffr)``, with its output conv at zero. The compressed patch is
  already close to the original (MSE 0.0056 on the demo set); a network that starts elsewhere
  (MSE 0.128 with default initialisation) spends its budget re-learning the identity and ended
  *below* the compressed accuracy (30.5% vs 33.6% compressed, JPEG-50 demo set; 37.5% with
  this start). Gradients still reach every layer: the zero output convs get non-zero
  gradients on the first step and pass them on from the second. ``identity_start: false``
  keeps the paper's literal wiring (``restored = conv1×1(FFS features)``, default
  initialisation everywhere) for faithful reproduction.
* **Phase into the UNet.** The phase enters as ``P / π`` (3 channels, in [-1, 1]), so the
  phase UNet is "the same UNet structure" as SFR (3 -> 3 channels) and sees unit-scale inputs.
  We do not feed ``[cos P, sin P]``: the paper's loss compares raw angles ``P_ori - P'``, so
  the network has to produce raw angles anyway, and 3 -> 3 keeps both UNets identical.
* **What FFS pools.** The channel attention pools the *upper branch's* output (the ``width``
  fused channels), as in SE/CBAM attention, which computes statistics of the very features it
  re-weights. Pooling the 3- or 6-channel concatenated images would give the attention
  almost nothing to select with. Two 1×1 convs, shared by both poolings as CBAM shares its
  MLP, turn a pooled vector into its *inner* and *outer* vectors:
  ``cross_max = inner(max) ⊙ outer(avg) + max``, ``cross_avg = inner(avg) ⊙ outer(max) + avg``,
  ``attention = σ(conv1×1(cross_max + cross_avg))``. With ``pooling: max`` (or ``avg``) the
  same formula runs with that single pooled vector in both roles,
  ``cross = inner(max) ⊙ outer(max) + max``: the same parameters and the same arithmetic, so
  the ablation changes only the statistics, not the capacity.
* **Branch switches.** With ``sfr`` or ``ffr`` off, FFS fuses only the remaining branch's
  3 channels; the missing output is ``None`` in the result.
* **Precision.** FFT, amplitude mask and IFFT always run in float32 with autocast disabled
  (bf16 FFTs lose the small high-frequency amplitudes the method is about); the UNets and
  FFS run under whatever autocast the caller set.
* **Amplitude increment layout.** M has shape (3, H, W) in ``torch.fft.fft2``'s layout (DC at
  [0, 0], no fftshift, ``norm="backward"``) of patches scaled to [0, 1]. It is a buffer, so
  checkpoints carry it; when none is given it is zero (the engine passes none when
  ``amplitude_mask`` is off, and ``load_state_dict`` restores it from a checkpoint).
* **Frozen CMI.** Unless ``cmi_trainable``, the CMI net's parameters get
  ``requires_grad=False`` and it stays in eval mode through ``train()``, so neither its
  weights nor its BatchNorm statistics move while gradients still flow through it to
  ``restored``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from mdfr.config import ModelConfig
from mdfr.errors import MdfrError
from mdfr.models.unet import UNet, conv_bn_relu
from mdfr.registry import MODELS


def _fft_autocast_off(x: torch.Tensor) -> torch.autocast:
    """An autocast-disabled region for the device of ``x`` (FFTs stay in float32)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def phase_of(x: torch.Tensor) -> torch.Tensor:
    """Phase (angle) of the per-channel 2-D FFT of ``x`` ``(..., H, W)``, in float32.

    FFR computes ``P`` the same way.
    """
    return spectrum_of(x)[1]


def spectrum_of(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(amplitude, phase)`` of the per-channel 2-D FFT of ``x`` ``(..., H, W)``, float32.

    The loss computes ``A_ori`` and ``P_ori`` with it.
    """
    with _fft_autocast_off(x):
        spec = torch.fft.fft2(x.float())
        return spec.abs(), spec.angle()


def _zero_(conv: nn.Conv2d) -> None:
    """Start ``conv`` at zero output (the identity start of a residual branch)."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class SFR(nn.Module):
    """Spatial feature restoration: ``x + UNet(x)``."""

    def __init__(self, width: int, depth: int, identity_start: bool = True):
        super().__init__()
        self.unet = UNet(3, 3, width, depth)
        if identity_start:
            _zero_(self.unet.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.unet(x)


class FFR(nn.Module):
    """Frequency feature restoration: masked amplitude, UNet-restored phase, inverse FFT.

    Args:
        width, depth: phase UNet shape.
        amplitude_mask: subtract the average amplitude increment M (else ``A' = A``).
        phase_restore: restore the phase with a UNet (else ``P' = P``).
        amplitude_increment: M, shape (3, H, W); zeros when ``None``.
        size: patch side, used for the zero M.
        identity_start: the phase UNet's correction starts at zero (``P' = P``).
    """

    def __init__(
        self,
        width: int,
        depth: int,
        amplitude_mask: bool = True,
        phase_restore: bool = True,
        amplitude_increment: torch.Tensor | np.ndarray | None = None,
        size: int = 64,
        identity_start: bool = True,
    ):
        super().__init__()
        self.amplitude_mask = amplitude_mask
        if amplitude_increment is None:
            m = torch.zeros(3, size, size)
        elif isinstance(amplitude_increment, torch.Tensor):
            m = amplitude_increment.detach().to("cpu", torch.float32).clone()
        else:
            m = torch.as_tensor(np.asarray(amplitude_increment, dtype=np.float32)).clone()
        if m.ndim != 3 or m.shape[0] != 3:
            raise MdfrError(f"amplitude increment must have shape (3, H, W), got {tuple(m.shape)}")
        self.register_buffer("amplitude_increment", m)
        self.phase_unet = UNet(3, 3, width, depth) if phase_restore else None
        if self.phase_unet is not None and identity_start:
            _zero_(self.phase_unet.out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(ffr_image, restored_phase)``, both float32 ``(B, 3, H, W)``."""
        with _fft_autocast_off(x):
            spec = torch.fft.fft2(x.float())
            amp, phase = spec.abs(), spec.angle()
            if self.amplitude_mask:
                m = self.amplitude_increment
                if m.shape[-2:] != amp.shape[-2:]:
                    raise MdfrError(
                        f"amplitude increment is {tuple(m.shape[-2:])} but the patches are "
                        f"{tuple(amp.shape[-2:])}"
                    )
                amp = torch.relu(amp - m)
        if self.phase_unet is not None:
            # The UNet may run in bf16 under autocast; its correction is brought back to fp32.
            phase = phase + math.pi * self.phase_unet(phase / math.pi).float()
        with _fft_autocast_off(x):
            out = torch.fft.ifft2(torch.polar(amp, phase.float())).real
        return out, phase


class FFS(nn.Module):
    """Feature fusion and selection: 3×3 fusion convs, dual-pooling cross channel attention.

    Args:
        in_ch: channels of the concatenated branch outputs (3 or 6).
        width: fused channels (the UNet width).
        pooling: ``dual`` (cross fusion of max and avg pooling), ``max`` or ``avg``.
        zero_out: start the output conv at zero (the identity start: FFS then predicts a
            correction that MDFRNet adds to its input).
    """

    def __init__(self, in_ch: int, width: int, pooling: str = "dual", zero_out: bool = False):
        super().__init__()
        if pooling not in ("dual", "max", "avg"):
            raise ValueError(f"pooling must be 'dual', 'max' or 'avg', got {pooling!r}")
        self.pooling = pooling
        self.upper = nn.Sequential(conv_bn_relu(in_ch, width), conv_bn_relu(width, width))
        self.inner = nn.Conv2d(width, width, 1)
        self.outer = nn.Conv2d(width, width, 1)
        self.fuse = nn.Conv2d(width, width, 1)
        self.out = nn.Conv2d(width, 3, 1)
        if zero_out:
            _zero_(self.out)

    def attention(self, u: torch.Tensor) -> torch.Tensor:
        """Channel weights ``(B, width, 1, 1)`` in (0, 1) for the fused features ``u``."""
        p_max = torch.amax(u, dim=(2, 3), keepdim=True)
        p_avg = torch.mean(u, dim=(2, 3), keepdim=True)
        if self.pooling == "dual":
            cross_max = self.inner(p_max) * self.outer(p_avg) + p_max
            cross_avg = self.inner(p_avg) * self.outer(p_max) + p_avg
            s = cross_max + cross_avg
        else:
            p = p_max if self.pooling == "max" else p_avg
            s = self.inner(p) * self.outer(p) + p
        return torch.sigmoid(self.fuse(s))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        u = self.upper(feats)
        return self.out(u * self.attention(u))


class MDFRNet(nn.Module):
    """SFR + FFR -> FFS -> (optional) CMI network.

    Args:
        cfg: switches and UNet shape (``width``, ``depth``, ``sfr``, ``ffr``,
            ``amplitude_mask``, ``pooling``, ``phase_restore``, ``cmi_trainable``,
            ``identity_start``).
        num_classes: camera models; the attached CMI net must output this many logits.
        amplitude_increment: M (3, 64, 64) from the dataset's training split.
        cmi: CMI network taking ``restored`` (B, 3, 64, 64) to logits; frozen unless
            ``cfg.cmi_trainable``.

    ``forward(compressed)`` returns ``{"restored", "sfr", "ffr", "phase"}`` plus ``"logits"``
    when a CMI net is attached; ``sfr``/``ffr``/``phase`` are ``None`` when that branch is off,
    and ``phase`` is the compressed phase itself when ``phase_restore`` is off.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        num_classes: int,
        amplitude_increment: torch.Tensor | np.ndarray | None = None,
        cmi: nn.Module | None = None,
    ):
        super().__init__()
        if not (cfg.sfr or cfg.ffr):
            raise MdfrError("MDFRNet needs at least one of the sfr and ffr branches")
        self.cfg = cfg
        self.num_classes = num_classes
        ident = cfg.identity_start
        self.sfr = SFR(cfg.width, cfg.depth, ident) if cfg.sfr else None
        self.ffr = (
            FFR(
                cfg.width,
                cfg.depth,
                cfg.amplitude_mask,
                cfg.phase_restore,
                amplitude_increment,
                identity_start=ident,
            )
            if cfg.ffr
            else None
        )
        self.ffs = FFS(3 * (int(cfg.sfr) + int(cfg.ffr)), cfg.width, cfg.pooling, zero_out=ident)
        self.cmi = cmi
        self.cmi_frozen = cmi is not None and not cfg.cmi_trainable
        if self.cmi_frozen:
            cmi.requires_grad_(False)
            cmi.eval()

    def train(self, mode: bool = True) -> MDFRNet:
        super().train(mode)
        if self.cmi_frozen:
            self.cmi.eval()  # BatchNorm statistics of a frozen CMI net must not move either
        return self

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        sfr = self.sfr(x) if self.sfr is not None else None
        ffr, phase = self.ffr(x) if self.ffr is not None else (None, None)
        feats = torch.cat([t for t in (sfr, ffr) if t is not None], dim=1)
        restored = self.ffs(feats)
        if self.cfg.identity_start:
            restored = x + restored
        out: dict[str, Any] = {"restored": restored, "sfr": sfr, "ffr": ffr, "phase": phase}
        if self.cmi is not None:
            logits = self.cmi(restored)
            if logits.shape[-1] != self.num_classes:
                raise MdfrError(
                    f"CMI network gives {logits.shape[-1]} logits, expected {self.num_classes}"
                )
            out["logits"] = logits
        return out


@MODELS.register("mdfrnet")
def mdfrnet(
    cfg: ModelConfig,
    num_classes: int,
    amplitude_increment: torch.Tensor | np.ndarray | None = None,
    cmi: nn.Module | None = None,
) -> MDFRNet:
    """Build MDFRNet from a :class:`~mdfr.config.ModelConfig` (see :class:`MDFRNet`)."""
    return MDFRNet(cfg, num_classes, amplitude_increment, cmi)
