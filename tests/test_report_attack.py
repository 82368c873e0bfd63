"""``mdfr report attack`` on a tiny fixture of trial runs (plain dicts as mdfr.tracking returns
them; no MLflow): points per attack, CIs over seeds, families, the half-of-original crossing,
the reading in words and the figure."""

from __future__ import annotations

import pytest

from mdfr.names import ATTACK_BPP, ATTACK_PSNR, VAL_ACC, Tag, acc_metric
from mdfr.report import attack, figures

# attack -> (bpp, psnr, compressed %, fine-tuned %, restored %); original is 90% everywhere.
CURVES = {
    "train:lmbda=0.3": (2.0, 34.0, 80.0, 88.0, 86.0),
    "train:lmbda=0.03": (1.0, 30.0, 30.0, 70.0, 40.0),
    "train:lmbda=0.003": (0.5, 26.0, 10.0, 50.0, 20.0),
    "jpeg:90": (3.0, 38.0, 40.0, 80.0, 60.0),
    "jpeg:50": (1.5, 31.0, 20.0, 60.0, 30.0),
}
SEED_NOISE = {0: -1.0, 1: 0.0, 2: 1.0}


def _run(attack_spec: str, setup: str, seed: int, values: tuple[float, ...]) -> dict:
    bpp, psnr, comp, ft, rest = values
    defended = ft if setup == "finetune" else rest
    noise = SEED_NOISE[seed]
    return {
        "run_id": f"{attack_spec}-{setup}-{seed}",
        "run_name": f"{attack_spec}-{setup}-s{seed}",
        "status": "FINISHED",
        "tags": {Tag.ATTACK: attack_spec, Tag.SETUP: setup, Tag.SEED: str(seed), Tag.STATUS: "ok"},
        "params": {},
        "metrics": {
            ATTACK_BPP: bpp,
            ATTACK_PSNR: psnr,
            VAL_ACC: 0.5,
            acc_metric("test", "original"): 0.90,
            acc_metric("test", "compressed"): comp / 100,
            acc_metric("test", "restored"): (defended + noise) / 100,
            acc_metric("test", "restored", balanced=True): (defended + noise - 2) / 100,
        },
    }


@pytest.fixture
def trials() -> list[dict]:
    return [
        _run(a, setup, seed, v)
        for a, v in CURVES.items()
        for setup in ("finetune", "proposed")
        for seed in SEED_NOISE
    ]


def test_points_group_families_highest_rate_first_with_cis_over_seeds(trials):
    pts = attack.points(trials)
    fams = attack.families(pts)
    assert list(fams) == ["JPEG", "learned codec (mdfr codec train)"]
    learned = fams["learned codec (mdfr codec train)"]
    assert [p.attack for p in learned] == [
        "train:lmbda=0.3",
        "train:lmbda=0.03",
        "train:lmbda=0.003",
    ]
    assert attack.curves_of(pts) == ["original", "compressed", "finetune", "proposed"]
    top = learned[0]
    assert (top.bpp, top.psnr) == (2.0, 34.0)
    ft = top.curves["finetune"].summary
    assert (
        ft.n == 3 and ft.mean == pytest.approx(88.0) and ft.half == pytest.approx(2.484, abs=1e-3)
    )
    assert top.curves["original"].summary.mean == pytest.approx(90.0)
    # balanced accuracy is its own set of curves, from test/bacc_*; absent metrics give n = 0
    assert top.balanced["finetune"].summary.mean == pytest.approx(86.0)
    assert top.balanced["original"].summary.n == 0
    assert top.to_json()["balanced"]["proposed"]["summary"]["mean"] == pytest.approx(84.0)
    # other settings than lmbda make another family; a failed run counts nowhere
    assert attack.family_of("train:arch=mdfr-factorized-s3,lmbda=0.1").endswith(
        "arch=mdfr-factorized-s3"
    )
    # the paired gains: restored - fine-tuned is (86 - 88) points on every seed at lmbda=0.3
    g = attack.gains(top)
    assert g["restored − fine-tuned"].mean_diff == pytest.approx(-2.0)
    assert g["fine-tuned − compressed"].diff.mean == pytest.approx(8.0)
    assert g["fine-tuned − compressed"].p is not None and g["restored − fine-tuned"].p is None
    failed = {**trials[0], "tags": {**trials[0]["tags"], Tag.STATUS: "failed"}}
    assert len(attack.points([failed])) == 0


def test_half_point_interpolates_where_a_curve_first_falls_below_half_of_original(trials):
    learned = attack.families(attack.points(trials))["learned codec (mdfr codec train)"]
    comp = attack.half_point(learned, "compressed")
    assert comp["status"] == "crosses" and comp["threshold"] == pytest.approx(45.0)
    # 80% at 2.0 bpp, 30% at 1.0 bpp: 45% lies 70% of the way down
    assert comp["bpp"] == pytest.approx(1.3) and comp["psnr"] == pytest.approx(31.2)
    assert [w["attack"] for w in comp["between"]] == ["train:lmbda=0.3", "train:lmbda=0.03"]
    assert attack.half_point(learned, "proposed")["bpp"] == pytest.approx(2.0 - 41 / 46)
    never = attack.half_point(learned, "finetune")
    assert never["status"] == "never_below" and never["lowest"]["bpp"] == 0.5
    jpeg = attack.families(attack.points(trials))["JPEG"]
    assert attack.half_point(jpeg, "compressed")["status"] == "below_everywhere"
    assert attack.half_point([], "compressed")["status"] == "no_data"
    assert "≈ 1.30 bpp" in attack.describe(comp) and "never" in attack.describe(never)


def test_reading_says_it_in_words(trials):
    text = " ".join(attack.reading(attack.points(trials)))
    assert "below about 1.30 bpp (31.2 dB)" in text
    assert "Fine-tuned: stays above half of the original accuracy (45.0%)" in text
    assert "Restored (MDFRNet, proposed): falls below" in text
    assert "JPEG, 2 rates from 1.50 to 3.00 bpp" in text and "at every rate tested" in text


def test_figure_draws_every_curve_and_family(trials, tmp_path):
    pts = attack.points(trials)
    curves = attack.curves_of(pts)
    learned = attack.families(pts)["learned codec (mdfr codec train)"]
    marks = [{**attack.half_point(learned, "compressed"), "curve": "compressed"}]
    png = figures.attack_rate(
        pts, curves, {c: attack.curve_label(c) for c in curves}, marks, tmp_path / "f.png"
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
