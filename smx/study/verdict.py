"""Differences against the baseline and the verdict they support (pure functions on numbers).

- Paired (the default when the arm and the baseline share at least two seeds: same seed, same data order and the
  same initial draw of everything the estimator does not touch): d_s = arm_s - baseline_s over the common seeds,
  mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n).
- Unpaired (fewer than two common seeds, but at least two runs on each side): Welch's interval,
  mean(a) - mean(b) +- t_{0.975, df} * sqrt(s_a^2/n_a + s_b^2/n_b), df by Welch-Satterthwaite.
- Verdict at 95%: "better" when the whole interval lies on the better side of 0 (higher BLEU, lower loss / ppl /
  updates / wall, higher tokens/s), "worse" when it lies wholly on the other side, "indistinguishable at 95%" when
  it contains 0, and "no interval" when there is none (a single seed on either side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from smx.study.stats import LEVEL, mean_ci, t_ppf

BETTER, WORSE, SAME, NONE = "better", "worse", "indistinguishable at 95%", "no interval"

# per-run quantity -> (label, higher is better); the order of the tables
QUANTITIES: dict[str, tuple[str, bool]] = {
    "bleu_tok": ("BLEU (tok)", True),
    "sacrebleu": ("sacreBLEU", True),
    "ppl": ("test ppl", False),
    "best": ("best valid", False),
    "final": ("final valid", False),
    "updates_to_target": ("updates to target", False),
    "tokens_per_s": ("tokens/s", True),
    "wall_s": ("wall s", False),
}


@dataclass(frozen=True)
class Contrast:
    """arm - baseline for one quantity, with its interval and verdict."""

    quantity: str
    label: str
    higher_is_better: bool
    kind: str  # "paired" | "unpaired" | "none"
    n: int  # pairs (paired) or the smaller group (unpaired)
    mean: float  # arm - baseline
    lo: float | None
    hi: float | None
    verdict: str

    def to_dict(self) -> dict:
        return {"quantity": self.quantity, "label": self.label, "higher_is_better": self.higher_is_better,
                "kind": self.kind, "n": self.n, "mean": self.mean, "lo": self.lo, "hi": self.hi,
                "verdict": self.verdict}


def welch_interval(a: list[float], b: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean(a) - mean(b), lo, hi): Welch's t-interval; needs len(a), len(b) >= 2."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    diff = ma - mb
    if se2 == 0.0:
        return diff, diff, diff
    df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    half = t_ppf(0.5 + level / 2.0, df) * math.sqrt(se2)
    return diff, diff - half, diff + half


def judge(lo: float | None, hi: float | None, higher_is_better: bool) -> str:
    """The verdict an interval of (arm - baseline) supports."""
    if lo is None or hi is None:
        return NONE
    if lo > 0 or hi < 0:
        return BETTER if (lo > 0) == higher_is_better else WORSE
    return SAME


def contrast(quantity: str, arm: dict, base: dict) -> Contrast | None:
    """arm - baseline for `quantity`; arm / base: {seed: value}. None when either side has no value."""
    label, higher = QUANTITIES[quantity]
    if not arm or not base:
        return None
    common = sorted(set(arm) & set(base), key=str)
    if len(common) >= 2:
        iv = mean_ci([arm[s] - base[s] for s in common])
        return Contrast(quantity, label, higher, "paired", len(common), iv.mean, iv.lo, iv.hi,
                        judge(iv.lo, iv.hi, higher))
    a, b = list(arm.values()), list(base.values())
    diff = sum(a) / len(a) - sum(b) / len(b)
    if len(a) >= 2 and len(b) >= 2:
        diff, lo, hi = welch_interval(a, b)
        return Contrast(quantity, label, higher, "unpaired", min(len(a), len(b)), diff, lo, hi, judge(lo, hi, higher))
    return Contrast(quantity, label, higher, "none", min(len(a), len(b)), diff, None, None, NONE)


def contrasts(arm: dict[str, dict], base: dict[str, dict]) -> tuple[Contrast, ...]:
    """Every quantity both sides have: arm / base map quantity -> {seed: value}."""
    out = (contrast(q, arm.get(q) or {}, base.get(q) or {}) for q in QUANTITIES)
    return tuple(c for c in out if c is not None)


def primary(cs: tuple[Contrast, ...]) -> Contrast | None:
    """The contrast a verdict is stated on: BLEU (tok), else test ppl, else the best valid metric."""
    by = {c.quantity: c for c in cs}
    return next((by[q] for q in ("bleu_tok", "ppl", "best") if q in by), None)


def _signed(x: float, digits: int) -> str:
    return f"{x:+.{digits}f}"


def _digits(c: Contrast) -> int:
    return 2 if c.quantity in ("bleu_tok", "sacrebleu", "ppl") else 0 if c.quantity in (
        "updates_to_target", "tokens_per_s", "wall_s") else 3


def describe(c: Contrast) -> str:
    """'+0.31 [-0.20, +0.82], paired over 3 seeds' (or the single-seed difference)."""
    digits = _digits(c)
    if c.lo is None:
        return f"{_signed(c.mean, digits)} (one seed{'s' if c.n > 1 else ''} on a side: no interval)"
    how = f"paired over {c.n} seeds" if c.kind == "paired" else f"unpaired (Welch), n >= {c.n}"
    return f"{_signed(c.mean, digits)} [{_signed(c.lo, digits)}, {_signed(c.hi, digits)}], {how}"


def verdict_line(arm: str, baseline: str, cs: tuple[Contrast, ...], protocol: str, seeds_command: str) -> str:
    """One plain-language sentence per arm, computed from its primary contrast."""
    c = primary(cs)
    if c is None:
        return f"{arm} vs {baseline}: no common quantity to compare."
    direction = "higher is better" if c.higher_is_better else "lower is better"
    if c.verdict == NONE:
        return (f"{arm} vs {baseline} ({protocol}): {c.label} {_signed(c.mean, _digits(c))} ({direction}) from a single "
                f"seed, so no interval exists and this does not say which is better; {seeds_command} gives one.")
    head = f"{arm} vs {baseline} ({protocol}): {c.label} {describe(c)} ({direction})"
    if c.verdict == SAME:
        return f"{head}: indistinguishable at 95% (the interval contains 0)."
    return f"{head}: {arm} is {c.verdict} than {baseline} at 95%."
