"""Statistics of `smx compare` (pure functions on numbers; numpy and scipy).

- Student-t intervals over seeds: mean +- t_{(1+level)/2, n-1} * s / sqrt(n) (s: sample std, ddof=1), the t quantile
  from scipy (a dependency anyway: fairseq imports scikit-learn, which needs it);
- updates-to-target on a validation curve, optionally interpolated;
- a percentile bootstrap interval of a ratio of means (each group resampled on its own, fixed seed);
- the mean curve over seeds on the updates every seed validated;
- the relative improvement of a curve over its last quarter of updates (is it flattening?).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.stats

LEVEL = 0.95
N_BOOT = 10_000
BOOT_SEED = 0


def t_cdf(t: float, df: float) -> float:
    """Student-t cumulative distribution function (scipy)."""
    return float(scipy.stats.t.cdf(t, df))


def t_ppf(q: float, df: float) -> float:
    """Student-t quantile (scipy), 0 < q < 1."""
    if not 0.0 < q < 1.0 or df <= 0:
        raise ValueError(f"t_ppf needs 0 < q < 1 and df > 0, got q={q}, df={df}")
    return float(scipy.stats.t.ppf(q, df))


@dataclass(frozen=True)
class Interval:
    """Mean over seeds with a two-sided t-interval (lo/hi None with fewer than 2 values)."""

    mean: float
    lo: float | None
    hi: float | None
    n: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


def mean_ci(values, level: float = LEVEL) -> Interval | None:
    """Mean and Student-t interval of `values`; None when empty."""
    xs = [float(v) for v in values]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return Interval(mean, None, None, len(xs))
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    half = t_ppf(0.5 + level / 2.0, len(xs) - 1) * sd / math.sqrt(len(xs))
    return Interval(mean, mean - half, mean + half, len(xs))


def steps_to_target(curve, target: float, interpolate: bool = False) -> float | None:
    """First validated update with value <= target (curve: (step, value) sorted by step); None if never reached.

    interpolate: linear interpolation between the previous validation point (above the target) and that one.
    """
    prev = None
    for step, value in curve:
        if value <= target:
            if interpolate and prev is not None and prev[1] > value:
                s0, v0 = prev
                return s0 + (v0 - target) / (v0 - value) * (step - s0)
            return float(step)
        prev = (step, value)
    return None


def bootstrap_ratio_ci(num, den, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = BOOT_SEED):
    """Percentile bootstrap interval of mean(num) / mean(den); each sample resampled with replacement on its own."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    rng = np.random.default_rng(seed)
    ra = a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1)  # (n_boot,)
    rb = b[rng.integers(0, len(b), size=(n_boot, len(b)))].mean(axis=1)  # (n_boot,)
    lo, hi = np.quantile(ra / rb, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def mean_curve(curves):
    """(steps, mean, min, max) over seeds at the updates every seed validated (all updates if they share none)."""
    sets = [dict(c) for c in curves if c]
    if not sets:
        return [], [], [], []
    common = sorted(set.intersection(*(set(s) for s in sets)))
    if len(common) < 2:
        common = sorted(set.union(*(set(s) for s in sets)))
    rows = [[s[k] for s in sets if k in s] for k in common]
    return common, [sum(r) / len(r) for r in rows], [min(r) for r in rows], [max(r) for r in rows]


def last_quarter_gain(curve) -> float | None:
    """(v(3/4) - v(end)) / v(3/4): relative improvement of a lower-is-better curve over its last quarter of updates.

    v(3/4) is the last point at or before 3/4 of the final update; None with fewer than two points or none there.
    """
    points = [(float(s), float(v)) for s, v in curve]
    if len(points) < 2:
        return None
    end_step, end = points[-1]
    before = [v for s, v in points[:-1] if s <= 0.75 * end_step]
    if not before or before[-1] == 0:
        return None
    return (before[-1] - end) / before[-1]
