"""A full disk under a training run, an evaluation and a run's very start (slow: real engine runs, on a tmpfs).

Expected every time: one line naming the path and "no space left on device", exit 2, nothing finished overwritten;
for training also meta.json failed with the cause, no meta.json.tmp, the last good checkpoint intact, and a run that
--resume (or, when nothing was trained, the same command) accepts once space is back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rel_helpers import TINY, act_after_first_save, fill, raw_keys, smx_process, tmpfs, tree_state

from smx.cli import run as cli
from smx.engine import checksums

pytestmark = pytest.mark.slow
SETTINGS = ["--seed", "5", "--set", "train.max_update=48", "--set", "train.log_interval=8",
            "--set", "train.save_interval_updates=8", "--set", "train.validate_interval_updates=8", "--no-progress"]


def one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip() and not x.startswith("warning:")]
    assert "Traceback" not in err and lines and lines[-1].startswith("error: "), err
    return lines[-1]


def test_disk_full_during_training_then_resume_and_eval(tmp_path: Path, data_root: Path, capsys):
    with tmpfs(tmp_path / "fs") as fs:
        run = fs / "run"
        proc = smx_process(["train", str(TINY), "--run-dir", str(run), "--set", f"data.root={data_root}", *SETTINGS])
        filler = None

        def fill_up(_):
            nonlocal filler
            filler = fill(fs)
        err = act_after_first_save(proc, run, fill_up)
        assert proc.returncode == 2, err
        line = one_line(err)
        assert "no space left on device" in line and f"smx train --resume {run}" in line
        meta = json.loads((run / "meta.json").read_text())
        assert meta["status"] == "failed" and meta["failure"]["reason"] == "no space"
        assert not (run / "meta.json.tmp").exists() and not list((run / "checkpoints").glob("*.tmp"))
        problem, _ = checksums.check(run / "checkpoints" / "checkpoint_last.pt")
        assert problem is None  # the last good checkpoint is whole and recorded

        filler.unlink()
        capsys.readouterr()
        assert cli(["train", "--resume", str(run), "--no-progress"]) == 0
        assert json.loads((run / "meta.json").read_text())["status"] == "done"
        keys = raw_keys(run / "metrics.jsonl")
        assert len(keys) == len(set(keys))  # each step logged once across the fault and the resume
        assert {k[3] for k in keys if k[0] == "valid"} == set(range(8, 49, 8))

        assert cli(["eval", "bleu", str(run), "--beam", "1"]) == 0
        before = tree_state(run / "eval")
        filler = fill(fs)
        capsys.readouterr()
        assert cli(["eval", "bleu", str(run), "--beam", "1"]) == 2
        assert "no space left on device" in one_line(capsys.readouterr().err)
        assert tree_state(run / "eval") == before  # the previous result and its generate log are whole
        filler.unlink()


def test_disk_full_at_the_start_then_the_same_command_works(tmp_path: Path, data_root: Path, capsys):
    with tmpfs(tmp_path / "fs", "16m") as fs:
        argv = ["train", str(TINY), "--run-dir", str(fs / "run"), "--set", f"data.root={data_root}", *SETTINGS,
                "--set", "train.max_update=8"]
        filler = fill(fs)
        capsys.readouterr()
        assert cli(argv) == 2
        assert "no space left on device" in one_line(capsys.readouterr().err)
        filler.unlink()
        assert cli(argv) == 0  # nothing was trained: the half-made directory is made again
        assert json.loads((fs / "run" / "meta.json").read_text())["status"] == "done"
