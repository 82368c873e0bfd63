"""``mdfr report`` on a small finished sweep built with the real engine and real MLflow.

The sweep is logged exactly the way the sweep driver does it (parent run, one child run per
trial with the trainable's tags, a shared pretraining child, a per-cell Optuna study in
``<sweep dir>/optuna.db``, a trial the run closer marked failed), so the report reads what a
real sweep leaves behind; only Ray is left out (its scheduling is not what is under test).
The expected numbers are recomputed here straight from MLflow's client and SciPy, not from
``mdfr.report``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from fixtures_trained import tiny_trial_config
from scipy import stats

from mdfr.cli import main
from mdfr.config import setup_overrides

EXPERIMENT = "mdfr-report-test"
SWEEP = "reptest"
SETUPS = ("finetune", "proposed")
SEEDS = (0, 1)
SAMPLES = {"finetune": 1, "proposed": 2}  # proposed cells search λ1 with two samples each


def _cfg(dataset: Path, out: Path, **over):
    limits = {"data.limit_train": 48, "data.limit_eval": 32}
    return tiny_trial_config(dataset, out, **{**limits, **over})


@pytest.fixture(scope="module")
def sweep(tiny_dataset, tmp_path_factory):
    """A finished two-setup x two-seed sweep (6 trained trials + 1 failed) in SQLite."""
    import optuna
    from optuna.distributions import FloatDistribution

    from mdfr.engine import train_trial
    from mdfr.tracking import Store

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sweep_dir = root / "ray" / f"{SWEEP}-20260101-000000"
    sweep_dir.mkdir(parents=True)
    store = Store(uri)
    exp_id, parent = store.parent_run(
        EXPERIMENT, SWEEP, str(sweep_dir), {"mdfr.git_commit": "c0ffee"}
    )
    store.tracker(parent).log_params(
        {"sweep.name": SWEEP, "sweep.axes": "setup,seed", "sweep.search": "loss.lambda_spa"}
    )
    common = {
        "mdfr.sweep": SWEEP,
        "mdfr.git_commit": "c0ffee",
        "mdfr.dataset_hash": json.loads((tiny_dataset / "manifest.json").read_text())[
            "dataset_hash"
        ],
        "mdfr.codec": "jpeg:50",
    }
    pre_id, _ = store.child_run(
        exp_id, parent, "pretrain-k", {**common, "mdfr.mode": "pretrain"}, kind="pretrain"
    )
    pre = train_trial(
        _cfg(tiny_dataset, root / "pre", mode="pretrain"), tracker=store.tracker(pre_id)
    )
    store.finish(pre_id, "FINISHED", "ok")
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    for index, (setup, seed) in enumerate(product(SETUPS, SEEDS)):
        cell = f"{index:03d}-{setup}-seed{seed}"
        study = None
        if setup == "proposed":
            study = optuna.create_study(
                study_name=f"{SWEEP}/{cell}", storage=storage, direction="maximize",
                sampler=optuna.samplers.RandomSampler(seed=index),
            )  # fmt: skip
        for sample in range(SAMPLES[setup]):
            key = f"{cell}-n{sample}"
            over = {
                **setup_overrides(setup),
                "seed": seed,
                "model.cmi_checkpoint": pre.cmi_checkpoint,
            }
            trial = None
            if study is not None:
                trial = study.ask({"loss.lambda_spa": FloatDistribution(0.3, 0.9)})
                trial.set_user_attr("sample", sample)
                trial.set_user_attr("trial_key", key)
                trial.set_user_attr("cell", {"setup": setup, "seed": seed})
                over["loss.lambda_spa"] = trial.params["loss.lambda_spa"]
            cfg = _cfg(tiny_dataset, root / key, **over)
            tags = {
                **common,
                "mdfr.setup": setup,
                "mdfr.backbone": "test_remnet",
                "mdfr.seed": str(seed),
                "mdfr.mode": cfg.mode,
                "mdfr.cell": cell,
                "mdfr.sample": str(sample),
            }
            run_id, _ = store.child_run(exp_id, parent, key, tags)
            tracker = store.tracker(run_id)
            tracker.set_tags({"mdfr.attempts": "1", "mdfr.status": "running", **tags})
            result = train_trial(cfg, tracker=tracker)
            store.finish(run_id, "FINISHED", result.status)
            if trial is not None:
                study.tell(trial, result.last_epoch["val/acc_restored"])
    # A trial that failed for good: the driver's RunCloser opens and closes its run.
    failed, _ = store.child_run(exp_id, parent, "004-proposed-seed2-n0", {"mdfr.sweep_trial": "t9"})
    store.finish(failed, "FAILED", "failed")
    store.finish(parent, "FAILED", "partial")
    return {"uri": uri, "root": root, "parent": parent, "sweep_dir": sweep_dir}


def _children(uri: str, parent: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.`mdfr.kind` = 'trial'",
    )


def _expected_summary(values: list[float]) -> tuple[float, float | None]:
    """Mean and 95% t half-width, computed independently of mdfr.report."""
    arr = np.asarray(values, dtype=float)
    if len(arr) < 2:
        return float(arr.mean()), None
    half = stats.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr))
    return float(arr.mean()), float(half)


def _fmt(mean: float, half: float | None, n: int) -> str:
    return f"{mean:.1f} (n=1)" if half is None else f"{mean:.1f} ± {half:.1f} (n={n})"


def _best_per_seed(runs: list, setup: str) -> dict[int, object]:
    best: dict[int, object] = {}
    for r in sorted(runs, key=lambda r: r.info.start_time):
        if r.data.tags.get("mdfr.setup") != setup or r.data.tags.get("mdfr.status") != "ok":
            continue
        seed = int(r.data.tags["mdfr.seed"])
        if seed not in best or r.data.metrics["val/acc"] > best[seed].data.metrics["val/acc"]:
            best[seed] = r
    return best


@pytest.fixture(scope="module")
def table2(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "t2"
    argv = ["report", "table2", "--experiment", EXPERIMENT, "--tracking-uri", sweep["uri"]]
    assert main([*argv, "--out", str(out)]) == 0
    return out


def test_report_lands_on_the_sweeps_parent_run(sweep, table2, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(sweep["uri"])
    listed = {a.path for a in client.list_artifacts(sweep["parent"], "report")}
    assert {"report/report.html", "report/report.md", "report/report.json"} <= listed
    figures = {a.path for a in client.list_artifacts(sweep["parent"], "report/figures")}
    assert {f"report/figures/{p.name}" for p in (table2 / "figures").iterdir()} == figures
    got = Path(client.download_artifacts(sweep["parent"], "report/report.json", str(tmp_path)))
    assert got.read_text() == (table2 / "report.json").read_text()


def test_table2_numbers_equal_mlflow_metrics(sweep, table2):
    runs = _children(sweep["uri"], sweep["parent"])
    report = json.loads((table2 / "report.json").read_text())
    rows = {r["key"]: r for r in report["table2"]["test_remnet"]["rows"]}
    assert list(rows) == ["finetune", "backbone", "wo_res", "wo_at", "wo_phase_restore", "proposed"]
    md = (table2 / "report.md").read_text()
    per_setup = {}
    for setup, paper in (("finetune", "72.5"), ("proposed", "79.4")):
        best = _best_per_seed(runs, setup)
        assert sorted(best) == list(SEEDS)
        values = [100 * best[s].data.metrics["test/acc_restored"] for s in SEEDS]
        per_setup[setup] = values
        row = rows[setup]
        assert row["run_ids"] == {str(s): best[s].info.run_id for s in SEEDS}
        assert [row["values"][str(s)] for s in SEEDS] == pytest.approx(values, abs=1e-9)
        mean, half = _expected_summary(values)
        assert row["summary"]["n"] == 2
        assert row["summary"]["mean"] == pytest.approx(mean, abs=1e-9)
        if half == 0:
            assert row["summary"]["half"] == pytest.approx(0.0, abs=1e-12)
        else:
            assert row["summary"]["half"] == pytest.approx(half, rel=1e-9)
        label = "fine-tune" if setup == "finetune" else "proposed"
        line = next(
            ln
            for ln in md.splitlines()
            if ln.startswith(f"| {1 if setup == 'finetune' else 6} | {label} |")
        )
        assert _fmt(mean, half, 2) in line and line.rstrip().endswith(f"| {paper} |"), line
    # setups the sweep did not run are shown as missing, with the paper's number beside
    assert rows["wo_at"]["summary"]["n"] == 0
    assert re.search(r"\| 4 \| wo/at \|.*\| — \(n=0\) \|.*\| 74\.3 \|", md)


def test_table2_paired_comparison_against_finetune(sweep, table2):
    runs = _children(sweep["uri"], sweep["parent"])
    report = json.loads((table2 / "report.json").read_text())
    prop = next(r for r in report["table2"]["test_remnet"]["rows"] if r["key"] == "proposed")
    ft, pr = _best_per_seed(runs, "finetune"), _best_per_seed(runs, "proposed")
    a = [100 * pr[s].data.metrics["test/acc_restored"] for s in SEEDS]
    b = [100 * ft[s].data.metrics["test/acc_restored"] for s in SEEDS]
    diffs = np.subtract(a, b)
    cmp = prop["vs_baseline"]
    assert cmp["n"] == 2 and cmp["keys"] == ["0", "1"]
    assert cmp["mean_diff"] == pytest.approx(float(diffs.mean()), abs=1e-9)
    if np.ptp(diffs) > 0:
        assert cmp["p"] == pytest.approx(float(stats.ttest_rel(a, b).pvalue), rel=1e-9)
    else:  # identical differences: no test is possible, and the report must not invent one
        assert cmp["p"] is None
    md = (table2 / "report.md").read_text()
    assert re.search(r"\| 6 \| proposed \| [+-]\d+\.\d+ ± \d+\.\d \(n=2\)", md)


def test_table2_restoration_claims_are_paired_by_seed_and_holm_adjusted(sweep, table2):
    runs = _children(sweep["uri"], sweep["parent"])
    report = json.loads((table2 / "report.json").read_text())
    found = report["table2"]["test_remnet"]["claims"]
    restoration = {c["a"]: c for c in found if c["family"] == "restoration"}
    assert set(restoration) == set(SETUPS)
    pvals = {}
    for setup, claim in restoration.items():
        best = _best_per_seed(runs, setup)
        a = [100 * best[s].data.metrics["test/acc_restored"] for s in SEEDS]
        b = [100 * best[s].data.metrics["test/acc_compressed"] for s in SEEDS]
        assert claim["b"] == "compressed" and claim["pairs"] == 2
        assert claim["mean_diff_pp"] == pytest.approx(float(np.mean(np.subtract(a, b))), abs=1e-9)
        p = None if np.ptp(np.subtract(a, b)) == 0 else float(stats.ttest_rel(a, b).pvalue)
        assert claim["p"] == (None if p is None else pytest.approx(p, rel=1e-9))
        pvals[setup] = p
    # Holm, computed independently: sorted p-values times (m - i), running max, capped at 1
    given = sorted((p, k) for k, p in pvals.items() if p is not None)
    running = 0.0
    for i, (p, k) in enumerate(given):
        running = max(running, min(1.0, (len(given) - i) * p))
        assert restoration[k]["p_holm"] == pytest.approx(running, rel=1e-9)
    verdicts = {c["verdict"] for c in found}
    assert verdicts <= {"holds", "reversed", "not significant", "untested"}
    md = (table2 / "report.md").read_text()
    assert "Against doing nothing (restored minus compressed, same CMI net)" in md
    # the fixture runs no ablation (#2-#5): the paper's ordering cannot be tested, and says so
    assert "The paper's ordering is not tested" in md


def test_report_states_what_it_is(table2):
    md = (table2 / "report.md").read_text()
    assert "**synthetic** camera dataset" in md
    assert "Attack `jpeg:50`: JPEG quality 50: a classical-compression control" in md
    assert "7 trial(s): 6 finished, 0 diverged, 1 failed" in md
    assert "1 pretraining run(s)" in md
    assert "**Not comparable with the paper's numbers**" in md
    assert "1 epoch(s)" in md and "width 4, depth 2" in md


def test_confusion_and_per_model_accuracy_from_the_representative_run(sweep, table2):
    runs = _children(sweep["uri"], sweep["parent"])
    rep = json.loads((table2 / "report.json").read_text())["representative"]
    expected = _best_per_seed(runs, "proposed")[0]
    assert rep["run_id"] == expected.info.run_id
    manifest = json.loads(
        (Path(expected.data.params["data.dataset"]) / "manifest.json").read_text()
    )
    assert rep["classes"] == manifest["classes"]
    for view in ("original", "compressed", "restored"):
        cm = np.asarray(rep["confusion"][view])
        # the matrices are the run's own: their accuracy is the metric MLflow holds
        assert np.trace(cm) / cm.sum() == pytest.approx(expected.data.metrics[f"test/acc_{view}"])
        assert (table2 / "figures" / f"confusion_{view}.png").stat().st_size > 1000
    assert (table2 / "figures" / "spectra.png").stat().st_size > 1000


def test_parquet_has_one_row_per_trial(sweep, table2):
    import pyarrow.parquet as pq

    runs = {r.info.run_id: r for r in _children(sweep["uri"], sweep["parent"])}
    table = pq.read_table(table2 / "trials.parquet").to_pylist()
    assert len(table) == len(runs) == 7
    assert {row["run_id"] for row in table} == set(runs)
    for row in table:
        run = runs[row["run_id"]]
        assert row["outcome"] == run.data.tags["mdfr.status"]
        for key, value in run.data.metrics.items():
            assert row[f"metric.{key}"] == pytest.approx(value)
        for key, value in run.data.params.items():
            assert str(row[f"param.{key}"]) == value or row[f"param.{key}"] == pytest.approx(
                float(value)
            )
        assert row["tag.mdfr.sweep"] == run.data.tags.get("mdfr.sweep")


def test_html_is_self_contained(table2):
    page = (table2 / "report.html").read_text()
    srcs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page)
    imgs = re.findall(r"<img\b", page)
    assert len(imgs) >= 5  # 3 confusion matrices, spectra, parallel coordinates
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs), srcs[:3]
    assert "<link" not in page and "<script" not in page and "url(" not in page
    # the same tables as the Markdown
    assert "proposed" in page and "Not comparable with the paper" in page


def test_search_section_reads_the_optuna_study_then_falls_back_to_mlflow(sweep, table2, tmp_path):
    runs = _children(sweep["uri"], sweep["parent"])
    proposed = {
        r.info.run_name: r.data.metrics["val/acc_restored"]
        for r in runs
        if r.data.tags.get("mdfr.setup") == "proposed"
    }
    search = json.loads((table2 / "report.json").read_text())["search"]
    assert search["source"].startswith("Optuna storage")
    got = {t["key"]: t["value"] for t in search["trials"]}
    assert got == pytest.approx(proposed)
    assert {k for t in search["trials"] for k in t["params"]} == {"loss.lambda_spa", "seed"}
    _check_importances(search, proposed)
    # The sweep folder is gone (another machine): the same data come from MLflow instead.
    moved = sweep["sweep_dir"].with_name("moved")
    shutil.move(sweep["sweep_dir"], moved)
    try:
        argv = ["report", "sweep", "--experiment", EXPERIMENT, "--tracking-uri", sweep["uri"]]
        assert main([*argv, "--out", str(tmp_path)]) == 0
    finally:
        shutil.move(moved, sweep["sweep_dir"])
    search = json.loads((tmp_path / "report.json").read_text())["search"]
    assert search["source"].startswith("MLflow run params")
    # the sweep state file left with the folder, so the objective falls back to val/acc
    assert search["objective"] == "val/acc"
    assert {t["key"] for t in search["trials"]} == set(proposed)
    assert (tmp_path / "figures" / "parallel.png").is_file()


def _check_importances(search: dict, values: dict) -> None:
    if len(set(values.values())) > 1:
        assert set(search["importances"]) <= {"loss.lambda_spa", "seed"}
        assert sum(search["importances"].values()) == pytest.approx(1.0)
    else:  # a constant objective has nothing to attribute; the report says so
        assert "importances" not in search


def test_table1_rows_are_backbones(sweep, tmp_path):
    argv = ["report", "table1", "--experiment", EXPERIMENT, "--tracking-uri", sweep["uri"]]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    runs = _children(sweep["uri"], sweep["parent"])
    best = _best_per_seed(runs, "proposed")
    row = json.loads((tmp_path / "report.json").read_text())["table1"]["test_remnet"]
    md = (tmp_path / "report.md").read_text()
    cells = []
    for view in ("original", "compressed", "restored"):
        values = [100 * best[s].data.metrics[f"test/acc_{view}"] for s in SEEDS]
        mean, half = _expected_summary(values)
        assert row[view]["summary"]["mean"] == pytest.approx(mean, abs=1e-9)
        assert row[view]["paper"] is None  # test_remnet is not one of the paper's backbones
        cells.append(_fmt(mean, half, 2))
    assert f"| test_remnet | {cells[0]} | — | {cells[1]} | — | {cells[2]} | — |" in md


def test_reports_carry_no_absolute_paths_of_the_machine(tmp_path, monkeypatch):
    from mdfr.report.portable import portable

    monkeypatch.chdir(tmp_path)
    here = str(tmp_path.resolve())
    text = (
        f"store sqlite:///{here}/results/mlflow.db, data {here}/results/data/demo, "
        f"codec learned:{here}/results/cache/c.pt, cwd {here}, elsewhere /mnt/nfs/vision"
    )
    assert portable(text) == (
        "store sqlite:///results/mlflow.db, data results/data/demo, "
        "codec learned:results/cache/c.pt, cwd ., elsewhere /mnt/nfs/vision"
    )


def test_trials_table_paths_relative_like_the_report(tmp_path, monkeypatch):
    from mdfr.report.export import trial_rows

    monkeypatch.chdir(tmp_path)
    here = str(tmp_path.resolve())
    run = {
        "run_id": "r1",
        "run_name": "000-proposed-seed0-n0",
        "status": "FINISHED",
        "params": {"data.dataset": f"{here}/results/data/demo", "optim.lr": "0.001"},
        "tags": {"mdfr.codec": f"learned:{here}/results/cache/c.pt", "mdfr.setup": "proposed"},
        "metrics": {},
    }
    cols = trial_rows([run])
    assert cols["param.data.dataset"] == ["results/data/demo"]
    assert cols["param.optim.lr"] == [0.001]
    assert cols["tag.mdfr.codec"] == ["learned:results/cache/c.pt"]
