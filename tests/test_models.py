"""MDFRNet and its UNet: shapes, switches, gradients, frozen CMI, precision, layouts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mdfr.config import LossConfig, ModelConfig
from mdfr.errors import MdfrError, UsageError
from mdfr.losses import mdfr_loss
from mdfr.models import UNet, create_backbone, create_model, model_names, phase_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CLASSES = 5


def tiny(**switches) -> ModelConfig:
    return ModelConfig(width=8, depth=2, **switches)


def increment(seed: int = 1) -> torch.Tensor:
    # Off-DC amplitudes of a random [0, 1] 64×64 patch are ~18: M ~ U(0, 20) masks a lot.
    g = torch.Generator().manual_seed(seed)
    return 20 * torch.rand(3, 64, 64, generator=g)


def batch(n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    original = torch.rand(n, 3, 64, 64, generator=g)
    compressed = (original + 0.05 * torch.randn(n, 3, 64, 64, generator=g)).clamp(0, 1)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    return original, compressed, labels


def build(
    cfg: ModelConfig,
    seed: int = 0,
    cmi: bool = True,
    m: torch.Tensor | None = None,
    trained: bool = True,
):
    """A tiny MDFRNet. ``trained``: give the zero-initialised output convs of the identity
    start random weights, as after some training, so the wiring tests see every branch."""
    torch.manual_seed(seed)
    net_cmi = create_backbone("test_remnet", CLASSES) if cmi else None
    net = create_model(
        "mdfrnet",
        cfg,
        num_classes=CLASSES,
        amplitude_increment=increment() if m is None else m,
        cmi=net_cmi,
    )
    if trained:
        for conv in _output_convs(net):
            conv.reset_parameters()
    return net


def _output_convs(net) -> list[torch.nn.Conv2d]:
    convs = [net.ffs.out]
    if net.sfr is not None:
        convs.append(net.sfr.unet.out)
    if net.ffr is not None and net.ffr.phase_unet is not None:
        convs.append(net.ffr.phase_unet.out)
    return convs


# --------------------------------------------------------------------------- UNet


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_keeps_shape_and_channels(depth):
    net = UNet(3, 5, width=4, depth=depth)
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 5, 64, 64)
    # encoder widths double per stage: the deepest conv has width * 2**depth channels
    assert net.down[-1][0].out_channels == 4 * 2**depth


def test_unet_rejects_sides_not_divisible_by_its_depth():
    with pytest.raises(ValueError, match="divisible by 8"):
        UNet(3, 3, width=4, depth=3)(torch.rand(1, 3, 36, 36))


# --------------------------------------------------------------------------- construction


def test_mdfrnet_is_registered_and_none_kwargs_are_dropped():
    assert "mdfrnet" in model_names()
    net = create_model("mdfrnet", tiny(), num_classes=CLASSES, amplitude_increment=None, cmi=None)
    out = net(batch()[1])
    assert "logits" not in out and out["restored"].shape == (2, 3, 64, 64)
    with pytest.raises(UsageError, match="mdfrnet"):
        create_model("mdfrnt", tiny(), num_classes=CLASSES)


def test_amplitude_increment_is_a_buffer_carried_by_checkpoints():
    net = build(tiny(), cmi=False, m=np.asarray(increment()))  # a numpy array is accepted too
    buffers = dict(net.named_buffers())
    assert "ffr.amplitude_increment" in buffers
    assert not any("amplitude_increment" in n for n, _ in net.named_parameters())
    assert torch.equal(net.state_dict()["ffr.amplitude_increment"], increment())
    fresh = create_model("mdfrnet", tiny(), num_classes=CLASSES)  # M = 0 until loaded
    assert not fresh.ffr.amplitude_increment.any()
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh.ffr.amplitude_increment, increment())


def test_amplitude_increment_of_the_wrong_size_is_explained():
    net = build(tiny(), cmi=False, m=torch.rand(3, 32, 32))
    with pytest.raises(MdfrError, match=r"amplitude increment is \(32, 32\)"):
        net(batch()[1])
    with pytest.raises(MdfrError, match="shape"):
        build(tiny(), cmi=False, m=torch.rand(64, 64))


def test_cmi_with_a_different_number_of_classes_is_explained():
    torch.manual_seed(0)
    cmi = create_backbone("test_remnet", CLASSES - 1)
    net = create_model("mdfrnet", tiny(), num_classes=CLASSES, cmi=cmi)
    with pytest.raises(MdfrError, match="4 logits, expected 5"):
        net(batch()[1])


# --------------------------------------------------------------------------- switches

BRANCHES = [(True, True), (True, False), (False, True)]
COMBOS = list(itertools.product([True, False], ["dual", "max", "avg"], [True, False], BRANCHES))


@pytest.mark.parametrize(("amplitude_mask", "pooling", "phase_restore", "branches"), COMBOS)
def test_every_switch_combination_builds_and_has_the_right_outputs(
    amplitude_mask, pooling, phase_restore, branches
):
    sfr, ffr = branches
    cfg = tiny(
        amplitude_mask=amplitude_mask,
        pooling=pooling,
        phase_restore=phase_restore,
        sfr=sfr,
        ffr=ffr,
    )
    net = build(cfg)
    x = batch()[1]
    out = net(x)
    assert out["restored"].shape == (2, 3, 64, 64) and out["logits"].shape == (2, CLASSES)
    assert (out["sfr"] is None) != sfr and (out["ffr"] is None) != ffr
    assert (out["phase"] is None) != ffr
    assert net.ffs.upper[0][0].in_channels == 3 * (sfr + ffr)
    if ffr:
        assert (net.ffr.phase_unet is None) != phase_restore
        unrestored = torch.equal(out["phase"], phase_of(x))
        assert unrestored != phase_restore
    assert all(torch.isfinite(v).all() for v in out.values() if v is not None)


@pytest.mark.parametrize(("amplitude_mask", "pooling", "phase_restore", "branches"), COMBOS)
def test_an_untrained_mdfrnet_returns_its_input_in_every_setup(
    amplitude_mask, pooling, phase_restore, branches
):
    # The identity start: whatever the switches and however large the amplitude increment
    # (M ~ U(0, 20) wipes out most of the FFR image), restored == compressed at init.
    sfr, ffr = branches
    cfg = tiny(
        amplitude_mask=amplitude_mask,
        pooling=pooling,
        phase_restore=phase_restore,
        sfr=sfr,
        ffr=ffr,
    )
    net = build(cfg, trained=False)
    x = batch()[1]
    for mode in (net.train, net.eval):
        mode()
        out = net(x)
        torch.testing.assert_close(out["restored"], x, atol=1e-6, rtol=0)
        if sfr:
            torch.testing.assert_close(out["sfr"], x, atol=1e-6, rtol=0)
        if ffr:
            assert torch.equal(out["phase"], phase_of(x))


def test_the_paper_literal_wiring_does_not_start_at_the_identity():
    net = build(tiny(identity_start=False), trained=False)
    x = batch()[1]
    restored = net(x)["restored"]
    assert (restored - x).pow(2).mean() > 1e-3  # a 1×1 conv of random features, not x


def test_an_identity_start_trains_every_layer_from_the_second_step():
    # The zero output convs get gradients on step 1; the layers behind them from step 2 on.
    net = build(tiny(), trained=False)
    original, compressed, labels = batch()
    params = _trainable(net)
    opt = torch.optim.RMSprop(list(params.values()), lr=1e-3)
    net.train()
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        mdfr_loss(net(compressed), original, labels, LossConfig())["loss"].backward()
        opt.step()
    for n, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_mdfrnet_needs_a_branch():
    with pytest.raises(MdfrError, match="at least one"):
        create_model("mdfrnet", tiny(sfr=False, ffr=False), num_classes=CLASSES)


def _outputs(cfg: ModelConfig, state: dict, x: torch.Tensor) -> dict:
    net = build(cfg, seed=1)  # different init; the reference weights are loaded below
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not missing  # every weight of the variant comes from the reference model
    net.eval()
    with torch.no_grad():
        return net(x)


def test_each_switch_changes_the_computation_with_the_same_weights():
    ref = build(tiny())
    state, x = ref.state_dict(), batch()[1]
    base = _outputs(tiny(), state, x)["restored"]
    for change in [
        {"amplitude_mask": False},
        {"pooling": "max"},
        {"pooling": "avg"},
        {"phase_restore": False},
        {"cmi_trainable": True},  # sanity: not a computation switch, must NOT change outputs
    ]:
        out = _outputs(tiny(**change), state, x)["restored"]
        same = torch.allclose(out, base, atol=1e-6)
        assert same == ("cmi_trainable" in change), change
    max_out = _outputs(tiny(pooling="max"), state, x)["restored"]
    avg_out = _outputs(tiny(pooling="avg"), state, x)["restored"]
    assert not torch.allclose(max_out, avg_out, atol=1e-6)


def test_ffr_with_both_restorations_off_is_the_identity():
    net = build(tiny(amplitude_mask=False, phase_restore=False), cmi=False)
    x = batch()[1]
    ffr, phase = net.ffr(x)
    torch.testing.assert_close(ffr, x, atol=1e-5, rtol=0)
    assert torch.equal(phase, phase_of(x))


def test_amplitude_mask_matches_numpy():
    m = increment()
    net = build(tiny(phase_restore=False), cmi=False, m=m)
    x = batch()[1]
    spec = np.fft.fft2(x.double().numpy())
    amp = np.maximum(np.abs(spec) - m.double().numpy(), 0)
    want = np.real(np.fft.ifft2(amp * np.exp(1j * np.angle(spec))))
    got = net.ffr(x)[0]
    np.testing.assert_allclose(got.numpy(), want, atol=2e-4)
    assert not np.allclose(want, x.numpy(), atol=1e-2)  # the mask really removed something


def test_phase_enters_the_unet_scaled_by_pi_and_is_restored_residually():
    net = build(tiny(amplitude_mask=False), cmi=False).eval()
    x = batch()[1]
    seen = {}
    net.ffr.phase_unet.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    with torch.no_grad():
        phase = net(x)["phase"]
    p = phase_of(x)
    torch.testing.assert_close(seen["inp"], p / math.pi)
    torch.testing.assert_close(phase, p + math.pi * seen["out"])


def test_sfr_is_residual_on_the_compressed_patch():
    net = build(tiny(), cmi=False).eval()
    x = batch()[1]
    with torch.no_grad():
        torch.testing.assert_close(net(x)["sfr"], x + net.sfr.unet(x))


# --------------------------------------------------------------------------- training


def _trainable(net) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in net.named_parameters() if p.requires_grad}


def test_gradients_reach_every_trainable_parameter_and_none_reach_a_frozen_cmi():
    net = build(tiny())
    original, compressed, labels = batch()
    cmi_before = {k: v.clone() for k, v in net.cmi.state_dict().items()}
    others_before = {n: p.detach().clone() for n, p in _trainable(net).items()}
    assert others_before and not any(n.startswith("cmi.") for n in others_before)

    # The engine optimises what requires grad; hand it every parameter to prove that a frozen
    # CMI net survives even that (RMSprop with weight decay skips parameters without grad).
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-3, weight_decay=1e-5)
    net.train()
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        out = mdfr_loss(net(compressed), original, labels, LossConfig())
        out["loss"].backward()
        if step == 0:
            for n, p in _trainable(net).items():
                assert p.grad is not None and p.grad.abs().sum() > 0, n
            assert all(p.grad is None for p in net.cmi.parameters())
        opt.step()

    assert not net.cmi.training  # net.train() kept the frozen CMI net in eval mode
    cmi_after = net.cmi.state_dict()
    assert set(cmi_after) == set(cmi_before)
    for k, v in cmi_before.items():
        assert torch.equal(v, cmi_after[k]), k  # weights and BatchNorm buffers, bit for bit
    moved = [n for n, p in _trainable(net).items() if not torch.equal(p, others_before[n])]
    assert len(moved) == len(others_before)


def test_trainable_cmi_is_trained_with_mdfrnet():
    net = build(tiny(cmi_trainable=True))
    original, compressed, labels = batch()
    net.train()
    assert net.cmi.training
    mdfr_loss(net(compressed), original, labels, LossConfig())["loss"].backward()
    assert all(p.grad is not None for p in net.cmi.parameters())


def _one_step(seed: int) -> tuple[dict, list[torch.Tensor]]:
    net = build(tiny(), seed=seed)
    original, compressed, labels = batch()
    opt = torch.optim.RMSprop([p for p in net.parameters() if p.requires_grad], lr=2e-4)
    out = mdfr_loss(net(compressed), original, labels, LossConfig())
    out["loss"].backward()
    opt.step()
    with torch.no_grad():
        after = net(compressed)
    return out, [after["restored"], after["logits"]]


def test_deterministic_under_a_fixed_seed():
    a_loss, a_out = _one_step(seed=3)
    b_loss, b_out = _one_step(seed=3)
    for k in ("loss", "spa", "freq", "cmi"):
        assert torch.equal(a_loss[k], b_loss[k]), k
    assert all(torch.equal(a, b) for a, b in zip(a_out, b_out, strict=True))
    c_loss, _ = _one_step(seed=4)
    assert not torch.equal(a_loss["loss"], c_loss["loss"])  # the seed does matter


# --------------------------------------------------------------------------- precision, layout


def test_bf16_autocast_runs_and_the_fft_stays_fp32(monkeypatch):
    dtypes: list[torch.dtype] = []

    def spy(fn):
        def wrapped(x, *a, **k):
            dtypes.append(x.dtype)
            return fn(x, *a, **k)

        return wrapped

    monkeypatch.setattr(torch.fft, "fft2", spy(torch.fft.fft2))
    monkeypatch.setattr(torch.fft, "ifft2", spy(torch.fft.ifft2))
    net = build(tiny())
    ffs_dtypes: list[torch.dtype] = []
    net.ffs.register_forward_hook(lambda m, i, o: ffs_dtypes.append(o.dtype))
    original, compressed, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(compressed)
        loss = mdfr_loss(out, original, labels, LossConfig())
        # a bf16 input (e.g. a caller that casts its batches) must not reach the FFT either
        half = net(compressed.bfloat16())
    assert ffs_dtypes[0] == torch.bfloat16  # autocast really was on for the convs
    # the identity start adds FFS's bf16 correction to the fp32 input: restored stays fp32
    assert out["restored"].dtype == torch.float32
    assert out["ffr"].dtype == torch.float32 and out["phase"].dtype == torch.float32
    assert half["ffr"].dtype == torch.float32 and half["phase"].dtype == torch.float32
    # FFR fft2 + ifft2 twice, and the loss's fft2 of the original
    assert set(dtypes) <= {torch.float32, torch.complex64} and len(dtypes) == 5
    assert loss["loss"].dtype == torch.float32 and torch.isfinite(loss["loss"])
    loss["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in net.ffr.phase_unet.parameters())


def test_channels_last_input_and_model_give_the_same_result():
    net = build(tiny()).eval()
    x = batch()[1]
    with torch.no_grad():
        want = net(x)
        net.to(memory_format=torch.channels_last)
        got = net(x.contiguous(memory_format=torch.channels_last))
    assert net.sfr.unet.inc[0].weight.is_contiguous(memory_format=torch.channels_last)
    for k in ("restored", "sfr", "ffr", "phase", "logits"):
        torch.testing.assert_close(got[k], want[k], atol=1e-4, rtol=1e-4)
