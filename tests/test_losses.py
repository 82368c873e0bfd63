"""Losses against independent numpy computations (np.fft, np.angle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdfr.config import LossConfig
from mdfr.losses import (
    cmi_cross_entropy,
    mdfr_loss,
    phase_flatness,
    spatial_mse,
    wrapped_phase_distance,
)
from mdfr.models import phase_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Odd sides: no Nyquist bins, whose real-valued FFT coefficients could get angle +π in one
# library and −π in the other.
SHAPE = (3, 3, 15, 15)


def rand(seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def np_flatness(p_ori: np.ndarray, p_res: np.ndarray, eps: float = 1e-8) -> float:
    s = np.mean(np.abs(p_ori - p_res) ** 2, axis=0)  # (C, K, K)
    per_channel = [
        np.mean(np.log(sc + eps)) - np.log(np.mean(sc) + eps) for sc in s.reshape(s.shape[0], -1)
    ]
    return float(np.mean(per_channel))


def np_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def test_phase_of_matches_numpy_angle():
    x = rand(0)
    want = np.angle(np.fft.fft2(x.double().numpy()))
    diff = np.angle(np.exp(1j * (phase_of(x).numpy() - want)))  # wrap-aware difference
    assert np.abs(diff).max() < 1e-4


def test_spatial_mse_matches_numpy():
    a, b = rand(1), rand(2)
    want = np.mean((a.double().numpy() - b.double().numpy()) ** 2)
    assert spatial_mse(a, b).item() == pytest.approx(want, rel=1e-5)


def test_phase_flatness_matches_numpy_per_channel_average():
    p_ori = np.angle(np.fft.fft2(rand(3).double().numpy()))
    # structured, non-flat error, of a different size in each colour channel
    scale = np.array([0.01, 0.3, 3.0]).reshape(1, 3, 1, 1)
    p_res = p_ori + scale * rand(4).double().numpy() ** 3
    got = phase_flatness(torch.from_numpy(p_ori), torch.from_numpy(p_res)).item()
    want = np_flatness(p_ori, p_res)
    assert got == pytest.approx(want, rel=1e-4) and want < -0.1
    # per channel then averaged, not one ratio over all channels pooled
    s = np.mean(np.abs(p_ori - p_res) ** 2, axis=0).ravel()
    pooled = np.mean(np.log(s + 1e-8)) - np.log(np.mean(s) + 1e-8)
    assert abs(got - pooled) > 0.1


@pytest.mark.parametrize("seed", range(5))
def test_phase_flatness_is_never_positive(seed):
    a, b = rand(10 + seed) * 6 - 3, rand(20 + seed) * 6 - 3
    assert phase_flatness(a, b).item() <= 0


def test_phase_flatness_is_zero_for_flat_and_for_perfect_restoration():
    p = rand(5) * 6 - 3
    assert phase_flatness(p, p + 0.25).item() == pytest.approx(0, abs=1e-6)  # S constant
    exact = p.clone().requires_grad_(True)
    value = phase_flatness(p, exact)  # S ≡ 0: log(eps) - log(eps), not nan
    assert value.item() == 0
    value.backward()
    assert torch.isfinite(exact.grad).all()


def test_cmi_cross_entropy_matches_numpy():
    logits = rand(6, (4, 5)) * 4
    labels = torch.tensor([0, 3, 4, 1])
    want = np_cross_entropy(logits.double().numpy(), labels.numpy())
    assert cmi_cross_entropy(logits, labels).item() == pytest.approx(want, rel=1e-5)


def test_mdfr_loss_total_and_parts_match_numpy():
    original, sfr, phase = rand(7), rand(8), rand(9) * 6 - 3
    logits, labels = rand(10, (3, 5)), torch.tensor([1, 0, 4])
    cfg = LossConfig(lambda_spa=0.6, lambda_freq=0.5, lambda_cmi=0.8)
    out = mdfr_loss(
        {"restored": sfr, "sfr": sfr, "ffr": sfr, "phase": phase, "logits": logits},
        original,
        labels,
        cfg,
    )
    o = original.double().numpy()
    spa = np.mean((sfr.double().numpy() - o) ** 2)
    freq = np_flatness(np.angle(np.fft.fft2(o)), phase.double().numpy())
    cmi = np_cross_entropy(logits.double().numpy(), labels.numpy())
    assert out["spa"].item() == pytest.approx(spa, rel=1e-5)
    assert out["freq"].item() == pytest.approx(freq, rel=1e-4)
    assert out["cmi"].item() == pytest.approx(cmi, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.6 * spa - 0.5 * freq + 0.8 * cmi, rel=1e-4)
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in out.values())


def test_mdfr_loss_terms_of_absent_branches_are_zero_tensors():
    original, labels = rand(11), torch.tensor([0, 1, 2])
    out = mdfr_loss(
        {"restored": original, "sfr": None, "ffr": None, "phase": None},
        original,
        labels,
        LossConfig(),
    )
    for k in ("loss", "spa", "freq", "phase_dist", "cmi"):
        assert isinstance(out[k], torch.Tensor) and out[k].item() == 0, k


def test_mdfr_loss_takes_bf16_outputs():
    original, labels = rand(12), torch.tensor([0, 1, 2])
    logits = rand(13, (3, 4)).bfloat16()
    out = mdfr_loss(
        {"sfr": rand(14).bfloat16(), "phase": rand(15).bfloat16(), "logits": logits},
        original,
        labels,
        LossConfig(),
    )
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


# --------------------------------------------------------------------------- wrapped distance


def np_wrapped(p_ori: np.ndarray, p_res: np.ndarray, amp: np.ndarray) -> float:
    w = amp / amp.sum(axis=(-2, -1), keepdims=True)
    return float(np.mean((w * (1 - np.cos(p_ori - p_res))).sum(axis=(-2, -1))))


def test_wrapped_distance_is_zero_for_equal_phases_and_blind_to_2pi_wraps():
    p, amp = rand(20) * 6 - 3, rand(21) + 0.1
    assert wrapped_phase_distance(p, p, amp).item() == pytest.approx(0, abs=1e-7)
    k = torch.randint(-3, 4, p.shape, generator=torch.Generator().manual_seed(22))
    wrapped = p + 2 * np.pi * k  # the same angles, other branches
    assert k.abs().sum() > 0
    assert wrapped_phase_distance(p, wrapped, amp).item() == pytest.approx(0, abs=1e-6)
    q = rand(23) * 6 - 3
    assert wrapped_phase_distance(p, q + 2 * np.pi * k, amp).item() == pytest.approx(
        wrapped_phase_distance(p, q, amp).item(), rel=1e-5
    )
    # ...while the paper's flatness term sees the wraps as errors
    assert phase_flatness(p, wrapped).item() < -0.1


def test_wrapped_distance_matches_numpy_and_grows_with_the_error():
    p, amp = rand(24) * 6 - 3, rand(25)
    small, large = p + 0.1 * rand(26), p + 1.0 * rand(26)
    got = wrapped_phase_distance(p, large, amp).item()
    want = np_wrapped(p.double().numpy(), large.double().numpy(), amp.double().numpy())
    assert got == pytest.approx(want, rel=1e-5)
    assert 0 < wrapped_phase_distance(p, small, amp) < wrapped_phase_distance(p, large, amp)


def test_flatness_prefers_a_large_flat_error_the_wrapped_distance_does_not():
    # The flaw the wrapped distance fixes: a uniform error of 1.5 rad is "perfect" for
    # log(GM/AM), a small structured error is worse; the wrapped distance ranks them right.
    p, amp = rand(27) * 6 - 3, rand(28) + 0.1
    flat_large = p + 1.5
    structured_small = p + 0.05 * (rand(29) > 0.5).float()
    assert phase_flatness(p, flat_large) > phase_flatness(p, structured_small)
    assert wrapped_phase_distance(p, flat_large, amp) > wrapped_phase_distance(
        p, structured_small, amp
    )


def test_phase_loss_switch_picks_the_term_in_the_total():
    original, sfr, phase = rand(30), rand(31), rand(32) * 6 - 3
    logits, labels = rand(33, (3, 5)), torch.tensor([1, 0, 4])
    out_dict = {"sfr": sfr, "phase": phase, "logits": logits}
    paper = mdfr_loss(out_dict, original, labels, LossConfig(phase_loss="flatness"))
    ours = mdfr_loss(out_dict, original, labels, LossConfig(phase_loss="wrapped"))
    for k in ("spa", "freq", "phase_dist", "cmi"):  # both runs log both phase terms
        assert torch.equal(paper[k], ours[k]), k
    rest = 0.6 * paper["spa"] + 0.8 * paper["cmi"]
    assert paper["loss"].item() == pytest.approx((rest - 0.5 * paper["freq"]).item(), rel=1e-6)
    assert ours["loss"].item() == pytest.approx((rest + 0.5 * ours["phase_dist"]).item(), rel=1e-6)
