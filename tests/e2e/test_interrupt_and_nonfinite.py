"""Ctrl-C saves a checkpoint and marks the run interrupted; a NaN/inf loss stops the run, names the update, keeps the
last good checkpoint and marks the run failed (slow: real engine runs on CPU)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Callable

import pytest
from rel_helpers import TINY, act_after_first_save, saved_updates, smx_process

from smx.run import metrics
from smx.engine import procfs
from smx.run import paths as rundir
from smx.cli import run as cli

pytestmark = pytest.mark.slow


def _train_until_first_save_then(run_dir: Path, args: list[str], act: Callable[[subprocess.Popen], None]):
    """Start `smx train` (endless), wait for its first checkpoint, call act(proc), wait for the end: (proc, err)."""
    proc = smx_process(["train", str(TINY), "--run-dir", str(run_dir), "--set", "train.max_update=100000",
                        "--no-progress", *args])
    return proc, act_after_first_save(proc, run_dir, act)


def test_sigint_saves_a_checkpoint_then_resume_continues_from_it(data_root: Path, tmp_path: Path, capsys):
    run_dir = tmp_path / "int"
    log = run_dir / "train.log"

    def second_writer_then_sigint(proc: subprocess.Popen) -> None:
        assert saved_updates(log)[0] == 16  # first save: epoch end
        # a second writer is refused while the first one runs (and leaves the first one's lock alone)
        lock_before = (run_dir / "run.lock").read_text()
        assert cli(["train", "--resume", str(run_dir), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"is in use by pid {proc.pid} on host {socket.gethostname()}" in err and len(err.splitlines()) == 1
        assert (run_dir / "run.lock").read_text() == lock_before
        proc.send_signal(signal.SIGINT)

    proc, err = _train_until_first_save_then(run_dir, ["--set", f"data.root={data_root}"], second_writer_then_sigint)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "training interrupted" in err
    text = log.read_text()
    assert "smx: SIGINT received: saving checkpoint_last.pt after update" in text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    stopped = saved_updates(log)[-1]
    assert stopped > 16
    train_steps = [e["step"] for e in metrics.read(run_dir / "metrics.jsonl", split="train")]
    assert max(train_steps) <= stopped
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["end"] and meta["exit_code"] == 0
    assert not (run_dir / "run.lock").exists()
    assert rundir.verify_checksums(run_dir / "checkpoints") == []
    assert rundir.verify_checkpoint(run_dir / "checkpoints" / "checkpoint_last.pt")  # recorded when saved

    # the checkpoint Ctrl-C saved is the one a resume continues from
    assert cli(["train", "--resume", str(run_dir), "--set", f"train.max_update={stopped + 4}", "--no-progress"]) == 0
    loaded = [e.updates for e in map(metrics.parse_event, log.read_text().splitlines()) if e and e.kind == "loaded"]
    assert loaded == [stopped]
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "done"
    assert saved_updates(log)[-1] == stopped + 4


def test_sigint_under_torchrun_saves_once_after_the_same_update_on_every_rank(data_root: Path, tmp_path: Path):
    """Two gloo processes: Ctrl-C reaches the workers (not torchrun's agent, which would kill them); they agree on
    the update to stop after, rank 0 saves checkpoint_last.pt, and a two-process resume continues from it."""
    run_dir = tmp_path / "ddp-int"
    log = run_dir / "train.log"
    common = ["--set", f"data.root={data_root}", "--nproc-per-node", "2", "--no-progress"]
    proc, err = _train_until_first_save_then(run_dir, common, lambda proc: proc.send_signal(signal.SIGINT))
    assert proc.returncode == 130, err
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    stopped = saved_updates(log)[-1]
    assert stopped > saved_updates(log)[0]
    assert f"smx: SIGINT received: saving checkpoint_last.pt after update {stopped} and stopping" in text  # rank 0
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["exit_code"] == 0 and meta["world_size"] == 2
    assert rundir.verify_checksums(run_dir / "checkpoints") == []

    assert cli(["train", "--resume", str(run_dir), "--set", f"train.max_update={stopped + 4}",
                "--nproc-per-node", "2", "--no-progress"]) == 0
    loaded = [e.updates for e in map(metrics.parse_event, log.read_text().splitlines()) if e and e.kind == "loaded"]
    assert loaded == [stopped]  # (fairseq logs on rank 0 only)
    assert saved_updates(log)[-1] == stopped + 4


def test_a_signal_that_reaches_one_rank_stops_every_rank(data_root: Path, tmp_path: Path):
    """SIGINT to rank 1's process only: rank 0 learns it from the per-update all-reduce, so both leave the loop
    after the same update, rank 0 saves, and no collective is left waiting (the run ends instead of hanging)."""
    run_dir = tmp_path / "one-rank"
    log = run_dir / "train.log"
    first = []

    def sigint_one_worker(proc: subprocess.Popen) -> None:
        first.append(saved_updates(log)[-1])
        agents = procfs.children(proc.pid)
        assert len(agents) == 1, agents
        workers = procfs.children(agents[0])
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGINT)  # one of the two engine processes (which rank it is does not matter)

    proc, err = _train_until_first_save_then(run_dir, ["--set", f"data.root={data_root}", "--nproc-per-node", "2"],
                                             sigint_one_worker)
    assert proc.returncode == 0, err  # smx itself was not interrupted: the engine stopped on its own
    stopped = saved_updates(log)[-1]
    assert first[0] < stopped < 100000
    assert "Traceback" not in log.read_text()
    assert rundir.verify_checkpoint(run_dir / "checkpoints" / "checkpoint_last.pt")


def test_nan_loss_stops_names_the_update_and_keeps_the_last_good_checkpoint(data_root: Path, tmp_path: Path,
                                                                             capsys, monkeypatch):
    run_dir = tmp_path / "nan"
    args = ["train", str(TINY), "--run-dir", str(run_dir), "--set", f"data.root={data_root}", "--set",
            "train.save_interval_updates=8", "--set", "train.validate_interval_updates=8", "--no-progress"]
    monkeypatch.setenv("SMX_TEST_NONFINITE_AT", "21")  # test-only fault injection: the loss of update 21 is NaN
    capsys.readouterr()
    assert cli(args) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: non-finite loss (nan) at update 21: training stopped, the last good checkpoint is "
                     f"{run_dir}/checkpoints/checkpoint_last.pt (update 16); run marked failed "
                     f"(log: {run_dir}/train.log)"], err
    assert "Traceback" not in err
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "failed"
    assert {k: meta["failure"][k] for k in ("reason", "update", "split", "value", "last_checkpoint_update")} == {
        "reason": "non-finite", "update": 21, "split": "train", "value": "nan", "last_checkpoint_update": 16}
    assert saved_updates(run_dir / "train.log")[-1] == 16
    ck = run_dir / "checkpoints"
    assert not (ck / "crash.pt").exists()  # fairseq's crash dump of the broken model is not written
    assert rundir.verify_checksums(ck) == []
    entries = metrics.read(run_dir / "metrics.jsonl")
    assert max(e["step"] for e in entries) <= 20 and all(e["loss"] == e["loss"] for e in entries)

    # the kept checkpoint is good: the run resumes from it (without the injected fault) and finishes
    monkeypatch.delenv("SMX_TEST_NONFINITE_AT")
    assert cli(["train", "--resume", str(run_dir), "--set", "train.max_update=24", "--no-progress"]) == 0
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "done" and "failure" not in meta
    assert meta["resumes"][0]["previous_failure"]["update"] == 21
    assert metrics.last(metrics.read(run_dir / "metrics.jsonl"), "valid")["step"] == 24


def test_diverging_learning_rate_is_caught(data_root: Path, tmp_path: Path, capsys):
    """No injection: lr 1e6 blows the model up on its own; the guard names the update (fairseq would only say
    "gradients are Nan/Inf" deep in a traceback, or log NaN losses)."""
    run_dir = tmp_path / "lr"
    capsys.readouterr()
    assert cli(["train", str(TINY), "--run-dir", str(run_dir), "--set", f"data.root={data_root}",
                "--set", "optim.lr=1e6", "--set", "optim.scheduler=fixed", "--set", "optim.warmup_updates=0",
                "--no-progress"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: non-finite loss (") and " at update " in lines[0], err
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["failure"]["update"] >= 1
    assert f"at update {meta['failure']['update']}:" in lines[0]
    if (run_dir / "checkpoints" / "SHA256SUMS").exists():
        assert rundir.verify_checksums(run_dir / "checkpoints") == []
