"""kill -9 during training then `smx train --resume`, and determinism (slow: real engine runs on CPU).

Setting: recipes/tiny.yaml, seed 3, 48 updates (3 epochs of 16), a checkpoint and a validation every 8 updates,
train metrics logged every 8 updates. Every checkpoint (interval or epoch end) then falls on a logging boundary.
That matters for one fairseq detail: a checkpoint saved mid-epoch carries the running train averages and a resume
restores them, but fairseq resets them when it resumes from an epoch's end; so after a resume from an epoch end that
is not a multiple of log_interval, the first train entry averages fewer updates than in an uninterrupted run (the
model, its validation and every later entry are still identical).

Tolerance: none. On CPU the same seed gives bit-identical numbers in metrics.jsonl (fairseq reseeds every update
from seed + update number, and "D:D" rebuilds every epoch's batches from the seed), resumed or not; only the
wall-clock fields differ: wall, engine_wall, wps, ups, train_wall (rel_helpers.WALL_CLOCK).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rel_helpers import (TINY, WALL_CLOCK, comparable, dead, raw_keys, saved_updates, sigkill,
                         smx_process, wait_for)

from smx.run import metrics
from smx.engine import procfs
from smx.run import paths as rundir
from smx.cli import run as cli

pytestmark = pytest.mark.slow
SETTINGS = ["--seed", "3", "--set", "train.max_update=48", "--set", "train.log_interval=8",
            "--set", "train.save_interval_updates=8", "--set", "train.validate_interval_updates=8", "--no-progress"]


def train_args(run_dir: Path, data_root: Path) -> list[str]:
    return ["train", str(TINY), "--run-dir", str(run_dir), "--set", f"data.root={data_root}", *SETTINGS]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root: Path) -> Path:
    """One uninterrupted run, shared by the tests of this module."""
    path = tmp_path_factory.mktemp("reference") / "run"
    assert cli(train_args(path, data_root)) == 0
    return path


def expected_keys() -> set[tuple]:
    train = {("train", None, False, s) for s in range(8, 49, 8)}
    valid = {("valid", None, False, s) for s in range(8, 49, 8)}
    epoch_ends = {("train", None, True, s) for s in (16, 32, 48)}
    return train | valid | epoch_ends


def test_same_seed_twice_gives_identical_metrics(reference: Path, data_root: Path, tmp_path: Path):
    again = tmp_path / "again"
    assert cli(train_args(again, data_root)) == 0
    a = [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK}
         for line in (reference / "metrics.jsonl").read_text().splitlines()]
    b = [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK}
         for line in (again / "metrics.jsonl").read_text().splitlines()]
    assert set(raw_keys(reference / "metrics.jsonl")) == expected_keys()
    assert a == b  # line for line, every field but the wall-clock ones


def test_kill_9_then_resume_matches_uninterrupted_run(reference: Path, data_root: Path, tmp_path: Path, capsys):
    run_dir = tmp_path / "killed"
    proc = smx_process(train_args(run_dir, data_root))
    log = run_dir / "train.log"
    try:
        assert wait_for(lambda: any(u >= 16 for u in saved_updates(log)), 240, proc), proc.communicate()
        engine = procfs.children(proc.pid)
        assert len(engine) == 1, engine
        sigkill(proc.pid)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = max(saved_updates(log))
    # the engine does not train on as an orphan
    assert wait_for(lambda: dead(engine[0]), 15), f"engine {engine[0]} survived smx"
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "running" and (run_dir / "run.lock").is_file()  # what a kill -9 leaves
    assert rundir.verify_checksums(run_dir / "checkpoints") == []  # every checkpoint on disk has its hash
    assert killed_at < 48, "the run finished before it could be killed"

    capsys.readouterr()
    assert cli(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "took over the stale lock of dead process" in err
    log_text = log.read_text()
    loaded = [e.updates for e in map(metrics.parse_event, log_text.splitlines()) if e and e.kind == "loaded"]
    assert len(loaded) == 1 and 16 <= loaded[0] <= killed_at

    keys = raw_keys(run_dir / "metrics.jsonl")
    assert len(keys) == len(set(keys)), "an update number appears twice in metrics.jsonl"
    assert set(keys) == expected_keys(), "an update number is missing from metrics.jsonl"
    ref, got = comparable(metrics.read(reference / "metrics.jsonl", epoch_end=True)), \
        comparable(metrics.read(run_dir / "metrics.jsonl", epoch_end=True))
    diffs = {k: {f: (ref[k].get(f), got[k].get(f)) for f in set(ref[k]) | set(got[k])
                 if f not in ("recovered",) and ref[k].get(f) != got[k].get(f)} for k in ref}
    largest = max((abs(a - b) for d in diffs.values() for a, b in d.values()
                   if isinstance(a, float) and isinstance(b, float)), default=0.0)
    print(f"killed after the checkpoint at update {killed_at}, resumed from update {loaded[0]}; "
          f"largest |difference| to the uninterrupted run over all non-wall-clock fields: {largest}")
    assert all(not d for d in diffs.values()), {k: d for k, d in diffs.items() if d}

    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "done" and meta["crashes"] == 1 and not (run_dir / "run.lock").exists()
    assert meta["resumes"][0]["previous_status"] == "running" and meta["resumes"][0]["trusted"] is False
    assert rundir.verify_checksums(run_dir / "checkpoints") == []
    walls = [e["wall"] for e in metrics.read(run_dir / "metrics.jsonl", split="train")]
    assert walls == sorted(walls)
