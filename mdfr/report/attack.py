"""Accuracy against the attack's rate: the numbers behind ``mdfr report attack``.

A sweep with a ``grid.attack`` axis runs the same cells under several codecs. For each attack
(the ``mdfr.attack`` tag; the codec tag for older runs) this takes its measured rate and
distortion (``attack/bpp``, ``attack/psnr``: means over the dataset's images, from the real
bitstreams) and, as test accuracies in percent with 95% t-intervals over seeds
(:func:`mdfr.report.tables.make_row`), one curve each for:

- ``original``: the pretrained CMI net on original patches (the same net for every attack);
- ``compressed``: that net on the attack's compressed patches (no defence);
- one per Table II setup that ran: its defence on the compressed patches (``finetune``:
  the fine-tuned net; ``proposed``: MDFRNet in front of the pretrained net; ...).

Attacks form families (one codec at several rates: ``train:`` specs differing only in
``lmbda``, JPEG at several qualities, one CompressAI zoo model); along a family, from the
highest rate down, :func:`half_point` finds where a curve first falls below half of the
original accuracy, interpolating linearly in bpp (and PSNR) between the two attacks around
it. That is the rate at which the attack "breaks" camera identification, and how far a
defence moves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from mdfr.config import SETUPS
from mdfr.names import ATTACK_BPP, ATTACK_PSNR, Tag, acc_metric
from mdfr.report.runs import metric, setup_of
from mdfr.report.stats import Paired, mean_ci, paired
from mdfr.report.tables import SETUP_LABELS, Row, make_row, usable

ORIGINAL, COMPRESSED = "original", "compressed"
# Names of the defended curves, by setup; other setups keep their Table II label.
CURVE_LABELS = {"finetune": "fine-tuned", "proposed": "restored (MDFRNet, proposed)"}
FAMILY_LABELS = {
    "train": "learned codec (mdfr codec train)",
    "learned": "learned codec (checkpoint)",
    "jpeg": "JPEG",
    "compressai": "CompressAI",
    "external": "external codec",
}
# The rate-distortion knob of each family: specs that differ only in it are one family.
RATE_KEYS = {"train": "lmbda", "jpeg": "", "compressai": ""}


@dataclass
class AttackPoint:
    """One attack: its measured rate and distortion and every curve's value there."""

    attack: str
    family: str
    bpp: float | None
    psnr: float | None
    curves: dict[str, Row] = field(default_factory=dict)
    # The same curves in balanced accuracy (mean per-class recall), the report's second table.
    balanced: dict[str, Row] = field(default_factory=dict)

    def mean(self, curve: str) -> float | None:
        row = self.curves.get(curve)
        return None if row is None else row.summary.mean

    def to_json(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "family": self.family,
            "bpp": self.bpp,
            "psnr": self.psnr,
            "curves": {k: r.to_json() for k, r in self.curves.items()},
            "balanced": {k: r.to_json() for k, r in self.balanced.items()},
        }


def attack_of(run: dict[str, Any]) -> str:
    """The attack a trial ran under, as the sweep file names it."""
    return str(run["tags"].get(Tag.ATTACK) or run["tags"].get(Tag.CODEC) or "")


def family_of(attack: str) -> str:
    """The family an attack belongs to: its scheme, plus every setting but the rate knob
    (``train:arch=x,lmbda=0.01`` -> ``learned codec (mdfr codec train) arch=x``)."""
    scheme, _, rest = attack.partition(":")
    label = FAMILY_LABELS.get(scheme, scheme)
    if scheme == "train":
        keep = sorted(p for p in rest.split(",") if p and not p.startswith("lmbda="))
        return f"{label} {','.join(keep)}".strip()
    if scheme == "compressai":
        return f"{label} {rest.split(':', 1)[0]}"
    if scheme in ("learned", "external"):
        return f"{label} {attack}"  # one checkpoint or mirror: a family of its own
    return label


def curve_label(curve: str) -> str:
    return CURVE_LABELS.get(curve) or SETUP_LABELS.get(curve, curve)


def points(trials: list[dict[str, Any]]) -> list[AttackPoint]:
    """Every attack of the finished trials, families together, highest rate first."""
    ok = [r for r in usable(trials) if attack_of(r)]
    out = []
    for attack in sorted({attack_of(r) for r in ok}):
        runs = [r for r in ok if attack_of(r) == attack]
        p = AttackPoint(
            attack, family_of(attack), _mean(runs, ATTACK_BPP), _mean(runs, ATTACK_PSNR)
        )
        p.curves = _curves(attack, runs, balanced=False)
        p.balanced = _curves(attack, runs, balanced=True)
        out.append(p)
    return sorted(out, key=lambda p: (p.family, -(p.bpp or 0.0), p.attack))


def _curves(attack: str, runs: list[dict[str, Any]], *, balanced: bool) -> dict[str, Row]:
    """Original and compressed (the pretrained net, no defence), then each setup's defence."""
    out = {
        view: make_row(attack, runs, acc_metric("test", view, balanced=balanced))
        for view in (ORIGINAL, COMPRESSED)
    }
    for setup in [s for s in SETUPS if any(setup_of(r) == s for r in runs)]:
        mine = [r for r in runs if setup_of(r) == setup]
        out[setup] = make_row(attack, mine, acc_metric("test", "restored", balanced=balanced))
    return out


def _mean(runs: list[dict[str, Any]], key: str) -> float | None:
    return mean_ci([v for r in runs if (v := metric(r, key)) is not None]).mean


