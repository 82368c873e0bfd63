"""The network mdfr hands to users: image patches in, camera-model logits out, per view.

A trained trial is logged (and loaded by ``mdfr identify``) as one :class:`CameraIdentifier`,
a module with a single tensor in and a single tensor out, so MLflow's PyTorch flavour can
export it as a graph (``torch.export``) and serve it:

    input   ``(N, 3, P, P)`` float32 RGB patches in [0, 1] (P = 64)
    output  ``(N, V, C)`` float32 logits over the C camera models, one row per *view*

Views (decided here, documented in the logged model's metadata as ``views``):

- a MDFRNet trial (``mode: mdfr``) gives two: ``input``, its CMI network on the patch as
  given, and ``restored``, the same network on MDFRNet's restoration of it. Both come from one
  forward pass, so a user sees what restoration changed without a second model;
- a classifier (``pretrain``: the CMI network; ``finetune``: the fine-tuned one) gives one,
  ``input``.

Why logits of the restored patch and not the restored patch itself: what users ask of a CMI
model is the camera; a second output would leave the single-tensor form MLflow's serving and
``pyfunc`` need. ``MDFRNet`` itself stays available inside (``identifier.net``).
"""

from __future__ import annotations

import torch
from torch import nn

from mdfr.models.mdfrnet import MDFRNet

PATCH = 64


class CameraIdentifier(nn.Module):
    """Per-view camera-model logits of patches (see the module docstring).

    Args:
        net: a :class:`MDFRNet` with its CMI network attached, or a CMI backbone.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        if isinstance(net, MDFRNet) and net.cmi is None:
            raise ValueError("CameraIdentifier needs MDFRNet with its CMI network attached")
        self.net = net

    @property
    def views(self) -> tuple[str, ...]:
        return ("input", "restored") if isinstance(self.net, MDFRNet) else ("input",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.net, MDFRNet):
            return torch.stack([self.net.cmi(x), self.net(x)["logits"]], dim=1).float()
        return self.net(x).unsqueeze(1).float()
