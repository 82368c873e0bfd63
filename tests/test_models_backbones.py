"""CMI backbones: shapes, names, pretrained loading (cache hit, explicit file, failures)."""

from __future__ import annotations

import pytest
import torch

from mdfr.errors import MdfrError, UsageError
from mdfr.models import PAPER_BACKBONES, backbone_names, create_backbone
from mdfr.registry import backbone_names as registry_backbone_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = ["test_remnet", "test_res2net", "test_resnet", "test_mobilenet", "test_dpec_convnext"]
# CPU-scale networks for the offline demo (neither paper size nor test size).
CPU_SCALE = ["small_remnet"]


def test_names_cover_table_one_and_the_tiny_variants():
    assert set(PAPER_BACKBONES) == {"remnet", "res2net50", "resnet50", "mobilenet", "dpec_convnext"}
    assert set(PAPER_BACKBONES) | set(TINY) | set(CPU_SCALE) == set(backbone_names())
    assert registry_backbone_names() == backbone_names()


@pytest.mark.parametrize("name", TINY + CPU_SCALE)
def test_tiny_backbones_classify_64px_patches_and_train(name):
    torch.manual_seed(0)
    net = create_backbone(name, num_classes=7)
    x = torch.rand(2, 3, 64, 64)
    logits = net(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert sum(p.numel() for p in net.parameters()) < 700_000  # tiny means tiny
    net.eval()
    with torch.no_grad():  # normalisation happens inside: shifting the input changes logits
        assert not torch.allclose(net(x), net(x * 0.5))


# Parameter counts at 29 classes (timm's own numbers for the timm nets), so the real
# architectures are what gets built.
REAL_PARAMS = {
    "remnet": (2.3e6, 2.6e6),
    "res2net50": (23.6e6, 23.8e6),
    "resnet50": (23.5e6, 23.6e6),
    "mobilenet": (1.5e6, 1.6e6),
    "dpec_convnext": (27.8e6, 28.1e6),
}


@pytest.mark.parametrize("name", PAPER_BACKBONES)
def test_paper_size_backbones_classify_one_64px_patch(name):
    net = create_backbone(name, num_classes=29).eval()
    lo, hi = REAL_PARAMS[name]
    assert lo <= sum(p.numel() for p in net.parameters()) <= hi
    with torch.no_grad():
        assert net(torch.rand(1, 3, 64, 64)).shape == (1, 29)


def test_dpec_convnext_keeps_a_feature_map_at_64px():
    net = create_backbone("test_dpec_convnext", num_classes=3)
    sizes = []
    for stage in net.net.trunk.stages:
        stage.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    net(torch.rand(1, 3, 64, 64))
    assert sizes == [32, 16, 8, 4]
    assert net.net.trunk.stem[0].in_channels == 12  # RGB + 9 SRM residual channels


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(UsageError) as e:
        create_backbone("resnet5", num_classes=3)
    msg = str(e.value)
    assert "unknown backbone 'resnet5'" in msg and "did you mean 'resnet50'" in msg
    assert all(n in msg for n in backbone_names())


# --------------------------------------------------------------------------- pretrained


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_pretrained_without_cached_weights_fails_clearly(empty_hf_cache):
    with pytest.raises(MdfrError) as e:
        create_backbone("resnet50", num_classes=3, pretrained=True)
    msg = str(e.value)
    assert "'resnet50'" in msg and str(empty_hf_cache) in msg and "timm/resnet50" in msg
    with pytest.raises(MdfrError, match="no published pretrained weights"):
        create_backbone("remnet", num_classes=3, pretrained=True)
    with pytest.raises(MdfrError, match="no file"):
        create_backbone("test_resnet", num_classes=3, pretrained_file=empty_hf_cache / "x.pth")


def _put_in_hf_cache(cache, repo: str, state: dict) -> None:
    """Lay a weight file out exactly as huggingface_hub's cache does (refs/main -> snapshot)."""
    from safetensors.torch import save_file

    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0123abcd")
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))


def test_pretrained_loads_from_the_local_hf_cache(empty_hf_cache):
    import timm

    torch.manual_seed(1)
    source = timm.create_model("test_resnet", num_classes=1000)
    _put_in_hf_cache(empty_hf_cache, "timm/test_resnet.r160_in1k", source.state_dict())
    net = create_backbone("test_resnet", num_classes=4, pretrained=True)
    got = net.net.state_dict()
    for k, v in source.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(got[k], v), k
    assert got["fc.weight"].shape == (4, source.fc.in_features)  # new head for our classes


def test_dpec_pretrained_adapts_timm_convnext_weights(empty_hf_cache):
    import timm

    torch.manual_seed(2)
    source = timm.create_model("test_convnext", num_classes=1000)
    _put_in_hf_cache(empty_hf_cache, "timm/test_convnext.r160_in1k", source.state_dict())
    net = create_backbone("test_dpec_convnext", num_classes=4, pretrained=True)
    trunk = net.net.trunk.state_dict()
    for k, v in source.state_dict().items():
        if k.startswith("stages."):
            assert torch.equal(trunk[k], v), k
    # timm spreads the RGB stem weights over the 12 input channels (scaled by 3/12)
    want = source.stem[0].weight.repeat(1, 4, 1, 1) * 3 / 12
    torch.testing.assert_close(net.net.trunk.stem[0].weight, want)


def test_pretrained_file_goes_through_the_same_loader(tmp_path):
    import timm

    torch.manual_seed(3)
    source = timm.create_model("test_resnet", num_classes=4)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    net = create_backbone("test_resnet", num_classes=4, pretrained=True, pretrained_file=path)
    for k, v in source.state_dict().items():
        if not k.startswith("fc."):  # timm drops heads unless they match ImageNet's 1000
            assert torch.equal(net.net.state_dict()[k], v), k


def test_pretrained_file_of_another_architecture_is_refused(tmp_path):
    import timm

    path = tmp_path / "mobilenet.pth"
    torch.save(timm.create_model("mobilenetv3_small_050", num_classes=4).state_dict(), path)
    with pytest.raises(MdfrError, match="test_resnet"):
        create_backbone("test_resnet", num_classes=3, pretrained_file=path)


def test_remnet_loads_its_own_state_dict_file(tmp_path):
    torch.manual_seed(4)
    source = create_backbone("test_remnet", num_classes=3)
    path = tmp_path / "remnet.pth"
    torch.save(source.state_dict(), path)  # saved with the normalising wrapper ("net." keys)
    net = create_backbone("test_remnet", num_classes=3, pretrained_file=path)
    for k, v in source.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
