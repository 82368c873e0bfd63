"""Parameter and FLOP counting (complexity.profile)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mdfr.config import ModelConfig
from mdfr.models import FFR, create_backbone, create_model
from mdfr.models.complexity import CUSTOM_FLOPS, profile

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _flops(fn) -> int:
    counter = FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS)
    with counter:
        fn()
    return counter.get_total_flops()


def test_fft_flops_are_estimated_analytically():
    n = 64 * 64
    x = torch.rand(2, 3, 64, 64)
    per_complex = 5 * n * math.log2(n)
    # fft2 runs a full complex transform even for real input (2 * 3 of them) ...
    assert _flops(lambda: torch.fft.fft2(x)) == round(6 * per_complex)
    z = torch.fft.fft2(x)
    assert _flops(lambda: torch.fft.ifft2(z)) == round(6 * per_complex)
    # ... whereas real-input / real-output transforms count half
    assert _flops(lambda: torch.fft.rfft2(x)) == round(6 * per_complex / 2)
    assert _flops(lambda: torch.fft.irfft2(torch.fft.rfft2(x))) == round(6 * per_complex)


def test_depthwise_conv_backward_costs_two_forwards():
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16)
    x = torch.rand(2, 16, 8, 8, requires_grad=True)
    forward = _flops(lambda: conv(x))
    assert forward == 2 * 2 * 16 * 9 * 64  # 2 FLOPs per MAC, one 3×3 filter per channel
    assert _flops(lambda: conv(x).sum().backward()) == 3 * forward


def test_profile_counts_parameters_and_flops_per_patch():
    torch.manual_seed(0)
    cmi = create_backbone("test_remnet", 5)
    net = create_model("mdfrnet", ModelConfig(width=8, depth=2), num_classes=5, cmi=cmi)
    p = profile(net)
    total = sum(q.numel() for q in net.parameters())
    frozen = sum(q.numel() for q in cmi.parameters())
    assert p["params"] == total and p["trainable_params"] == total - frozen
    assert 2 * p["flops_forward"] < p["flops_train_step"] < 4 * p["flops_forward"]
    assert profile(net, batch=4)["flops_forward"] == p["flops_forward"]  # per patch
    assert net.training  # restored the mode it found
    assert profile(net, train=False)["flops_train_step"] == 0


def test_profile_adds_the_ffts_of_ffr():
    torch.manual_seed(0)
    ffr = FFR(width=8, depth=2)
    n = 64 * 64
    ffts = 3 * 5 * n * math.log2(n) * 2  # fft2 and ifft2 of each colour channel
    got = profile(ffr, train=False)["flops_forward"]
    assert got == profile(ffr.phase_unet, train=False)["flops_forward"] + round(ffts)


def test_profile_channels_last_counts_the_same():
    torch.manual_seed(0)
    a = profile(create_backbone("test_resnet", 3), train=False)
    torch.manual_seed(0)
    net = create_backbone("test_resnet", 3)
    b = profile(net, train=False, channels_last=True)
    assert a == b
    assert net.net.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
