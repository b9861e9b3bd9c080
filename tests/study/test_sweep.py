"""`smx sweep`: grid planning, resumability (skip done, resume unfinished, start missing), refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import smx.run.train
import smx.study.parallel
from smx.cli import run as cli
from smx.study.sweep import cell_action

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"


def _run_dir(root: Path, name: str, status: str | None, checkpoint: bool, recipe: bool = True) -> Path:
    d = root / name
    (d / "checkpoints").mkdir(parents=True)
    if recipe:
        (d / "recipe.yaml").write_text(RECIPE.read_text())
    if status:
        (d / "meta.json").write_text(json.dumps({"name": name, "status": status}))
    if checkpoint:
        (d / "checkpoints" / "checkpoint_last.pt").write_bytes(b"x")
    return d


@pytest.fixture
def fake_train(monkeypatch):
    calls = []

    def train(req, console=None):
        calls.append(req)
        if req.resume is not None:
            path = Path(req.resume)
        else:
            path = Path(req.runs_root) / f"tiny-{req.estimator}-s{req.seed}"
            path.mkdir(parents=True)
        (path / "meta.json").write_text(json.dumps({"status": "done"}))
        return "done"
    monkeypatch.setattr(smx.run.train, "run", train)
    return calls


def test_sweep_skips_done_resumes_unfinished_starts_missing(tmp_path, fake_train, capsys):
    study = tmp_path / "study"
    _run_dir(study, "tiny-topk-s1", "done", True)
    _run_dir(study, "tiny-topk-s2", "interrupted", True)
    _run_dir(study, "tiny-sparsemixer-s1", "failed", False, recipe=False)  # not a run: blocked, never overwritten
    (study / "tiny-sparsemixer-s1" / "notes.txt").write_text("mine")
    args = ["sweep", str(RECIPE), "--estimators", "topk,sparsemixer", "--seeds", "1,2", "--study-dir", str(study),
            "--set", "train.max_update=10"]
    assert cli([*args, "--dry-run"]) == 0 and not fake_train
    assert cli(args) == 1  # the blocked run makes the sweep incomplete
    assert [(c.resume, c.estimator, c.seed, c.recipe_path) for c in fake_train] == [
        (study / "tiny-topk-s2", None, None, None), (None, "sparsemixer", 2, RECIPE)]
    assert all(c.runs_root == study and c.overrides == ("train.max_update=10",) for c in fake_train)
    err = capsys.readouterr().err
    assert "tiny-topk-s1: skipped (done)" in err and "blocked" in err and f"smx compare {study}" in err
    meta = json.loads((study / "study.json").read_text())
    assert meta["estimators"] == ["topk", "sparsemixer"] and meta["seeds"] == [1, 2]
    assert meta["overrides"] == ["train.max_update=10"] and meta["recipe_name"] == "tiny"
    # second call: everything done except the blocked run; nothing is trained again
    fake_train.clear()
    assert cli(args) == 1 and not fake_train


def test_sweep_all_new_then_rerun_skips(tmp_path, fake_train):
    study = tmp_path / "s"
    args = ["sweep", str(RECIPE), "--estimators", "topk", "--seeds", "3", "--study-dir", str(study)]
    assert cli(args) == 0 and [(c.estimator, c.seed) for c in fake_train] == [("topk", 3)]
    assert cli(args) == 0 and len(fake_train) == 1


def test_sweep_stops_at_interrupt(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(smx.run.train, "run", lambda req, console=None: calls.append(req) or "interrupted")
    assert cli(["sweep", str(RECIPE), "--estimators", "topk,sparsemixer", "--seeds", "1",
                "--study-dir", str(tmp_path / "s")]) == 130
    assert len(calls) == 1


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "1,x"], "--seeds: expected comma-separated integers"),
    (["--seeds", "1,1"], "--seeds: duplicate"),
    (["--estimators", "topk,nope"], "unknown estimator 'nope'"),
    (["--set", "seed=4"], "--set seed=4: the sweep sets seed itself"),
    (["--set", "optim.nope=1"], "optim.nope"),
])
def test_sweep_bad_input_writes_nothing(tmp_path, fake_train, capsys, extra, message):
    study = tmp_path / "s"
    args = ["sweep", str(RECIPE), "--estimators", "topk", "--seeds", "1", "--study-dir", str(study)]
    for i in range(0, len(extra), 2):
        if extra[i] in args:
            args[args.index(extra[i]) + 1] = extra[i + 1]
        else:
            args += extra[i:i + 2]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not study.exists() and not fake_train


def test_sweep_refuses_other_study(tmp_path, fake_train, capsys):
    study = tmp_path / "s"
    study.mkdir()
    (study / "study.json").write_text(json.dumps({"recipe_name": "tiny", "overrides": ["optim.lr=0.1"]}))
    assert cli(["sweep", str(RECIPE), "--estimators", "topk", "--study-dir", str(study)]) == 2
    assert "holds the study of recipe 'tiny' with overrides ['optim.lr=0.1']" in capsys.readouterr().err
    assert not fake_train


def test_sweep_resumes_a_run_that_died_before_its_first_checkpoint_and_restarts_a_never_trained_one(tmp_path):
    died = _run_dir(tmp_path, "died", "failed", False)  # recipe.yaml, no checkpoint: train --resume restarts it
    half = _run_dir(tmp_path, "half", None, False, recipe=False)  # only the skeleton create() makes
    best = _run_dir(tmp_path, "best", "interrupted", False)
    (best / "checkpoints" / "checkpoint_best.pt").write_bytes(b"x")
    assert [cell_action(p) for p in (died, half, best)] == ["resume", "start", "resume"]


def test_sweep_overrides_are_checked_with_the_swept_estimators_not_the_recipe_default(tmp_path, fake_train,
                                                                                     monkeypatch):
    # tiny.yaml's own estimator is sparsemixer, which loss-free balancing does not take; topk does
    args = ["sweep", str(RECIPE), "--estimators", "topk", "--seeds", "1", "--study-dir", str(tmp_path / "s"),
            "--set", "moe.balance=loss_free", "--set", "moe.balance_weight=0"]
    assert cli(args) == 0 and [c.estimator for c in fake_train] == ["topk"]
    prepared = []
    monkeypatch.setattr(smx.run.train, "data_dir", lambda recipe, console=None: prepared.append(recipe))
    monkeypatch.setattr(smx.study.parallel.subprocess, "Popen", lambda *a, **k: (_ for _ in ()).throw(SystemExit))
    with pytest.raises(SystemExit):  # --jobs 2: the dataset is prepared with the swept estimator's recipe first
        cli([*args[:6], "--study-dir", str(tmp_path / "p"), *args[8:], "--jobs", "2"])
    assert prepared and prepared[0].router.estimator == "topk"
    both = ["sweep", str(RECIPE), "--estimators", "topk,sparsemixer", "--seeds", "1", "--study-dir",
            str(tmp_path / "t"), "--set", "moe.balance=loss_free", "--set", "moe.balance_weight=0"]
    fake_train.clear()
    assert cli(both) == 2 and not fake_train  # sparsemixer cannot: the whole grid is refused before anything runs
