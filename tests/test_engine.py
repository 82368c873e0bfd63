"""The training engine end to end on the shared tiny dataset, without Ray or MLflow."""

from __future__ import annotations

import math

import pytest
import torch

from mdfr.checkpoints import safe_load
from mdfr.config import from_dict
from mdfr.engine import train_trial

BACKBONE = "test_remnet"


def tiny(dataset, tmp, **over):
    base = {
        "data": {"dataset": str(dataset), "batch_size": 8, "limit_train": 48, "limit_eval": 32},
        "model": {"backbone": BACKBONE, "width": 4, "depth": 2},
        "train": {"epochs": 2, "device": "cpu"},
        "optim": {"lr": 1e-3},
        "output_dir": str(tmp),
    }
    cfg = from_dict(base)
    return cfg.replace(**over) if over else cfg


@pytest.fixture(scope="module")
def pretrained(tiny_dataset, tmp_path_factory):
    cfg = tiny(tiny_dataset, tmp_path_factory.mktemp("pretrain"), mode="pretrain")
    return train_trial(cfg)


def test_pretrain_exports_cmi_and_reports_each_epoch(tiny_dataset, tmp_path):
    reports = []
    cfg = tiny(tiny_dataset, tmp_path, mode="pretrain")
    res = train_trial(cfg, report=lambda m, c: reports.append((m, c)))
    assert res.status == "ok"
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    assert all(c and (tmp_path / "checkpoint" / "state.pt").exists() for _, c in reports)
    assert (
        0.0 <= res.accuracy["acc_original"] <= 1.0 and 0.0 <= res.accuracy["acc_compressed"] <= 1.0
    )
    assert "acc_restored" not in res.accuracy
    assert (tmp_path / "cmi.pt").exists() and len(res.cmi_sha256) == 64
    assert (tmp_path / "confusion_original.png").exists()


def test_mdfr_trial_leaves_frozen_cmi_bit_identical(tiny_dataset, pretrained, tmp_path):
    cfg = tiny(
        tiny_dataset,
        tmp_path,
        mode="mdfr",
        **{"model.cmi_checkpoint": pretrained.cmi_checkpoint},
    )
    res = train_trial(cfg)
    assert res.status == "ok"
    for key in ("acc_original", "acc_compressed", "acc_restored"):
        assert 0.0 <= res.accuracy[key] <= 1.0
    # the pretrained net, as exported, against the CMI net inside the trained MDFRNet
    before = safe_load(pretrained.cmi_checkpoint)["state_dict"]
    after = safe_load(res.checkpoint)["model"]
    cmi_after = {k.split("cmi.", 1)[1]: v for k, v in after.items() if k.startswith("cmi.")}
    assert set(cmi_after) == set(before)
    for k, v in before.items():
        assert torch.equal(v, cmi_after[k]), k
    # ...while MDFRNet's own weights did train
    assert any(not k.startswith("cmi.") for k in after)
    # acc_original/compressed are the pretrained net's: same numbers as the pretrain trial
    assert res.accuracy["acc_original"] == pytest.approx(pretrained.accuracy["acc_original"])
    assert res.accuracy["acc_compressed"] == pytest.approx(pretrained.accuracy["acc_compressed"])


def test_finetune_starts_from_pretrain_weights(tiny_dataset, pretrained, tmp_path):
    cfg = tiny(
        tiny_dataset,
        tmp_path,
        mode="finetune",
        **{"model.cmi_checkpoint": pretrained.cmi_checkpoint, "train.epochs": 1},
    )
    seen = {}

    def report(metrics, _ckpt):
        seen.update(metrics)

    res = train_trial(cfg, report=report)
    assert res.status == "ok"
    # the untouched starting net gives the pretrain trial's test accuracy on originals
    assert res.accuracy["acc_original"] == pytest.approx(pretrained.accuracy["acc_original"])
    # fine-tuned weights moved away from the pretrained ones
    before = safe_load(pretrained.cmi_checkpoint)["state_dict"]
    after = safe_load(res.cmi_checkpoint)["state_dict"]
    assert any(
        not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point()
    )
    assert "val/acc_restored" in seen


def test_finetune_without_checkpoint_is_a_usage_error(tiny_dataset, tmp_path):
    from mdfr.errors import UsageError

    with pytest.raises(UsageError, match="cmi_checkpoint"):
        train_trial(tiny(tiny_dataset, tmp_path, mode="finetune"))


def test_same_seed_same_metrics_and_resume_follows_the_same_trajectory(
    tiny_dataset, pretrained, tmp_path
):
    over = {"mode": "mdfr", "model.cmi_checkpoint": pretrained.cmi_checkpoint, "train.epochs": 2}
    full = train_trial(tiny(tiny_dataset, tmp_path / "full", **over))
    again = train_trial(tiny(tiny_dataset, tmp_path / "again", **over))
    assert again.accuracy["acc_restored"] == full.accuracy["acc_restored"]
    assert again.last_epoch["train/loss"] == full.last_epoch["train/loss"]

    class Crash(Exception):
        pass

    def crash_after_first_epoch(metrics, _ckpt):
        if metrics["epoch"] == 1:
            raise Crash

    cut = tiny(tiny_dataset, tmp_path / "cut", **over)
    with pytest.raises(Crash):
        train_trial(cut, report=crash_after_first_epoch)
    resumed = train_trial(cut, checkpoint=tmp_path / "cut" / "checkpoint")
    assert resumed.last_epoch["train/loss"] == full.last_epoch["train/loss"]
    assert resumed.accuracy["acc_restored"] == full.accuracy["acc_restored"]
    a = safe_load(full.checkpoint)["model"]
    b = safe_load(resumed.checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_another_config_is_refused(tiny_dataset, pretrained, tmp_path):
    from mdfr.errors import UsageError

    cfg = tiny(tiny_dataset, tmp_path, mode="pretrain", **{"train.epochs": 1})
    res = train_trial(cfg)
    other = cfg.replace(**{"optim.lr": 5e-4})
    with pytest.raises(UsageError, match="another config"):
        train_trial(other, checkpoint=res.checkpoint)


def test_exploding_loss_reports_diverged_not_a_crash(tiny_dataset, tmp_path):
    # a learning rate this large makes the weights, then the loss, non-finite within steps
    cfg = tiny(tiny_dataset, tmp_path, mode="pretrain", **{"optim.lr": 1e30, "optim.name": "sgd"})
    reports = []
    res = train_trial(cfg, report=lambda m, c: reports.append(m))
    assert res.status == "diverged"
    assert reports and reports[-1]["status"] == "diverged"
    assert all(math.isfinite(m["train/loss"]) for m in reports if "train/loss" in m)
