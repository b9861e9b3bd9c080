"""The demo and study recipes train end to end (shortened, on the synthetic data), and a wall-clock budget stops a run
cleanly: status done, a last validation, a checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from smx.errors import UserError
from smx.recipe import recipes
from smx.run import metrics


def _records(run: Path) -> list[dict]:
    return metrics.read(run / "metrics.jsonl")  # epoch-end averages left out


@pytest.mark.parametrize("recipe, dataset, extra", [
    ("ding_switch.yaml", "synthetic-mt", ["data.source_lang=src", "data.target_lang=tgt",
                                          "model.share_all_embeddings=false"]),
    ("shakespeare_lm.yaml", "synthetic-lm", ["data.tokens_per_sample=32"]),
])
def test_study_recipe_trains_shortened(train, tmp_path, recipe, dataset, extra):
    sets = [f"data.dataset={dataset}", "train.max_update=4", "train.validate_interval_updates=2",
            "train.save_interval_updates=2", "train.log_interval=1", *extra]
    assert train(recipe, "--estimator", "topk", *[x for s in sets for x in ("--set", s)]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "done" and meta["estimator"] == "topk"
    recs = _records(run)
    valid = [r for r in recs if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [2, 4] and all(math.isfinite(r["loss"]) for r in valid)
    assert max(r["step"] for r in recs if r["split"] == "train") == 4


def test_wall_clock_budget_stops_cleanly(train, tmp_path):
    # 0.002 min = 0.12 s: fairseq's stop-time check fires after the first update or so, long before max_update
    assert train("tiny.yaml", "--set", "train.max_update=500", "--set", "train.max_wall_minutes=0.002",
                 "--set", "train.log_interval=1") == 0
    (run,) = (tmp_path / "runs").iterdir()
    argv = (run / "fairseq_argv.txt").read_text()
    assert "--stop-time-hours" in argv and repr(0.002 / 60) in argv
    assert json.loads((run / "meta.json").read_text())["status"] == "done"
    recs = _records(run)
    last = max(r["step"] for r in recs if r["split"] == "train")
    assert 1 <= last < 500
    assert [r["step"] for r in recs if r["split"] == "valid"][-1] == last  # validated where it stopped
    assert (run / "checkpoints" / "checkpoint_last.pt").is_file()


def test_wall_clock_budget_alone_is_a_stopping_rule():
    base = "name: x\ntask: translation\ndata: {dataset: synthetic-mt}\ntrain: {max_update: 0, max_wall_minutes: %s}\n"
    assert recipes.loads(base % 5).train.max_wall_minutes == 5
    with pytest.raises(UserError, match="max_wall_minutes"):
        recipes.loads(base % 0)
    with pytest.raises(UserError, match="max_wall_minutes"):
        recipes.loads(base % -1)


def test_linear_decay_schedule_reaches_end_lr_at_max_update(train, tmp_path):
    """optim.scheduler=polynomial_decay: linear warm-up to lr over warmup_updates, then linear decay to end_lr at
    train.max_update (fairseq's total_num_update): lr(u) = end + (lr - end) * (1 - (u - w) / (N - w))."""
    sets = ["optim.scheduler=polynomial_decay", "optim.lr=1e-3", "optim.end_lr=1e-4", "optim.warmup_updates=2",
            "train.max_update=6", "train.log_interval=1"]
    assert train("tiny.yaml", *[x for s in sets for x in ("--set", s)]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    lrs = {r["step"]: r["lr"] for r in _records(run) if r["split"] == "train" and "lr" in r}
    # fairseq logs the lr used for the update just taken; set after update u for update u+1
    expected = {1: 5e-4, 2: 1e-3, 3: 1e-3 - 0.9e-3 / 4, 4: 1e-3 - 2 * 0.9e-3 / 4, 5: 1e-3 - 3 * 0.9e-3 / 4,
                6: 1e-4}
    assert set(lrs) >= set(expected)
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr, rel=1e-3), (step, lrs)


def test_linear_decay_needs_max_update():
    text = ("name: x\ntask: translation\ndata: {dataset: synthetic-mt}\noptim: {scheduler: polynomial_decay}\n"
            "train: {max_update: 0, max_epoch: 3}\n")
    with pytest.raises(UserError, match="polynomial_decay decays to optim.end_lr at train.max_update"):
        recipes.loads(text)
