"""Preemption on a cluster (issue 15 items 3-5): SIGTERM to every process of the job, SIGHUP, and a signal to a
parallel sweep all end in a saved checkpoint, a run marked interrupted that names the signal, and a resume that
continues from it (slow: real engine runs on CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from rel_helpers import TINY, act_after_first_save, dead, saved_updates, smx_process, wait_for

from smx.cli import run as cli
from smx.engine import procfs
from smx.run import metrics
from smx.run import paths as rundir

pytestmark = pytest.mark.slow


def _endless(run_dir: Path, data_root: Path) -> subprocess.Popen:
    return smx_process(["train", str(TINY), "--run-dir", str(run_dir), "--set", "train.max_update=100000",
                        "--set", f"data.root={data_root}", "--no-progress"])


def _assert_saved_and_resumable(run_dir: Path, signame: str) -> None:
    log = run_dir / "train.log"
    text = log.read_text()
    assert f"smx: {signame} received: saving checkpoint_last.pt after update" in text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    stopped = saved_updates(log)[-1]
    assert stopped > saved_updates(log)[0]  # saved again when the signal came, not only at the periodic save
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["interrupted_by"] == signame and meta["end"]
    assert not (run_dir / "run.lock").exists()
    assert rundir.verify_checksums(run_dir / "checkpoints") == []
    assert max(e["step"] for e in metrics.read(run_dir / "metrics.jsonl", split="train")) <= stopped
    assert cli(["train", "--resume", str(run_dir), "--set", f"train.max_update={stopped + 2}", "--no-progress"]) == 0
    loaded = [e.updates for e in map(metrics.parse_event, log.read_text().splitlines()) if e and e.kind == "loaded"]
    assert loaded == [stopped]
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "done"


def test_sigterm_to_every_process_of_the_job_saves(data_root: Path, tmp_path: Path):
    """What SLURM and Kubernetes do: SIGTERM to smx and to the engine at the same instant. The engine counts its own
    signal and the one smx forwards as one request (before: it died without saving)."""
    run_dir = tmp_path / "term"

    def sigterm_all(proc: subprocess.Popen) -> None:
        engines = procfs.children(proc.pid)
        assert engines, "no engine process"
        for pid in [proc.pid, *engines]:
            os.kill(pid, signal.SIGTERM)

    err = act_after_first_save(_endless(run_dir, data_root), run_dir, sigterm_all)
    assert "Traceback" not in err and "training interrupted" in err
    _assert_saved_and_resumable(run_dir, "SIGTERM")


def test_sighup_is_a_graceful_stop(data_root: Path, tmp_path: Path):
    """A closed terminal or a dropped SSH session (before: smx died at once, meta.json stayed running, lock left)."""
    run_dir = tmp_path / "hup"
    proc = _endless(run_dir, data_root)
    act_after_first_save(proc, run_dir, lambda p: p.send_signal(signal.SIGHUP))
    assert proc.returncode == 130
    _assert_saved_and_resumable(run_dir, "SIGHUP")


def test_sweep_forwards_sigterm_to_its_children_and_waits(data_root: Path, tmp_path: Path):
    """SIGTERM to `smx sweep --jobs 2` alone (before: exit 143, children orphaned and still training)."""
    study = tmp_path / "study"
    proc = smx_process(["sweep", str(TINY), "--estimators", "topk,sparsemixer", "--seeds", "1", "--jobs", "2",
                        "--study-dir", str(study), "--set", "train.max_update=100000",
                        "--set", f"data.root={data_root}", "--no-progress"])
    runs = [study / "tiny-topk-s1", study / "tiny-sparsemixer-s1"]
    try:
        assert wait_for(lambda: all(saved_updates(r / "train.log") for r in runs), 300, proc), proc.communicate()
        children = procfs.children(proc.pid)
        assert len(children) == 2, children
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert all(dead(pid) for pid in children)  # nobody left training unwatched
    for run in runs:
        meta = json.loads((run / "meta.json").read_text())
        assert meta["status"] == "interrupted" and meta["interrupted_by"] == "SIGTERM", meta
        assert "smx: SIGTERM received: saving checkpoint_last.pt" in (run / "train.log").read_text()
        assert rundir.verify_checksums(run / "checkpoints") == []


def test_stop_after_minutes_saves_and_resumes(data_root: Path, tmp_path: Path):
    """`--stop-after-minutes N`: this invocation's wall budget (before a scheduler's limit); a graceful stop."""
    run_dir = tmp_path / "budget"
    proc = smx_process(["train", str(TINY), "--run-dir", str(run_dir), "--set", "train.max_update=100000",
                        "--set", f"data.root={data_root}", "--no-progress", "--stop-after-minutes", "0.5"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "training interrupted" in err
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["interrupted_by"] == "--stop-after-minutes 0.5"
    text = (run_dir / "train.log").read_text()
    assert "smx: SIGINT received: saving checkpoint_last.pt after update" in text
    stopped = saved_updates(run_dir / "train.log")[-1]
    assert 0 < stopped < 100000
    assert rundir.verify_checkpoint(run_dir / "checkpoints" / "checkpoint_last.pt")
    assert cli(["train", "--resume", str(run_dir), "--set", f"train.max_update={stopped + 2}", "--no-progress"]) == 0
    loaded = [e.updates for e in map(metrics.parse_event, (run_dir / "train.log").read_text().splitlines())
              if e and e.kind == "loaded"]
    assert loaded == [stopped]


def test_stop_after_minutes_must_be_positive(tmp_path: Path, capsys):
    assert cli(["train", str(TINY), "--run-dir", str(tmp_path / "r"), "--stop-after-minutes", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("--stop-after-minutes 0.0: must be a number > 0")
    assert not (tmp_path / "r").exists()
