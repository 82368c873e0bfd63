"""Uncertainty over seeds: t-based confidence intervals and paired t-tests.

Seeds are few (2-5), so intervals use Student's t distribution with ``n - 1`` degrees of
freedom rather than a normal approximation, and a single seed gets no interval at all (there
is no spread to estimate). SciPy provides the quantiles and the paired test; it is installed
with scikit-image, and when it is missing the intervals and p-values are ``None`` (reported
as "n/a") instead of being faked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Mean of ``n`` values with a two-sided t confidence interval.

    ``half`` is the half-width (``mean ± half``); ``None`` when ``n < 2`` or SciPy is missing.
    """

    n: int
    mean: float | None
    std: float | None
    half: float | None
    level: float = 0.95

    @property
    def low(self) -> float | None:
        return None if self.mean is None or self.half is None else self.mean - self.half

    @property
    def high(self) -> float | None:
        return None if self.mean is None or self.half is None else self.mean + self.half


@dataclass(frozen=True)
class Paired:
    """A paired comparison ``a - b`` over the seeds both sides have.

    Attributes:
        n: number of pairs.
        mean_diff: mean of ``a - b`` (None without pairs).
        diff: confidence interval of the mean difference.
        p: two-sided paired t-test p-value (None with fewer than 2 pairs, when every
            difference is identical, or without SciPy).
        keys: the seeds that formed pairs.
    """

    n: int
    mean_diff: float | None
    diff: Summary
    p: float | None
    keys: tuple[str, ...]


def _t_quantile(q: float, dof: int) -> float | None:
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - scipy ships with scikit-image
        return None
    return float(stats.t.ppf(q, dof))


def mean_ci(values: Sequence[float], level: float = 0.95) -> Summary:
    """Mean and t-interval of ``values`` (non-finite values are dropped first).

    Half-width = t_{(1+level)/2, n-1} * s / sqrt(n), with ``s`` the sample standard deviation
    (ddof = 1).
    """
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return Summary(0, None, None, None, level)
    mean = math.fsum(xs) / n
    if n < 2:
        return Summary(1, mean, None, None, level)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    t = _t_quantile((1 + level) / 2, n - 1)
    half = None if t is None else t * std / math.sqrt(n)
    return Summary(n, mean, std, half, level)


def paired(a: Mapping[str, float], b: Mapping[str, float], level: float = 0.95) -> Paired:
    """Compare ``a`` against ``b`` on the keys (seeds) both have finite values for.

    The test is Student's paired t-test (``scipy.stats.ttest_rel``), two-sided: it asks
    whether the mean per-seed difference is zero, which removes the seed-to-seed variation
    the two setups share (same pretrained CMI net, same data order).
    """
    keys = tuple(
        sorted(
            (k for k in a if k in b and _finite(a[k]) and _finite(b[k])),
            key=seed_order,
        )
    )
    diffs = [float(a[k]) - float(b[k]) for k in keys]
    diff = mean_ci(diffs, level)
    p = None
    if len(keys) >= 2 and max(diffs) - min(diffs) > 0:
        try:
            from scipy import stats

            p = float(stats.ttest_rel([a[k] for k in keys], [b[k] for k in keys]).pvalue)
        except ImportError:  # pragma: no cover - scipy ships with scikit-image
            p = None
    return Paired(len(keys), diff.mean, diff, p, keys)


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def seed_order(key: str) -> tuple[int, str]:
    # Seeds arrive as tag strings; sort "2" before "10".
    return (int(key), "") if key.lstrip("-").isdigit() else (1 << 62, key)


def holm(pvalues: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm–Bonferroni adjusted p-values for one family of tests (``None`` stays ``None``).

    The ``m`` available p-values are sorted ascending; the ``i``-th (0-based) is multiplied
    by ``m - i``, running maxima keep the adjusted values monotone, and they are capped at 1.
    Rejecting where the adjusted value is below α controls the family-wise error rate at α
    without assuming the tests are independent (ours share a baseline and a test split).
    """
    given = sorted(((p, k) for k, p in pvalues.items() if p is not None), key=lambda t: t[0])
    m = len(given)
    out: dict[str, float | None] = dict.fromkeys(pvalues)
    running = 0.0
    for i, (p, k) in enumerate(given):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out
