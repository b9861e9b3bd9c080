"""Pure statistics of smx.study.stats (used by smx compare) checked against tabulated values and hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smx.study.compare import discover, load_run, summarize
from smx.study.stats import bootstrap_ratio_ci, mean_ci, mean_curve, steps_to_target, t_cdf, t_ppf


@pytest.mark.parametrize("df, expected", [(1, 12.706204736), (2, 4.302652730), (3, 3.182446305), (4, 2.776445105),
                                          (9, 2.262157163), (30, 2.042272456), (1000, 1.962339081)])
def test_t_ppf_matches_tables(df, expected):
    assert t_ppf(0.975, df) == pytest.approx(expected, abs=1e-7)
    assert t_cdf(expected, df) == pytest.approx(0.975, abs=1e-10)
    assert t_ppf(0.025, df) == pytest.approx(-expected, abs=1e-7)


def test_mean_ci_known_values():
    iv = mean_ci([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305 * math.sqrt(5 / 3) / 2
    assert (iv.mean, iv.n) == (2.5, 4)
    assert iv.lo == pytest.approx(2.5 - half) and iv.hi == pytest.approx(2.5 + half)
    one = mean_ci([7.0])
    assert (one.mean, one.lo, one.hi, one.n) == (7.0, None, None, 1)
    assert mean_ci([]) is None


def test_steps_to_target():
    curve = [(100, 3.0), (200, 2.0), (300, 1.0)]
    assert steps_to_target(curve, 2.0) == 200
    assert steps_to_target(curve, 2.5) == 200
    assert steps_to_target(curve, 2.5, interpolate=True) == pytest.approx(150.0)
    assert steps_to_target(curve, 1.25, interpolate=True) == pytest.approx(275.0)
    assert steps_to_target(curve, 3.5, interpolate=True) == 100  # first point already below: nothing to interpolate
    assert steps_to_target(curve, 0.5) is None


def test_bootstrap_ratio_exact_small_case():
    # baseline means in {20, 25, 30}, estimator means in {10, 15, 20}: the ratio's 2.5% / 97.5% quantiles are the
    # smallest (1.0, probability 1/16) and largest (3.0, probability 1/16) values.
    lo, hi = bootstrap_ratio_ci([20, 30], [10, 20])
    assert (lo, hi) == (1.0, 3.0)
    assert bootstrap_ratio_ci([20, 30], [10, 20]) == (lo, hi)  # fixed RNG
    assert bootstrap_ratio_ci([5, 5, 5], [2, 2]) == (2.5, 2.5)


def test_mean_curve_common_updates():
    steps, mean, lo, hi = mean_curve([[(10, 4.0), (20, 2.0), (30, 3.0)], [(10, 2.0), (20, 1.0)]])
    assert steps == [10, 20] and mean == [3.0, 1.5] and lo == [2.0, 1.0] and hi == [4.0, 2.0]


def test_summarize_hand_built_study(study):
    runs = [load_run(p) for p in discover([study])]
    c = summarize(runs)
    assert c.baseline == "topk" and c.target == 2.0 and "baseline topk" in c.target_source
    base, sm = c.groups
    assert base.estimator == "topk" and sm.estimator == "sparsemixer" and base.seeds == (1, 2)
    # best: [2, 1]; final: [3, 1]; t(0.975, 1) = 12.7062
    assert base.best.mean == 1.5 and base.best.hi == pytest.approx(1.5 + 12.706204736 * math.sqrt(0.5) / math.sqrt(2))
    assert base.final.mean == 2.0 and sm.final.mean == 1.0 and sm.best.mean == 1.0
    assert base.steps == (20.0, 30.0) and sm.steps == (20.0, 10.0)
    assert base.steps_ci.mean == 25.0 and sm.steps_ci.mean == 15.0
    assert base.speedup == 1.0 and base.speedup_lo is None
    assert sm.speedup == pytest.approx(5 / 3) and (sm.speedup_lo, sm.speedup_hi) == (1.0, 3.0)
    assert base.bleu_tok.mean == 21.0 and base.sacrebleu.mean == 20.0 and sm.bleu_tok is None
    # tokens/s: per run mean of train wps (200, 400) then over seeds; wall: last logged (100, 300)
    assert base.wps.mean == 300.0 and base.wall.mean == 200.0
    assert base.load["moe_load_enc0_e0"] == 0.5 and len(base.load) == 8
    assert base.curve[0] == [10, 20, 30] and base.curve[1] == [4.0, 2.5, 2.0]


def test_summarize_explicit_target_interpolated_and_unreached(study):
    runs = [load_run(p) for p in discover([study])]
    c = summarize(runs, target=1.5, interpolate=True)
    base, sm = c.groups
    assert base.steps == (None, 27.5)  # seed 1 never <= 1.5; seed 2: 3.0 at 20 -> 1.0 at 30: 20 + 1.5/2 * 10
    assert sm.steps == (25.0, 15.0)
    assert base.speedup is None and "not every seed" in base.speedup_note and sm.speedup is None
    assert base.reached == 1 and base.steps_ci.mean == 27.5


def test_summarize_other_metric_and_no_baseline(study):
    runs = [load_run(p) for p in discover([study]) if "sm-" in p.name]
    c = summarize(runs, metric="valid_nll_loss")
    assert c.target is None and c.baseline is None and c.groups[0].best.mean == 0.5
    assert any("baseline topk not among" in n for n in c.notes)
    with pytest.raises(ValueError, match="--baseline 'topk'"):
        summarize(runs, require_baseline=True)
    with pytest.raises(ValueError, match="no run has valid_bleu"):
        summarize(runs, metric="valid_bleu")
    with pytest.raises(ValueError, match="--metric"):
        summarize(runs, metric="loss")


def test_bootstrap_matches_numpy_definition():
    a, b = [100.0, 120.0, 90.0], [60.0, 50.0, 70.0]
    rng = np.random.default_rng(0)
    ra = np.asarray(a)[rng.integers(0, 3, size=(10_000, 3))].mean(1)
    rb = np.asarray(b)[rng.integers(0, 3, size=(10_000, 3))].mean(1)
    assert bootstrap_ratio_ci(a, b) == tuple(np.quantile(ra / rb, [0.025, 0.975]))


def test_notes_and_epoch_end_entries(tmp_path):
    import json

    from compare_helpers import write_run

    a = write_run(tmp_path, "a", "topk", 1, [(10, 3.0), (20, 2.0)], wps=[100.0, 200.0])
    write_run(tmp_path, "b", "topk", 1, [(10, 3.0)], status="running")
    with open(a / "metrics.jsonl", "a") as f:  # an end-of-epoch average (skipped by smx.run.metrics.read) and a repeat
        end = {"step": 20, "split": "train", "epoch": 1, "epoch_end": True, "loss": 1.0, "wps": 1e6}
        f.write(json.dumps(end) + "\n")
        f.write(json.dumps({"step": 20, "split": "valid", "epoch": 1, "loss": 1.5}) + "\n")  # resumed: later wins
    runs = [load_run(p) for p in discover([tmp_path])]
    assert runs[0].wps() == 150.0 and runs[0].curve("valid_loss") == [(10, 3.0), (20, 1.5)]
    c = summarize(runs)
    assert any("several runs with seed(s) [1]" in n for n in c.notes)
    assert any("not finished: b (running)" in n for n in c.notes)
