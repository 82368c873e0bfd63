"""Sweep files -> SweepPlan: every shipped file validates, every broken one exits 2 with the
file, the dotted path, the value and what is allowed — never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mdfr.cli import main
from mdfr.config import SETUPS
from mdfr.errors import ConfigError
from mdfr.sweep.spec import SweepPlan, build_plan, load_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
INVALID = sorted((Path(__file__).parent / "sweeps_invalid").glob("*.yaml"))


def _header(path: Path) -> tuple[str, str]:
    """The ``# path:`` and ``# expect:`` lines every invalid fixture starts with."""
    # bytes: a fixture may be a file that is not UTF-8 past its two header lines
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    dotted = lines[0].removeprefix("# path:").strip()
    expect = lines[1].removeprefix("# expect:").strip()
    return dotted, expect


def test_shipped_sweep_files_exist():
    names = {p.stem for p in SWEEPS}
    assert {"smoke", "demo", "table2", "table1", "lambdas"} <= names


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweep_file_validates(path, capsys):
    assert main(["sweep", "validate", str(path)]) == 0
    assert f"{path}: ok" in capsys.readouterr().out


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_sweep_file_exits_2_naming_file_path_and_problem(path, capsys):
    dotted, expect = _header(path)
    assert main(["sweep", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    where = f"{path}: {dotted}:" if dotted else f"{path}:"
    assert where in err, err
    assert expect in err, err


def test_invalid_file_in_a_real_process_has_no_traceback():
    path = Path(__file__).parent / "sweeps_invalid" / "unknown_setup.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "mdfr.cli", "sweep", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "grid.setup" in proc.stderr and "'proposd'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["sweep", "validate", str(missing)]) == 2
    assert f"{missing}: file not found" in capsys.readouterr().err


def test_table2_grid_expands_setups_and_counts_trials_per_cell():
    plan = load_sweep(ROOT / "sweeps" / "table2.yaml")
    # the paper's six setups plus our wrapped-phase-loss variant of #6, three seeds each
    assert plan.num_trials == 7 * 3 == len(plan.cells)
    by_setup = {c.values["setup"]: c.config for c in plan.cells if c.values["seed"] == 1}
    assert set(by_setup) == set(SETUPS)
    assert by_setup["finetune"]["mode"] == "finetune"
    assert by_setup["backbone"]["model.amplitude_mask"] is False
    assert by_setup["backbone"]["model.pooling"] == "max"
    assert by_setup["wo_phase_restore"]["model.phase_restore"] is False
    assert by_setup["proposed"]["model.amplitude_mask"] is True
    assert by_setup["proposed"]["loss.phase_loss"] == "flatness"  # the paper's loss by default
    assert by_setup["proposed_wrapped"]["loss.phase_loss"] == "wrapped"
    assert all(c["seed"] == 1 for c in by_setup.values())


def _plan(**raw):
    return build_plan({"name": "t", **raw})


def test_num_samples_are_per_cell_and_search_skips_inapplicable_cells():
    plan = _plan(
        grid={"setup": ["finetune", "proposed"], "seed": [0, 1, 2]},
        search={
            "loss.lambda_spa": {"float": [0.1, 1.0]},
            "optim.lr": {"float": ["1e-5", "1e-3"], "log": True},
        },
        search_alg={"num_samples": 4, "metric": "val/acc_restored"},
    )
    assert plan.num_trials == 2 * 3 * 4
    assert len(set(plan.trial_keys())) == plan.num_trials
    for cell in plan.cells:
        expected = ("optim.lr",) if cell.mode == "finetune" else ("loss.lambda_spa", "optim.lr")
        assert cell.search == expected
    assert plan.axis("optim.lr").low == 1e-5 and plan.axis("optim.lr").log


def test_cell_without_applicable_search_axes_runs_once():
    plan = _plan(
        grid={"setup": ["finetune", "proposed"]},
        search={"loss.lambda_spa": {"float": [0.1, 1.0]}},
        search_alg={"num_samples": 3, "metric": "val/acc_restored"},
    )
    assert plan.num_trials == 1 + 3
    assert plan.trial_keys() == [
        "000-finetune-n0", "001-proposed-n0", "001-proposed-n1", "001-proposed-n2"
    ]  # fmt: skip


def test_setup_switches_win_over_base_and_explicit_axes_win_over_base():
    plan = _plan(
        base={"model": {"pooling": "avg", "width": 8}},
        grid={"setup": ["wo_at", "proposed"], "model.width": [4]},
    )
    cfg = {c.values["setup"]: c.config for c in plan.cells}
    assert cfg["wo_at"]["model.pooling"] == "max"  # the ablation is what is measured
    assert cfg["proposed"]["model.pooling"] == "avg"
    assert {c["model.width"] for c in cfg.values()} == {4}


def test_no_search_means_one_trial_per_cell():
    plan = _plan(grid={"seed": [0, 1]})
    assert plan.num_samples == 1 and plan.num_trials == 2
    with pytest.raises(ConfigError, match="search is empty"):
        _plan(grid={"seed": [0, 1]}, search_alg={"num_samples": 3})


def test_overrides_reach_grid_axes_with_dots(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: s\ngrid: {model.backbone: [remnet, resnet50]}\n")
    plan = load_sweep(
        f, ["grid.model.backbone=[remnet]", "base.train.epochs=2", "max_concurrent=3"]
    )
    assert [c.config["model.backbone"] for c in plan.cells] == ["remnet"]
    assert plan.cells[0].config["train.epochs"] == 2 and plan.max_concurrent == 3


def test_plan_round_trips_through_json():
    plan = load_sweep(ROOT / "sweeps" / "lambdas.yaml")
    again = SweepPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    cfg = again.cell_config(again.cells[0], {"loss.lambda_freq": 0.3})
    assert cfg.loss.lambda_freq == 0.3 and cfg.setup == "proposed"


def test_pretrain_false_needs_a_checkpoint_for_finetune_and_mdfr_cells():
    with pytest.raises(ConfigError, match="needs a pretrained CMI net"):
        _plan(grid={"setup": ["finetune"]}, pretrain=False)
    plan = _plan(
        grid={"setup": ["finetune"]}, pretrain=False, base={"model": {"cmi_checkpoint": "c.pt"}}
    )
    assert plan.pretrain is None


def test_search_axis_out_of_every_cells_mode_is_an_error():
    with pytest.raises(ConfigError) as e:
        _plan(
            grid={"setup": ["finetune"]},
            search={"loss.lambda_spa": {"float": [0.1, 1.0]}},
            search_alg={"metric": "val/acc"},
        )
    assert e.value.path == "search.loss.lambda_spa"


def test_grid_axis_inert_for_finetune_warns():
    plan = _plan(grid={"setup": ["finetune", "proposed"], "model.width": [4, 8]})
    assert any("model.width" in w for w in plan.warnings)


def test_finetune_section_overrides_only_finetune_cells_and_grid_values_win():
    raw = {
        "name": "ft",
        "base": {"optim": {"lr": 1e-3}},
        "grid": {"setup": ["finetune", "proposed"], "seed": [0]},
        "finetune": {"optim": {"lr": 1e-4}, "train": {"epochs": 2}},
    }
    plan = build_plan(raw)
    by_setup = {c.config["setup"]: c.config for c in plan.cells}
    assert by_setup["finetune"]["optim.lr"] == 1e-4 and by_setup["finetune"]["train.epochs"] == 2
    assert by_setup["proposed"]["optim.lr"] == 1e-3
    assert SweepPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    raw["grid"]["optim.lr"] = [5e-5]
    assert all(c.config["optim.lr"] == 5e-5 for c in build_plan(raw).cells)


def test_pretraining_has_its_own_recipe_not_the_mdfr_phase_optimiser():
    from mdfr.sweep.spec import PRETRAIN_RECIPE
    from mdfr.sweep.stages import pretrain_config

    raw = {"name": "pt", "base": {"optim": {"name": "rmsprop", "lr": 2e-4}}, "grid": {"seed": [0]}}
    plan = build_plan({**raw, "grid": {"setup": ["proposed"]}})
    flat = pretrain_config(plan, plan.cells[0].config, threads=1)
    for key, value in PRETRAIN_RECIPE.items():
        assert flat[key] == value, key
    plan = build_plan({**raw, "grid": {"setup": ["proposed"]}, "pretrain": {"optim": {"lr": 3e-3}}})
    flat = pretrain_config(plan, plan.cells[0].config, threads=1)
    assert flat["optim.lr"] == 3e-3 and flat["optim.name"] == "adam"


def test_validate_says_how_the_scheduler_treats_grid_cells(capsys):
    """ASHA compares trials only within a grid cell: validate says so, and warns when that
    leaves it nothing to stop (one trial per cell)."""
    assert main(["sweep", "validate", str(ROOT / "sweeps" / "lambdas.yaml")]) == 0
    out = capsys.readouterr().out
    assert "asha on val/acc_restored (max) within each grid cell" in out
    assert "no cell is ever dropped" in out
    assert main(["sweep", "validate", str(ROOT / "sweeps" / "smoke.yaml")]) == 0
    captured = capsys.readouterr()
    assert "scheduler asha stops nothing" in captured.err
    assert main(["sweep", "validate", str(ROOT / "sweeps" / "table2.yaml")]) == 0
    assert "scheduler: fifo (every trial runs to the end)" in capsys.readouterr().out


# --------------------------------------------------------------------------- the attack axis


def test_attack_axis_expands_to_one_cell_per_attack_and_setup():
    plan = load_sweep(ROOT / "sweeps" / "attack_rate.yaml")
    attacks = plan.attacks
    assert len([a for a in attacks if a.startswith("train:")]) >= 5
    assert len([a for a in attacks if a.startswith("jpeg:")]) == 2
    assert {c.values["setup"] for c in plan.cells} == {"finetune", "proposed"}
    assert plan.num_trials == len(attacks) * 2 * 3 == len(plan.cells)
    assert plan.prepare is not None and plan.prepare.codec is None
    assert len({c.key for c in plan.cells}) == len(plan.cells)  # keys name the attack
    for cell in plan.cells:
        assert plan.attack_of(cell) == cell.values["attack"] and "attack" not in cell.config
    # The same trial config under every attack: only the dataset (set by the driver) differs.
    configs = {
        c.values["attack"]: c.config
        for c in plan.cells
        if c.values["setup"] == "proposed" and c.values["seed"] == 0
    }
    assert len({json.dumps(cfg, sort_keys=True) for cfg in configs.values()}) == 1


def test_single_prepare_codec_is_the_sweeps_one_attack():
    raw = {"prepare": {"images": "x", "codec": "jpeg:50"}, "grid": {"setup": ["proposed"]}}
    plan = _plan(**raw)
    assert plan.attacks == ["jpeg:50"] and plan.attack_of(plan.cells[0]) == "jpeg:50"
    assert _plan(base={"data": {"dataset": "d"}}).attacks == []


def test_train_specs_take_their_defaults_from_prepare_codec_train():
    from mdfr.data.codec_specs import train_config

    raw = {
        "prepare": {"images": "x", "codec_train": {"arch": "mdfr-factorized-s2", "lmbda": 0.5}},
        "grid": {"attack": ["train:lmbda=0.01", "train:steps=7"]},
    }
    plan = _plan(**raw)
    defaults = plan.prepare.codec_train
    assert train_config(plan.attacks[0], defaults).lmbda == 0.01
    second = train_config(plan.attacks[1], defaults)
    assert (second.arch, second.lmbda, second.steps) == ("mdfr-factorized-s2", 0.5, 7)
    with pytest.raises(ConfigError, match=r"grid.attack\[1\].*steps must be int"):
        _plan(**{**raw, "grid": {"attack": ["jpeg:50", "train:steps=many"]}})
