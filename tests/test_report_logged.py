"""``mdfr report`` on runs logged with chosen metric values (no training), for what a tiny
real sweep cannot show: three seeds, a λ that clearly matters, re-run sweeps, a dataset that
is gone, and the error messages."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from mdfr.cli import main
from mdfr.config import from_dict, setup_overrides
from mdfr.report import stats as rstats

EXPERIMENT = "mdfr-logged"
# (setup, seed) -> test/acc_restored; wo_res is the fine-tune value + 0.05 + noise
ACC = {
    ("finetune", 0): 0.50, ("finetune", 1): 0.55, ("finetune", 2): 0.47,
    ("wo_res", 0): 0.56, ("wo_res", 1): 0.59, ("wo_res", 2): 0.53,
}  # fmt: skip
LAMBDAS = [0.1, 0.3, 0.5, 0.7, 0.9]


def _log_sweep(store, name: str, sweep_dir: str, dataset: str) -> str:
    exp_id, parent = store.parent_run(EXPERIMENT, name, sweep_dir)
    store.tracker(parent).log_params(
        {"sweep.name": name, "sweep.axes": "setup,seed", "sweep.search": "loss.lambda_spa"}
    )
    for (setup, seed), acc in ACC.items():
        samples = LAMBDAS if setup == "wo_res" else [0.6]
        for i, lam in enumerate(samples):
            over = {**setup_overrides(setup), "seed": seed, "data.dataset": dataset}
            if setup == "wo_res":
                over["loss.lambda_spa"] = lam
            cfg = from_dict({"model": {"backbone": "test_remnet"}}).replace(**over)
            key = f"{setup}-seed{seed}-n{i}"
            tags = {"mdfr.sweep": name, "mdfr.setup": setup, "mdfr.seed": str(seed),
                    "mdfr.backbone": "test_remnet", "mdfr.mode": cfg.mode, "mdfr.codec": "jpeg:50"}  # fmt: skip
            run_id, _ = store.child_run(exp_id, parent, key, tags)
            t = store.tracker(run_id)
            t.log_params(cfg.to_flat_dict())
            # λ drives validation accuracy; the best λ (0.9) is also the reported sample
            val = 0.3 + 0.4 * lam if setup == "wo_res" else 0.5
            test = acc if (setup != "wo_res" or lam == 0.9) else acc - 0.2
            t.log_metrics({"val/acc": val, "test/acc_restored": test}, step=1)
            store.finish(run_id, "FINISHED", "ok")
    store.finish(parent, "FINISHED", "ok")
    return parent


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    from mdfr.tracking import Store

    root = tmp_path_factory.mktemp("logged")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    store = Store(uri)
    gone = str(root / "no-such-dataset")
    _log_sweep(store, "lam", str(root / "ray" / "lam-1"), gone)  # an older run of the sweep
    newest = _log_sweep(store, "lam", str(root / "ray" / "lam-2"), gone)
    return {"uri": uri, "newest": newest}


def test_three_seed_table_and_paired_test(store_uri, tmp_path):
    argv = ["report", "table2", "--experiment", EXPERIMENT, "--tracking-uri", store_uri["uri"]]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["parent_run_id"] == store_uri["newest"]
    rows = {r["key"]: r for r in report["table2"]["test_remnet"]["rows"]}
    ft = [100 * ACC[("finetune", s)] for s in range(3)]
    wr = [100 * ACC[("wo_res", s)] for s in range(3)]
    half = stats.t.ppf(0.975, 2) * np.std(wr, ddof=1) / math.sqrt(3)
    assert rows["wo_res"]["values"] == pytest.approx({"0": wr[0], "1": wr[1], "2": wr[2]})
    assert rows["wo_res"]["summary"]["half"] == pytest.approx(half)
    cmp = rows["wo_res"]["vs_baseline"]
    assert cmp["n"] == 3
    assert cmp["mean_diff"] == pytest.approx(np.mean(np.subtract(wr, ft)))
    assert cmp["p"] == pytest.approx(stats.ttest_rel(wr, ft).pvalue)
    md = (tmp_path / "report.md").read_text()
    # the row also says which optimiser/lr and phase loss its trials used
    row = next(ln for ln in md.splitlines() if ln.startswith("| 3 | wo/res |"))
    assert f"| {np.mean(wr):.1f} ± {half:.1f} (n=3) |" in row, row
    assert "no amplitude increment (A' = A)" in row and "| flatness |" in row, row
    assert f"{stats.ttest_rel(wr, ft).pvalue:.3f}" in md
    # honesty: the older sweep of the same name is named, the vanished dataset is reported
    assert "Older sweeps of the same name" in md
    assert "gone from disk" in md and "Fig. 2 skipped" in md


def test_sweep_report_importances_rebuilt_from_mlflow(store_uri, tmp_path):
    argv = ["report", "sweep", "--experiment", EXPERIMENT, "--tracking-uri", store_uri["uri"]]
    assert main([*argv, "--sweep", "lam", "--out", str(tmp_path)]) == 0
    search = json.loads((tmp_path / "report.json").read_text())["search"]
    assert search["source"].startswith("MLflow run params")
    # fine-tune trials never sampled λ: only the 15 wo_res trials enter
    assert len(search["trials"]) == 15
    imp = search["importances"]
    assert set(imp) == {"loss.lambda_spa", "seed"}
    assert imp["loss.lambda_spa"] > 0.9  # val/acc is a function of λ alone
    for name in ("importances.png", "parallel.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 1000
    cells = json.loads((tmp_path / "report.json").read_text())["cells"]
    assert set(cells) == {"setup=finetune", "setup=wo_res"}


def test_older_sweep_by_parent_run_id(store_uri, tmp_path):
    from mdfr.report import runs

    sw = runs.load(EXPERIMENT, store_uri["uri"], "lam")
    older = sw.other_parents[0]["run_id"]
    argv = ["report", "table2", "--experiment", EXPERIMENT, "--tracking-uri", store_uri["uri"]]
    assert main([*argv, "--sweep", older, "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["parent_run_id"] == older


def test_errors_name_what_is_wrong(store_uri, tmp_path, capsys):
    base = ["report", "table2", "--out", str(tmp_path)]
    assert main([*base, "--experiment", "nope", "--tracking-uri", store_uri["uri"]]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
    assert (
        main(
            [*base, "--experiment", EXPERIMENT, "--tracking-uri", store_uri["uri"], "--sweep", "x"]
        )
        == 2
    )
    assert "has no sweep 'x'; sweeps: lam" in capsys.readouterr().err
    missing = tmp_path / "none.db"
    assert main([*base, "--experiment", EXPERIMENT, "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not missing.exists()  # and it did not create an empty one
    argv = [*base, "--experiment", EXPERIMENT, "--tracking-uri", store_uri["uri"]]
    assert main([*argv, "--paper", str(tmp_path / "gone.yaml")]) == 2
    assert "paper reference numbers not found" in capsys.readouterr().err


def test_default_paper_tables_are_the_reference_copy():
    from mdfr.report import paper

    doc = paper.load()
    assert doc["table2"]["proposed"] == 79.4
    assert paper.table1_row(doc, "res2net50") == {
        "original": 70.7,
        "compressed": 6.8,
        "restored": 65.1,
    }


def test_interval_and_paired_test_math():
    s = rstats.mean_ci([1.0, 2.0, 3.0])
    assert (s.n, s.mean) == (3, 2.0)
    assert s.half == pytest.approx(4.302652729911275 / math.sqrt(3))
    one = rstats.mean_ci([5.0, float("nan")])
    assert (one.n, one.mean, one.half) == (1, 5.0, None)
    p = rstats.paired({"0": 1.0, "1": 2.0, "2": 4.0, "3": 9.0}, {"0": 0.5, "1": 2.5, "2": 3.0})
    assert p.keys == ("0", "1", "2") and p.n == 3
    assert p.p == pytest.approx(stats.ttest_rel([1, 2, 4], [0.5, 2.5, 3]).pvalue)
    flat = rstats.paired({"0": 2.0, "1": 3.0}, {"0": 1.0, "1": 2.0})
    assert flat.mean_diff == 1.0 and flat.p is None  # identical differences: no test
