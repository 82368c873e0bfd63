"""The synthetic cameras are learnable: a small CMI net beats chance on held-out images.

The net is defined here (a fixed high-pass residual, as CMI networks use to suppress scene
content, then three strided convolutions); it trains for a few hundred steps on original
patches and is scored on the patches of test images it never saw.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mdfr.data.loader import PatchDataset, make_loader
from mdfr.data.patches import prepare
from mdfr.data.synthetic import synthesize


class HighPass(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 8.0 * (x - nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False))


def tiny_cmi(num_classes: int) -> nn.Module:
    return nn.Sequential(
        HighPass(),
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


@pytest.fixture(scope="module")
def learn_dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("learn")
    images = synthesize(tmp / "vision", models=4, images_per_device=8, size=192, seed=1)
    return prepare(
        images, "jpeg:90", tmp / "ds", patches_per_image=0, val_frac=0.1, test_frac=0.3, seed=1
    )


def test_small_cmi_net_beats_chance_on_held_out_images(learn_dataset):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    # One thread: OpenMP barriers spin badly when the (shared, 2-core) box is oversubscribed.
    torch.set_num_threads(1)
    try:
        classes = PatchDataset(learn_dataset, "train").num_classes
        net = tiny_cmi(classes)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        step, epoch = 0, 0
        while step < 300:
            loader = make_loader(learn_dataset, "train", 32, shuffle=True, seed=epoch)
            for ori, _, label in loader:
                loss = nn.functional.cross_entropy(net(ori.float() / 255 - 0.5), label)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step == 300:
                    break
            epoch += 1
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for ori, _, label in make_loader(learn_dataset, "test", 256, shuffle=False, seed=0):
                correct += int((net(ori.float() / 255 - 0.5).argmax(1) == label).sum())
                total += len(label)
    finally:
        torch.set_num_threads(threads)
    accuracy, chance = correct / total, 1 / classes
    print(f"held-out accuracy {accuracy:.3f} on {total} patches, chance {chance:.3f}")
    assert total >= 100
    assert accuracy >= 2 * chance