def curves_of(pts: list[AttackPoint]) -> list[str]:
    """The curves present, original and compressed first, then the setups in Table II order."""
    names = {c for p in pts for c in p.curves}
    return [c for c in [ORIGINAL, COMPRESSED, *SETUPS] if c in names]


def families(pts: list[AttackPoint]) -> dict[str, list[AttackPoint]]:
    out: dict[str, list[AttackPoint]] = {}
    for p in pts:
        out.setdefault(p.family, []).append(p)
    return out


# The paired comparisons of the report's gains table: (label, a, b) reads "a - b".
GAINS = (
    ("fine-tuned − compressed", "finetune", COMPRESSED),
    ("restored − compressed", "proposed", COMPRESSED),
    ("restored − fine-tuned", "proposed", "finetune"),
)


def gains(p: AttackPoint) -> dict[str, Paired | None]:
    """Each GAINS comparison at one attack, paired by seed (None when a side did not run).

    Compressed accuracy comes from the one pretrained net, so pairing with it only lines
    seeds up; restored against fine-tuned is the paired test that tells the defences apart.
    """
    out: dict[str, Paired | None] = {}
    for label, a, b in GAINS:
        ra, rb = p.curves.get(a), p.curves.get(b)
        out[label] = None if ra is None or rb is None else paired(ra.values, rb.values)
    return out


def half_point(pts: list[AttackPoint], curve: str) -> dict[str, Any]:
    """Where ``curve`` first falls below half of the original accuracy, from high rate down.

    Returns a dict with ``threshold`` (half the family's mean original accuracy, percent)
    and ``status``: ``crosses`` (with interpolated ``bpp`` and ``psnr`` and the two attacks
    ``between`` which it happens), ``below_everywhere`` (already below at the highest rate
    tested), ``never_below`` (still above at the lowest) or ``no_data``.
    """
    originals = [m for p in pts if (m := p.mean(ORIGINAL)) is not None]
    usable_pts = [p for p in pts if p.bpp is not None and p.mean(curve) is not None]
    usable_pts.sort(key=lambda p: -float(p.bpp or 0.0))
    if not originals or not usable_pts:
        return {"curve": curve, "status": "no_data", "threshold": None}
    threshold = 0.5 * sum(originals) / len(originals)
    base = {"curve": curve, "threshold": threshold}
    first = usable_pts[0]
    if (first.mean(curve) or 0.0) < threshold:
        return {**base, "status": "below_everywhere", "highest": _where(first)}
    for hi, lo in pairwise(usable_pts):
        a, b = float(hi.mean(curve) or 0.0), float(lo.mean(curve) or 0.0)
        if b < threshold:
            frac = (a - threshold) / (a - b) if a != b else 1.0
            return {
                **base,
                "status": "crosses",
                "bpp": _lerp(hi.bpp, lo.bpp, frac),
                "psnr": _lerp(hi.psnr, lo.psnr, frac),
                "between": [_where(hi), _where(lo)],
            }
    return {**base, "status": "never_below", "lowest": _where(usable_pts[-1])}


def _lerp(a: float | None, b: float | None, t: float) -> float | None:
    return None if a is None or b is None else a + t * (b - a)


def _where(p: AttackPoint) -> dict[str, Any]:
    return {"attack": p.attack, "bpp": p.bpp, "psnr": p.psnr}


def describe(point: dict[str, Any]) -> str:
    """One cell of the half-point table."""
    s = point["status"]
    if s == "crosses":
        hi, lo = point["between"]
        psnr = "" if point["psnr"] is None else f", ≈ {point['psnr']:.1f} dB"
        return (
            f"≈ {point['bpp']:.2f} bpp{psnr} (between `{hi['attack']}` at {hi['bpp']:.2f} and "
            f"`{lo['attack']}` at {lo['bpp']:.2f} bpp)"
        )
    if s == "below_everywhere":
        return f"already below at the highest rate tested ({point['highest']['bpp']:.2f} bpp)"
    if s == "never_below":
        return f"never, down to the lowest rate tested ({point['lowest']['bpp']:.2f} bpp)"
    return "—"


def reading(pts: list[AttackPoint]) -> list[str]:
    """The curves in plain words, one sentence per family and curve."""
    out = []
    for fam, mine in families(pts).items():
        comp = half_point(mine, COMPRESSED)
        if len(mine) < 2 or comp["status"] == "no_data":
            continue
        lo, hi = min(p.bpp or 0.0 for p in mine), max(p.bpp or 0.0 for p in mine)
        text = (
            f"{fam}, {len(mine)} rates from {lo:.2f} to {hi:.2f} bpp: without a defence the "
            f"CMI net {_when(comp)}."
        )
        for curve in curves_of(mine)[2:]:
            label = curve_label(curve)
            text += f" {label[:1].upper()}{label[1:]}: {_when(half_point(mine, curve))}."
        out.append(text)
    return out


def _when(point: dict[str, Any]) -> str:
    """What a curve does relative to half of the original accuracy, as a predicate."""
    half = f"half of the original accuracy ({point['threshold']:.1f}%)"
    s = point["status"]
    if s == "crosses":
        dist = f" ({point['psnr']:.1f} dB)" if point["psnr"] is not None else ""
        return f"falls below {half} below about {point['bpp']:.2f} bpp{dist}"
    if s == "below_everywhere":
        return f"is below {half} at every rate tested"
    if s == "never_below":
        return f"stays above {half} at every rate tested"
    return "has no data"
