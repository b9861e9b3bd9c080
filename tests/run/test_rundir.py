"""smx.run.paths: create (never overwrite), resume checks, lock (second writer refused, stale lock taken over),
snapshot (recipe.yaml / recipe.orig.yaml / meta.json) and checkpoint hashes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from smx.recipe import recipes
from smx.run import paths as rundir
from smx.run import lock as runlock
from smx.errors import UserError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny.yaml"


def test_run_name_and_default_path():
    r = recipes.load(TINY, ["seed=4"], estimator="topk")
    assert rundir.run_name(r) == "tiny-topk-s4"
    assert rundir.default_path(r, "somewhere") == Path("somewhere/tiny-topk-s4")


def test_create_never_overwrites(tmp_path: Path):
    run = rundir.create(tmp_path / "a" / "b")
    assert run.checkpoints.is_dir() and run.tb.is_dir() and run.eval.is_dir()
    (run.path / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="already exists"):
        rundir.create(run.path)
    assert (run.path / "keep.txt").read_text() == "x"


def test_check_resume(tmp_path: Path):
    with pytest.raises(UserError, match="no such run directory"):
        rundir.check_resume(tmp_path / "nope")
    run = rundir.create(tmp_path / "r")
    with pytest.raises(UserError, match="no recipe.yaml"):
        rundir.check_resume(run.path)
    run.recipe.write_text("x")
    # no checkpoint: a run that stopped before its first save restarts in place; a done one has nothing to resume
    assert rundir.check_resume(run.path) == run and rundir.resume_point(run) is None
    run.meta.write_text(json.dumps({"name": "r", "status": "done"}))
    with pytest.raises(UserError, match="checkpoint_last.pt"):
        rundir.check_resume(run.path)
    (run.checkpoints / "checkpoint_best.pt").write_bytes(b"x")
    assert rundir.check_resume(run.path) == run and rundir.resume_point(run) == "checkpoint_best.pt"
    run.last_checkpoint.write_bytes(b"x")
    assert rundir.check_resume(run.path) == run and rundir.resume_point(run) == "checkpoint_last.pt"


def test_never_trained_directories_are_made_again(tmp_path: Path):
    run = rundir.create(tmp_path / "r")
    run.recipe.write_text("x")
    (run.path / "train.log").write_text("# smx 2026-01-01T00:00:00+00:00: python -m fairseq_cli.train\n")
    assert rundir.never_trained(run.path)
    rundir.clear_skeleton(run.path)
    assert not run.path.exists()
    run = rundir.create(tmp_path / "r")
    (run.path / "train.log").write_text("# smx x: y\n2026-01-01 | INFO | fairseq_cli.train | model\n")
    assert not rundir.never_trained(run.path)  # the engine started: a resume, never a re-create
    (run.path / "train.log").unlink()
    (run.checkpoints / "checkpoint_best.pt").write_bytes(b"x")
    assert not rundir.never_trained(run.path)
    (run.checkpoints / "checkpoint_best.pt").unlink()
    (run.path / "notes.txt").write_text("mine")
    assert not rundir.never_trained(run.path)  # anything smx did not write keeps the directory


def test_lock_refuses_second_writer(tmp_path: Path):
    lock_path = tmp_path / "run.lock"
    with runlock.Lock(lock_path) as lock:
        owner = json.loads(lock_path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(UserError, match=f"in use by pid {os.getpid()}"):
            runlock.Lock(lock_path).acquire()
        assert lock.held
    assert not lock_path.exists()


def test_stale_lock_of_dead_process_taken_over(tmp_path: Path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    lock_path = tmp_path / "run.lock"
    lock_path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "then"}))
    warnings: list[str] = []
    with runlock.Lock(lock_path, warn=warnings.append):
        assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    assert len(warnings) == 1 and f"stale lock of dead process {pid}" in warnings[0]


def test_lock_of_another_host_refused(tmp_path: Path):
    lock_path = tmp_path / "run.lock"
    lock_path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "then"}))
    with pytest.raises(UserError, match="on host elsewhere"):
        runlock.Lock(lock_path).acquire()
    assert json.loads(lock_path.read_text())["host"] == "elsewhere"


def test_snapshot_and_meta(tmp_path: Path):
    recipe = recipes.load(TINY, ["seed=2"])
    run = rundir.create(tmp_path / "r")
    orig = TINY.read_text()
    meta = rundir.snapshot(run, recipe, orig, ["smx", "train", "x"], extra={"device": "cpu"})
    assert recipes.loads(run.recipe.read_text()) == recipe
    assert run.recipe_orig.read_text() == orig  # verbatim, comments kept
    on_disk = json.loads(run.meta.read_text())
    assert on_disk == meta
    for key in ("name", "status", "task", "dataset", "estimator", "seed", "start", "end", "versions", "git_sha",
                "host", "argv"):
        assert key in meta, key
    assert meta["status"] == "running" and meta["seed"] == 2 and meta["estimator"] == "sparsemixer"
    assert set(meta["versions"]) == {"smx", "torch", "fairseq", "python"} and meta["versions"]["torch"]
    # a resume appends, keeps the original text and the start time
    rundir.update_meta(run, status="interrupted")
    again = rundir.snapshot(run, recipe, "changed", ["smx", "train", "--resume", "r"], resumed=True)
    assert run.recipe_orig.read_text() == orig and again["start"] == meta["start"]
    assert again["status"] == "running" and again["resumes"][0]["argv"][-2:] == ["--resume", "r"]


def test_checksums(tmp_path: Path):
    (tmp_path / "checkpoint_last.pt").write_bytes(b"last")
    (tmp_path / "checkpoint_best.pt").write_bytes(b"best")
    sums = rundir.write_checksums(tmp_path)
    assert set(sums) == {"checkpoint_last.pt", "checkpoint_best.pt"}
    text = (tmp_path / "SHA256SUMS").read_text()
    assert text.splitlines()[0] == f"{sums['checkpoint_best.pt']}  checkpoint_best.pt"  # sha256sum -c format
    assert rundir.verify_checksums(tmp_path) == []
    (tmp_path / "checkpoint_best.pt").write_bytes(b"tampered")
    assert rundir.verify_checksums(tmp_path) == ["checkpoint_best.pt: sha256 mismatch"]
