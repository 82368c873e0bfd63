"""The paper's Table II claims, tested on a sweep's trials, and said in plain words.

Three families of paired comparisons over seeds (the same pretrained CMI net and the same
test split for every seed, so pairing by seed removes what the setups share):

* **restoration**: each setup's restored accuracy minus the compressed accuracy of the CMI
  net it started from — does the defence help at all?
* **vs fine-tune**: each setup minus #1 fine-tuning (the paper's baseline).
* **paper claims**: #6 proposed minus each ablation (#2–#5), the ordering the paper reads
  from Table II (proposed > every ablation); and our wrapped phase loss minus the paper's.

Each family gets Holm-adjusted p-values (:func:`mdfr.report.stats.holm`); a claim "holds"
only when its difference has the claimed sign *and* its adjusted p is below α = 0.05. With
3–5 seeds a paired t-test has little power: "not significant" is the honest answer for most
small differences, and the report says so rather than reading the sign of a mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mdfr.report.stats import Paired, holm, paired

ALPHA = 0.05
ABLATIONS = ("backbone", "wo_res", "wo_at", "wo_phase_restore")


@dataclass
class Claim:
    """One paired comparison ``a − b`` (percentage points) with its Holm-adjusted p."""

    family: str
    a: str
    b: str
    test: Paired
    p_adj: float | None = None

    @property
    def verdict(self) -> str:
        """``holds`` / ``reversed`` (significant either way), ``not significant``, or
        ``untested`` (fewer than two pairs, or identical differences)."""
        if self.test.mean_diff is None or self.p_adj is None:
            return "untested"
        if self.p_adj >= ALPHA:
            return "not significant"
        return "holds" if self.test.mean_diff > 0 else "reversed"

    def to_json(self) -> dict[str, Any]:
        d = self.test.diff
        return {
            "family": self.family,
            "a": self.a,
            "b": self.b,
            "pairs": self.test.n,
            "mean_diff_pp": self.test.mean_diff,
            "ci_low": d.low,
            "ci_high": d.high,
            "p": self.test.p,
            "p_holm": self.p_adj,
            "verdict": self.verdict,
        }


def _family(name: str, pairs: list[tuple[str, str, dict[str, float], dict[str, float]]]):
    claims = [Claim(name, a, b, paired(va, vb)) for a, b, va, vb in pairs if va and vb]
    adjusted = holm({f"{c.a}|{c.b}": c.test.p for c in claims})
    for c in claims:
        c.p_adj = adjusted[f"{c.a}|{c.b}"]
    return claims


def table2_claims(
    restored: dict[str, dict[str, float]], compressed: dict[str, dict[str, float]]
) -> list[Claim]:
    """All three families from per-setup ``{seed: percent}`` maps.

    Args:
        restored: setup -> seed -> ``test/acc_restored`` (percent).
        compressed: setup -> seed -> ``test/acc_compressed`` of the same trials.
    """
    setups = list(restored)
    out = _family(
        "restoration", [(s, "compressed", restored[s], compressed.get(s, {})) for s in setups]
    )
    if "finetune" in restored:
        out += _family(
            "vs fine-tune",
            [(s, "finetune", restored[s], restored["finetune"]) for s in setups if s != "finetune"],
        )
    if "proposed" in restored:
        pairs = [
            ("proposed", s, restored["proposed"], restored[s]) for s in ABLATIONS if s in restored
        ]
        if "proposed_wrapped" in restored:
            pairs.append(
                ("proposed_wrapped", "proposed", restored["proposed_wrapped"], restored["proposed"])
            )
        out += _family("paper claims", pairs)
    return out


def plain_words(claims: list[Claim], labels: dict[str, str]) -> list[str]:
    """One sentence per family: what holds here, what is reversed, what is not significant."""

    def name(k: str) -> str:
        return labels.get(k, k)

    def group(cs: list[Claim], verdict: str) -> str:
        return ", ".join(
            f"{name(c.a)} vs {name(c.b)} ({c.test.mean_diff:+.1f} pp)"
            for c in cs
            if c.verdict == verdict
        )

    out = []
    for family, intro in (
        ("restoration", "Against doing nothing (restored minus compressed, same CMI net)"),
        ("vs fine-tune", "Against #1 fine-tuning"),
        ("paper claims", "The paper's ordering (proposed above each ablation)"),
    ):
        cs = [c for c in claims if c.family == family]
        if not cs:
            continue
        parts = []
        for verdict, what in (
            ("holds", "significantly better"),
            ("reversed", "significantly worse"),
            ("not significant", "not significant at α = 0.05 after Holm"),
            ("untested", "untested (fewer than two seed pairs)"),
        ):
            text = group(cs, verdict)
            if text:
                parts.append(f"{what}: {text}")
        out.append(f"{intro}: " + "; ".join(parts) + ".")
    return out
