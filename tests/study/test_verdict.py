"""Verdicts against the baseline: paired and unpaired intervals with known answers, on numbers and on run dirs."""

from __future__ import annotations

import json
import math

import pytest
import scipy.stats

from compare_helpers import write_run
from smx.study.compare import load_run, summarize
from smx.study.outputs import markdown
from smx.study.verdict import BETTER, NONE, SAME, WORSE, contrast, judge, verdict_line, welch_interval

T975_2 = 4.302652729911275  # t_{0.975, 2}


@pytest.mark.parametrize("lo, hi, higher, expected", [
    (0.1, 0.9, True, BETTER), (0.1, 0.9, False, WORSE), (-0.9, -0.1, True, WORSE), (-0.9, -0.1, False, BETTER),
    (-0.1, 0.9, True, SAME), (0.0, 0.9, True, SAME), (None, None, True, NONE)])
def test_judge(lo, hi, higher, expected):
    assert judge(lo, hi, higher) == expected


def test_paired_known_interval_better_bleu_worse_loss():
    arm, base = {1: 10.5, 2: 11.0, 3: 10.8}, {1: 10.0, 2: 10.4, 3: 10.1}  # differences 0.5, 0.6, 0.7
    half = T975_2 * 0.1 / math.sqrt(3)
    c = contrast("bleu_tok", arm, base)
    assert (c.kind, c.n) == ("paired", 3)
    assert c.mean == pytest.approx(0.6) and c.lo == pytest.approx(0.6 - half) and c.hi == pytest.approx(0.6 + half)
    assert c.verdict == BETTER
    assert contrast("best", arm, base).verdict == WORSE  # the same numbers as a loss: higher is worse


def test_pairing_removes_the_seed_effect():
    """A shared seed effect (+-1) swamps a 0.1 gain unpaired; paired, the gain is clear."""
    base = {1: 9.0, 2: 10.0, 3: 11.0}
    arm = {1: 9.1, 2: 10.12, 3: 11.08}
    assert contrast("bleu_tok", arm, base).verdict == BETTER
    shifted = {s + 10: v for s, v in arm.items()}  # no common seed: unpaired
    c = contrast("bleu_tok", shifted, base)
    assert c.kind == "unpaired" and c.verdict == SAME


def test_welch_matches_scipy():
    a, b = [1.0, 2.5, 2.0, 4.0], [0.5, 0.7, 1.9]
    diff, lo, hi = welch_interval(a, b)
    ci = scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(sum(a) / 4 - sum(b) / 3)
    assert (lo, hi) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_unpaired_worse_and_indistinguishable():
    assert contrast("best", {4: 3.0, 5: 3.1, 6: 3.2}, {1: 2.0, 2: 2.1, 3: 2.05}).verdict == WORSE
    assert contrast("best", {4: 2.0, 5: 3.0}, {1: 2.4, 2: 2.6}).verdict == SAME


def test_single_seed_no_interval_and_line_names_the_command():
    c = contrast("bleu_tok", {1: 10.4}, {1: 10.1})
    assert c.kind == "none" and c.verdict == NONE and c.mean == pytest.approx(0.3)
    line = verdict_line("sparsemixer", "topk", (c,), "controlled", "`make reproduce`")
    assert line == ("sparsemixer vs topk (controlled): BLEU (tok) +0.30 (higher is better) from a single seed, so no "
                    "interval exists and this does not say which is better; `make reproduce` gives one.")


def _bleu(x):
    return {"bleu_tok": x, "sacrebleu": x - 1, "subset": "test", "checkpoint": "best"}


def test_summarize_paired_verdicts_on_run_dirs(tmp_path):
    root = tmp_path / "s"
    curve = lambda end: [(10, 5.0), (20, end)]  # noqa: E731
    for seed, (b, sm, st) in {1: (10.0, 10.5, 9.0), 2: (12.0, 12.6, 12.1), 3: (11.0, 11.7, 12.2)}.items():
        write_run(root, f"topk-s{seed}", "topk", seed, curve(3.0), bleu=_bleu(b))
        write_run(root, f"sm-s{seed}", "sparsemixer", seed, curve(2.9), bleu=_bleu(sm))
        write_run(root, f"st-s{seed}", "straight_through", seed, curve(3.1), bleu=_bleu(st))
    c = summarize([load_run(p) for p in sorted(root.iterdir())], baseline="topk")
    by = {g.estimator: g for g in c.groups}
    assert by["topk"].verdict is None and by["topk"].contrasts == ()
    assert by["sparsemixer"].verdict == BETTER  # BLEU +0.5, +0.6, +0.7
    assert by["straight_through"].verdict == SAME  # -1.0, +0.1, +1.2
    sm = {x.quantity: x for x in by["sparsemixer"].contrasts}
    assert sm["best"].mean == pytest.approx(-0.1) and sm["best"].verdict == BETTER  # lower loss, zero spread
    assert sm["bleu_tok"].kind == "paired" and sm["bleu_tok"].n == 3
    d = json.loads(json.dumps(c.to_dict()))
    assert d["groups"][1]["verdict"] == BETTER and d["groups"][1]["per_seed"]["bleu_tok"] == {"1": 10.5, "2": 12.6,
                                                                                              "3": 11.7}
    assert any(v.startswith("sparsemixer vs topk (controlled): BLEU (tok) +0.60 [") and v.endswith(
        "sparsemixer is better than topk at 95%.") for v in d["verdicts"])
    md = markdown(c, [])
    assert "## Against the baseline (topk)" in md and "| straight_through | BLEU (tok) |" in md
