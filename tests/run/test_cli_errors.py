"""`smx train` on bad input: one line, exit 2, no traceback, nothing created on disk (checked before any write)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from smx.cli import run
import smx.cli.compare as compare_cli

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "recipes" / "tiny.yaml")


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    ([TINY, "--set", "moe.k=5"], f"error: {TINY}: moe.k: 5 > moe.num_experts=4"),
    ([TINY, "--set", "optim.lr=-1"], f"error: {TINY}: optim.lr: -1.0 must be > 0"),
    ([TINY, "--set", "moe.kk=2"], f"error: {TINY}: --set moe.kk: unknown key; did you mean 'moe.k'?"),
    ([TINY, "--estimator", "sparsemixr"], f"error: {TINY}: router.estimator: unknown estimator 'sparsemixr'; "
                                          "did you mean 'sparsemixer'?"),
    ([TINY, "--set", "router.options={tau: 2}"], f"error: {TINY}: router.options.tau: unknown option for estimator "
                                                 "'sparsemixer' (valid options: jitter_eps)"),
    (["nope.yaml"], "error: nope.yaml: recipe file not found"),
    ([], "error: missing RECIPE (a recipes/*.yaml file), or --resume RUN"),
    ([TINY, "--nproc-per-node", "0"], "error: --nproc-per-node 0: must be >= 1"),
    ([TINY, "--set", "router.options.jitter_eps=0"], f"error: {TINY}: router.estimator: estimator 'sparsemixer' "
                                                     "with jitter_eps=0 keeps only the argmax in its mask, so every "
                                                     "gate is constant 1 and the router would get no task gradient"),
    ([TINY, "--estimator", "sparsemixer_v2", "--set", "moe.k=2", "--set", "router.per_estimator.sparsemixer_v2="
      "{jitter_eps: 0}"], f"error: {TINY}: router.estimator: estimator 'sparsemixer_v2' with jitter_eps=0"),
    (["--resume", "runs/nothing"], "error: --resume runs/nothing: no such run directory"),
    ([TINY, "--device", "gpu"], "error: Invalid value for '--device'"),
    ([TINY, "--set", "data.dir=nowhere"], "error: data.dir: nowhere is not a directory"),
    ([TINY, "--set", "data.dir=."], "error: data.dir: . holds no fairseq dictionary (dict*.txt)"),
])
def test_bad_input_one_line_exit_2_nothing_written(cwd: Path, capsys, argv, message):
    assert run(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(cwd) == []


def test_existing_run_dir_refused_untouched(cwd: Path, capsys):
    (cwd / "runs" / "tiny-sparsemixer-s1").mkdir(parents=True)
    (cwd / "runs" / "tiny-sparsemixer-s1" / "mine.txt").write_text("keep")
    before = snapshot(cwd)
    assert run(["train", TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run directory runs/tiny-sparsemixer-s1 already exists; resume it with --resume")
    assert snapshot(cwd) == before and (cwd / "runs/tiny-sparsemixer-s1/mine.txt").read_text() == "keep"


def test_resume_needs_checkpoint_and_same_model(cwd: Path, capsys):
    run_dir = cwd / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(Path(TINY).read_text())
    (run_dir / "meta.json").write_text(json.dumps({"name": "r", "status": "done"}))
    assert run(["train", "--resume", str(run_dir)]) == 2  # done without a checkpoint: nothing to resume from
    assert "nothing to resume from (no checkpoints/checkpoint_last.pt)" in capsys.readouterr().err
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "checkpoint_last.pt").write_bytes(b"x")
    before = snapshot(cwd)
    assert run(["train", "--resume", str(run_dir), "--set", "moe.num_experts=8", "--set", "train.max_update=90"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume {run_dir}: cannot change moe.num_experts of an existing run")
    assert run(["train", "--resume", str(run_dir), "--run-dir", "x"]) == 2
    assert "drop --run-dir" in capsys.readouterr().err
    assert snapshot(cwd) == before


@pytest.mark.skipif(os.environ.get("CUDA_VISIBLE_DEVICES") not in (None, "") or Path("/dev/nvidia0").exists(),
                    reason="a GPU may be visible")
def test_cuda_without_gpu(cwd: Path, capsys):
    assert run(["train", TINY, "--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("error: train.device: cuda requested but no GPU is visible")
    assert snapshot(cwd) == []


def test_second_writer_refused(cwd: Path, capsys):
    import json
    import socket

    from smx.recipe import recipes

    fake_bin = cwd / "bin"
    fake_bin.mkdir()
    (fake_bin / "dict.src.txt").write_text("a 1\n")
    run_dir = cwd / "runs" / "busy"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint_last.pt").write_bytes(b"x")
    (run_dir / "recipe.yaml").write_text(recipes.dump(recipes.load(TINY, [f"data.dir={fake_bin}"])))
    (run_dir / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert run(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run_dir} is in use by pid {os.getpid()} on host {socket.gethostname()}")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_an_internal_value_error_keeps_its_traceback(cwd, monkeypatch):
    """Only smx.errors.UserError is bad input; a ValueError from a bug deep in the code is not swallowed."""
    from smx.run import train as training

    def buggy(*args, **kwargs):
        raise ValueError("an internal bug, not bad input")

    monkeypatch.setattr(training, "plan", buggy)
    with pytest.raises(ValueError, match="an internal bug"):
        run(["train", TINY])


def test_bad_input_still_gets_one_line(cwd, capsys):
    assert run(["train", TINY, "--set", "moe.k=5"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_full_disk_is_one_line_and_other_os_errors_keep_their_traceback(monkeypatch, capsys):
    def full(paths):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/runs/x/metrics.jsonl")
    monkeypatch.setattr(compare_cli, "discover", full)
    assert run(["compare", "somewhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: /data/runs/x/metrics.jsonl: no space left on device; files already finished were not "
                   "overwritten; free space and run the command again"]

    def broken(paths):
        raise OSError(errno.EIO, "Input/output error", "/data/x")
    monkeypatch.setattr(compare_cli, "discover", broken)
    with pytest.raises(OSError, match="Input/output error"):
        run(["compare", "somewhere"])
