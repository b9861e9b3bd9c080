"""Run directories: never overwritten, one writer at a time (stale and reused-pid locks taken over), and the metrics
of a run killed at the worst moment made whole again on resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smx.run import session as engine_run
from smx.run import metrics
from smx.engine import procfs
from smx.run import paths as rundir
from smx.run import lock as runlock
from smx.errors import UserError


def write_lock(path: Path, pid: int, host: str | None = None, started: int | None = None) -> Path:
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "since": "then",
                                "started": started}))
    return path


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_run_dir_is_never_overwritten(tmp_path: Path):
    run = rundir.create(tmp_path / "r")
    (run.path / "keep").write_text("x")
    with pytest.raises(UserError, match="already exists"):
        rundir.create(run.path)
    with pytest.raises(UserError, match="already exists"):
        rundir.check_new(run.path)
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="already exists"):
        rundir.create(tmp_path / "link")  # a dangling symlink is not a free name either
    assert (run.path / "keep").read_text() == "x"


def test_a_second_writer_is_refused_and_the_lock_left_alone(tmp_path: Path):
    lock = tmp_path / "run.lock"
    with runlock.Lock(lock):
        text = lock.read_text()
        owner = json.loads(text)
        assert owner["pid"] == os.getpid() and owner["started"] == procfs.process_start(os.getpid())
        for attempt in (runlock.Lock(lock).acquire, runlock.Lock(lock).check_free):
            with pytest.raises(UserError, match=f"in use by pid {os.getpid()} on host {socket.gethostname()}"):
                attempt()
        assert lock.read_text() == text
    assert not lock.exists()


def test_a_lock_of_another_host_is_never_taken(tmp_path: Path):
    lock = write_lock(tmp_path / "run.lock", 1, host="elsewhere")
    with pytest.raises(UserError, match="on host elsewhere"):
        runlock.Lock(lock).acquire()
    assert json.loads(lock.read_text())["host"] == "elsewhere"


@pytest.mark.parametrize("owner", ["dead pid", "reused pid", "unreadable"])
def test_stale_lock_after_a_crash_is_taken_over(tmp_path: Path, owner: str):
    lock = tmp_path / "run.lock"
    if owner == "dead pid":
        pid = dead_pid()
        write_lock(lock, pid, started=12345)
    elif owner == "reused pid":  # a live process with the pid, but not the one that took the lock
        pid = os.getppid()
        write_lock(lock, pid, started=(procfs.process_start(pid) or 0) + 1)
    else:  # a crash while the lock was being written
        pid = -1
        lock.write_text('{"pid": 12')
        old = time.time() - 60
        os.utime(lock, (old, old))
    warnings: list[str] = []
    runlock.Lock(lock).check_free()
    with runlock.Lock(lock, warn=warnings.append):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert len(warnings) == 1 and f"took over the stale lock of dead process {pid}" in warnings[0]


def test_a_live_owner_with_its_own_start_time_keeps_the_lock(tmp_path: Path):
    pid = os.getppid()
    lock = write_lock(tmp_path / "run.lock", pid, started=procfs.process_start(pid))
    with pytest.raises(UserError, match=f"in use by pid {pid}"):
        runlock.Lock(lock).acquire()


# ------------------------------------------------------------------------------------- metrics after a kill -9
def _line(tag: str, step: int, loss: float, epoch: int = 1) -> str:
    if tag == "train_inner":
        stats = {"epoch": epoch, "loss": f"{loss}", "ppl": "9", "num_updates": str(step), "wall": "3"}
    else:
        stats = {"epoch": epoch, "valid_loss": f"{loss}", "valid_ppl": "9", "valid_num_updates": str(step)}
    return f"2026-11-23 15:56:51 | INFO | {tag} | {json.dumps(stats)}\n"


def test_resume_keeps_recovers_and_drops_metrics(tmp_path: Path):
    """The killed session had logged updates 8, 16 (+ validation) and 24 to train.log, smx had written only update
    8 and half a line to metrics.jsonl, the last checkpoint is at update 16. Resuming from it must leave 8 and 16
    (train and valid) exactly once each, recovered from train.log, and nothing after 16."""
    run = rundir.create(tmp_path / "r")
    log = ("# smx session 1\n" + _line("train_inner", 8, 5.0) + _line("train_inner", 16, 4.0)
           + _line("valid", 16, 4.5) + "... | INFO | fairseq.checkpoint_utils | Saved checkpoint x (epoch 1 @ 16 "
           "updates, score 4.5) (writing took 0.1 seconds)\n" + _line("train_inner", 24, 3.0))
    run.log.write_text(log + "# smx session 2\n")
    kept = metrics.parse_line(_line("train_inner", 8, 5.0), 1.5)
    run.metrics.write_text(metrics.dumps(kept) + "\n" + '{"step": 16, "split": "tr')
    wall = engine_run._resume_metrics(run, 16, len(log.encode()))
    entries = [json.loads(x) for x in run.metrics.read_text().splitlines()]
    assert [(e["split"], e["step"], e.get("recovered", False)) for e in entries] == [
        ("train", 8, False), ("train", 16, True), ("valid", 16, True)]
    assert entries[1]["loss"] == 4.0 and entries[2]["loss"] == 4.5 and wall == 1.5
    assert all(e["wall"] == 1.5 for e in entries)  # recovered: the wall reached (a lower bound)


def test_nonfinite_lines_are_recognized():
    line = '2026-11-23 16:51:08 | ERROR | smx.fairseq_plugin.guards | SMX_NONFINITE {"update": 37, "split": ' \
           '"train", "what": "loss", "value": "nan"}'
    assert metrics.parse_nonfinite(line) == {"update": 37, "split": "train", "what": "loss", "value": "nan"}
    assert metrics.parse_nonfinite("FloatingPointError: Minimum loss scale reached (0.0001).")["what"] == \
        "Minimum loss scale reached (0.0001)."
    assert metrics.parse_nonfinite("2026 | INFO | train_inner | {}") is None
    failure = engine_run.nonfinite_failure({"update": 5, "split": "valid", "what": "loss", "value": "inf"}, None,
                                           rundir.RunDir(Path("/nowhere")))
    assert failure["message"] == ("non-finite loss (inf) in validation after update 5: training stopped, "
                                  "no checkpoint had been saved; run marked failed")


def test_fairseq_floating_point_error_is_reported_with_its_update(monkeypatch, caplog):
    """fairseq's own NaN handling (non-finite gradients, "Minimum loss scale reached") raises FloatingPointError
    from Trainer.train_step; the plugin's wrapper logs the SMX_NONFINITE line naming the update, then re-raises."""
    import smx.fairseq_plugin.guards as guards
    from fairseq.trainer import Trainer

    def original(self, samples, raise_oom=False):
        raise FloatingPointError("Minimum loss scale reached (0.0001). Your loss is probably exploding.")

    monkeypatch.setattr(Trainer, "train_step", original)
    monkeypatch.setattr(Trainer, "valid_step", lambda self, sample, raise_oom=False: None)
    guards._install_trainer_hooks(None, None)

    class FakeTrainer:
        _criterion = type("C", (), {})()

        def get_num_updates(self):
            return 41

    with caplog.at_level("ERROR", logger="smx.fairseq_plugin.guards"), pytest.raises(FloatingPointError):
        Trainer.train_step(FakeTrainer(), [])
    (line,) = [r.getMessage() for r in caplog.records if "SMX_NONFINITE" in r.getMessage()]
    bad = metrics.parse_nonfinite(line)
    assert bad == {"update": 42, "split": "train", "what": "gradients",
                   "value": "Minimum loss scale reached (0.0001). Your loss is probably exploding."}
    message = engine_run.nonfinite_failure(bad, None, rundir.RunDir(Path("/nowhere")))["message"]
    assert message == ("non-finite gradients (fairseq: Minimum loss scale reached (0.0001). Your loss is probably "
                       "exploding.) at update 42: training stopped, no checkpoint had been saved; run marked failed")


