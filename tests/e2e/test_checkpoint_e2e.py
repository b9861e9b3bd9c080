"""Checkpoint integrity with a real engine run: every save recorded, a changed checkpoint refused on resume unless
trusted, and the engine itself refusing a file changed after smx checked it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from rel_helpers import TINY, diff_states, tree_state

from smx.run import paths as rundir
from smx.cli import run as cli
from smx.errors import UserError
from smx.engine import checksums


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, data_root: Path) -> Path:
    path = tmp_path_factory.mktemp("short") / "run"
    assert cli(["train", str(TINY), "--run-dir", str(path), "--set", f"data.root={data_root}", "--set",
                "train.max_update=8", "--set", "train.save_interval_updates=4", "--no-progress"]) == 0
    return path


@pytest.mark.slow
def test_engine_records_every_checkpoint_it_writes(short_run: Path):
    ck = short_run / "checkpoints"
    names = sorted(p.name for p in ck.glob("*.pt"))
    assert "checkpoint_last.pt" in names and "checkpoint_best.pt" in names and "checkpoint_1_8.pt" in names
    assert sorted(checksums.read_sums(ck)) == names  # every file, and no line of a removed one (checkpoint_1_4.pt)
    assert rundir.verify_checksums(ck) == [] and not list(ck.glob("*.tmp"))
    res = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=ck, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow
def test_resume_refuses_a_changed_checkpoint_unless_trusted(short_run: Path, tmp_path: Path, capsys):
    import torch

    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    last = run / "checkpoints" / "checkpoint_last.pt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    torch.save(state, last)  # same content, other bytes: smx cannot know it is harmless
    tampered = checksums.sha256_file(last)
    before = tree_state(run)
    assert cli(["train", "--resume", str(run), "--set", "train.max_update=12", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: refusing to load {last}: sha256") and len(err.splitlines()) == 1
    assert diff_states(before, tree_state(run)) == []

    assert cli(["train", "--resume", str(run), "--set", "train.max_update=12", "--no-progress",
                "--trust-checkpoint"]) == 0
    assert "loading it anyway (--trust-checkpoint)" in capsys.readouterr().err
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "done" and meta["resumes"][-1]["trusted"] is True
    assert meta["resumes"][-1]["checkpoint_sha256"] == tampered  # what was loaded, on record
    assert rundir.verify_checksums(run / "checkpoints") == []  # the new saves are recorded again


@pytest.mark.slow
def test_engine_refuses_a_checkpoint_changed_after_smx_checked_it(short_run: Path, tmp_path: Path):
    import smx.eval.evaluate as ev
    from smx.engine.process import run_captured, verify_env

    ckpt = short_run / "checkpoints" / "checkpoint_best.pt"
    recipe = ev.load_run_recipe(short_run)
    bin_dir = ev.bin_dir_of(recipe, short_run)
    argv = ev.generate_argv(bin_dir, ckpt, "valid", "src", "tgt", 1, 1.0, 4096)
    env = verify_env({ckpt: "f" * 64})  # what smx verified differs from what is on disk now
    with pytest.raises(UserError, match="refusing to load checkpoint"):
        run_captured(argv, tmp_path / "generate.log", "beam search", extra_env=env)
    assert "Traceback" in (tmp_path / "generate.log").read_text()  # stopped inside the engine, before torch.load
