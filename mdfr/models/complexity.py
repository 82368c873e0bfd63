"""Parameter and FLOP counts per 64×64 patch, for reports and benchmarks.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`, which counts
matmul/convolution-like ops (2 FLOPs per multiply-add, forward and backward) and ignores
elementwise ops, pooling and normalisation, the usual convention of FLOP tables. It does not
know FFTs, so each FFT op (``_fft_r2c``, ``_fft_c2c``, ``_fft_c2r``: forward, inverse and their
backward passes) is added analytically as ``5 · N · log2(N)`` FLOPs per complex transform of
N points (Cooley-Tukey radix-2 estimate) and half that for real-input/real-output transforms,
times the number of transforms in the batch. Convolution backward is counted as one forward
pass per gradient computed (input, weight), because torch's formula overcounts the weight
gradient of grouped (depthwise) convolutions. A "training step" is one forward and one
backward pass (the optimiser update is elementwise and not counted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from mdfr.config import ModelConfig
from mdfr.models import create_backbone, create_model
from mdfr.registry import PAPER_BACKBONES

PATCH = 64


def _fft_flops(
    x_shape: Sequence[int], dim: Sequence[int], *args: Any, out_shape: Any = None, real: bool
) -> int:
    n = math.prod(x_shape[d] for d in dim) if dim else 1
    # A real<->complex transform of N points costs about half a complex one of N points.
    n_full = max(n, math.prod(out_shape[d] for d in dim) if out_shape is not None else n)
    batch = math.prod(x_shape) // max(n, 1)
    per = 5 * n_full * math.log2(n_full) if n_full > 1 else 0.0
    return int(round(batch * per * (0.5 if real else 1.0)))


def _r2c(x_shape: Sequence[int], dim: Sequence[int], *args: Any, out_shape: Any = None) -> int:
    return _fft_flops(x_shape, dim, out_shape=out_shape, real=True)


def _c2c(x_shape: Sequence[int], dim: Sequence[int], *args: Any, out_shape: Any = None) -> int:
    return _fft_flops(x_shape, dim, out_shape=out_shape, real=False)


def _c2r(x_shape: Sequence[int], dim: Sequence[int], *args: Any, out_shape: Any = None) -> int:
    return _fft_flops(x_shape, dim, out_shape=out_shape, real=True)


def _conv_backward(
    grad_out_shape: Sequence[int],
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: Sequence[bool],
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    # torch's own formula counts the weight gradient of a grouped conv as if ungrouped (a
    # depthwise conv's by a factor of its channels); each gradient costs one forward pass.
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


CUSTOM_FLOPS = {
    torch.ops.aten._fft_r2c: _r2c,
    torch.ops.aten._fft_c2c: _c2c,
    torch.ops.aten._fft_c2r: _c2r,
    torch.ops.aten.convolution_backward: _conv_backward,
}


def _scalar(out: Any) -> torch.Tensor:
    """A scalar depending on every floating output that carries gradient."""
    tensors = (
        out.values() if isinstance(out, dict) else (out if isinstance(out, tuple | list) else [out])
    )
    parts = [t.float().mean() for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad]
    if not parts:
        raise ValueError("model output carries no gradient: nothing to train")
    return torch.stack(parts).sum()


def _count(fn: Any) -> int:
    counter = FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS)
    with counter:
        fn()
    return int(counter.get_total_flops())


def profile(
    model: nn.Module,
    batch: int = 2,
    train: bool = True,
    channels_last: bool = False,
    size: int = PATCH,
) -> dict[str, int]:
    """Parameters and FLOPs of ``model`` per ``size``×``size`` RGB patch.

    Args:
        model: takes ``(B, 3, size, size)`` and returns a tensor or a dict of tensors.
        batch: patches per measured call (2: BatchNorm in train mode needs more than one
            value per channel); counts are divided by it.
        train: also measure a training step (forward + backward).
        channels_last: convert the model (in place) and the input to channels-last first.
        size: patch side.

    Returns:
        ``params``, ``trainable_params``, ``flops_forward`` and ``flops_train_step`` (0 when
        ``train`` is false), FLOPs per patch.
    """
    device = next(model.parameters()).device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            fwd = _count(lambda: model(x))
        step = 0
        if train:
            model.train()
            model.zero_grad(set_to_none=True)
            step = _count(lambda: _scalar(model(x)).backward())
            model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops_forward": fwd // batch,
        "flops_train_step": step // batch,
    }


def paper_scale_profiles(
    num_classes: int = 29, train: bool = True, backbones: Sequence[str] | None = None
) -> dict[str, dict[str, int]]:
    """Profiles of MDFRNet at the paper's width (64, depth 4) and of each Table I backbone.

    MDFRNet is profiled alone (no CMI network attached, every switch on): a restored patch
    costs ``mdfrnet`` plus the chosen backbone's forward; a training step with a frozen CMI
    net costs about ``mdfrnet.flops_train_step`` plus the backbone's forward and its
    input-gradient backward (roughly its train step minus its weight gradients).

    Args:
        num_classes: classifier width (29 VISION camera models in the paper).
        train: also measure training steps.
        backbones: names to profile (default: the five of Table I).
    """
    rng = torch.get_rng_state()
    try:
        torch.manual_seed(0)
        increment = torch.rand(3, PATCH, PATCH)
        mdfr = create_model("mdfrnet", ModelConfig(width=64, depth=4), num_classes, increment)
        out = {"mdfrnet": profile(mdfr, train=train)}
        for name in backbones or PAPER_BACKBONES:
            out[name] = profile(create_backbone(name, num_classes), train=train)
    finally:
        torch.set_rng_state(rng)
    return out
