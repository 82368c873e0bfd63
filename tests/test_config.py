from __future__ import annotations

import pytest

from mdfr.config import (
    SETUPS,
    TrialConfig,
    field_paths,
    from_dict,
    load_yaml,
    parse_override,
)
from mdfr.errors import ConfigError


def test_defaults_are_the_papers():
    cfg = TrialConfig()
    assert cfg.optim.name == "rmsprop"
    assert cfg.optim.lr == 2e-4 and cfg.optim.weight_decay == 1e-5
    assert (cfg.loss.lambda_spa, cfg.loss.lambda_freq, cfg.loss.lambda_cmi) == (0.6, 0.5, 0.8)
    assert cfg.model.width == 64 and cfg.model.depth == 4


def test_frozen():
    cfg = TrialConfig()
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]


def test_unknown_nested_key_names_dotted_path_and_suggests():
    with pytest.raises(ConfigError) as e:
        from_dict({"model": {"amplitude_msk": False}})
    assert e.value.path == "model.amplitude_msk"
    assert "did you mean 'amplitude_mask'" in str(e.value)


def test_literal_message_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        from_dict({"model": {"pooling": "mean"}})
    assert str(e.value) == "model.pooling: expected one of 'dual', 'max', 'avg', got 'mean'"


@pytest.mark.parametrize(
    "data, path",
    [
        ({"optim": {"lr": "fast"}}, "optim.lr"),
        ({"optim": {"lr": 0}}, "optim.lr"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"epochs": 2.5}}, "train.epochs"),
        ({"model": {"amplitude_mask": "yes"}}, "model.amplitude_mask"),
        ({"model": 3}, "model"),
        ({"mode": "distill"}, "mode"),
        ({"setup": "wo_everything"}, "setup"),
        ({"model": {"sfr": False, "ffr": False}}, "model.sfr"),
        ({"train": {"device": "tpu"}}, "train.device"),
    ],
)
def test_bad_values_name_their_path(data, path):
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    assert e.value.path == path


def test_int_widens_to_float():
    assert from_dict({"loss": {"lambda_spa": 1}}).loss.lambda_spa == 1.0


def test_setup_applies_table2_switches_and_explicit_keys_win():
    cfg = from_dict({"setup": "backbone"})
    assert cfg.mode == "mdfr" and not cfg.model.amplitude_mask and cfg.model.pooling == "max"
    cfg = from_dict({"setup": "backbone", "model": {"pooling": "avg"}})
    assert cfg.model.pooling == "avg"
    assert from_dict({"setup": "finetune"}).mode == "finetune"
    assert set(SETUPS) == {
        "finetune",
        "backbone",
        "wo_res",
        "wo_at",
        "wo_phase_restore",
        "proposed",
        "proposed_wrapped",  # ours: #6 with the wrapped phase loss
    }
    assert from_dict({"setup": "proposed_wrapped"}).loss.phase_loss == "wrapped"
    assert from_dict({"setup": "proposed"}).loss.phase_loss == "flatness"  # the paper's


def test_flat_dict_and_hash():
    cfg = TrialConfig()
    flat = cfg.to_flat_dict()
    assert flat["model.pooling"] == "dual" and flat["loss.lambda_cmi"] == 0.8
    assert set(flat) == set(field_paths())
    assert cfg.hash() == TrialConfig().hash()
    assert cfg.hash() != cfg.replace(**{"model.width": 8}).hash()
    # where a trial writes does not change what it computes
    assert cfg.hash() == cfg.replace(output_dir="/elsewhere").hash()


def test_replace_validates():
    with pytest.raises(ConfigError):
        TrialConfig().replace(**{"model.widht": 8})
    with pytest.raises(ConfigError):
        TrialConfig().replace(**{"model.width": -1})


def test_load_yaml_with_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("mode: pretrain\nmodel:\n  backbone: remnet\n")
    cfg = load_yaml(f, ["model.width=8", "optim.lr=1e-3", "model.phase_restore=false"])
    assert cfg.mode == "pretrain" and cfg.model.width == 8
    assert cfg.optim.lr == 1e-3 and cfg.model.phase_restore is False


def test_load_yaml_errors_name_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  pooling: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(f)
    assert str(f) in str(e.value) and "invalid YAML" in str(e.value) and "line" in str(e.value)
    with pytest.raises(ConfigError, match="file not found"):
        load_yaml(tmp_path / "missing.yaml")
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(f)
    f.write_text("model: {poolng: max}\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(f)
    assert str(e.value).startswith(f"{f}: model.poolng: unknown key")


def test_parse_override():
    assert parse_override("a.b=1") == ("a.b", 1)
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a.b=x y") == ("a.b", "x y")
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_hash_of_the_same_values_is_stable_across_versions():
    """Pretraining caches and checkpoints key on cfg.hash(): pinned to the values it had
    before the configs moved onto pydantic, so a refactor cannot silently orphan them."""
    assert TrialConfig().hash() == "7e8c99558502460d"
    cfg = from_dict({"setup": "proposed_wrapped", "optim": {"lr": 1}, "loss": {"lambda_spa": 1}})
    assert cfg.hash() == "06d11ab99293f9bb"