def test_procfs_sees_a_child_its_state_and_its_start_time():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in procfs.children(os.getpid())
        assert procfs.state(child.pid) in ("R", "S")
        assert procfs.process_start(child.pid) >= procfs.process_start(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert child.pid not in procfs.children(os.getpid())
    assert procfs.state(child.pid) is None and procfs.process_start(child.pid) is None


def test_resume_of_a_done_run_is_a_no_op_with_one_line(tmp_path: Path, data_root: Path, capsys):
    """--resume on a finished run trains nothing and writes nothing (before: one more update each time)."""
    from rel_helpers import TINY, fake_run, tree_state
    from smx.cli import run as cli

    path = fake_run(tmp_path / "r", TINY, [f"data.root={data_root}"])
    before = tree_state(tmp_path)
    assert cli(["train", "--resume", str(path), "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"--resume {path}: the run is done (train.max_update=60); nothing to resume (a larger "
                   "train.max_update, max_epoch or max_wall_minutes extends it)"]
    assert tree_state(tmp_path) == before


def test_resume_of_a_done_run_with_a_larger_budget_says_it_extends(tmp_path: Path, data_root: Path):
    from rel_helpers import TINY, fake_run
    from smx.run import train as training

    path = fake_run(tmp_path / "r", TINY, [f"data.root={data_root}"])
    plan = training.plan(training.TrainRequest(resume=path, overrides=("train.max_update=90",), trust_checkpoint=True))
    assert plan.finished is None
    assert f"--resume {path}: the run is done (train.max_update=60); extending it to train.max_update=90" in plan.notes
