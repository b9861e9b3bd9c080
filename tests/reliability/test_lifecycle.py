"""A run's life after something went wrong (issue 15): data identity, failed and odd resumes, unreadable inputs,
read-only places. Real engine runs are marked slow (tiny.yaml, 16 updates: one checkpoint and one validation)."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
import subprocess
from pathlib import Path

import pytest
from rel_helpers import TINY, comparable, diff_states, fake_run, tmpfs, tree_state

import data_prep
from smx.cli import run as cli
from smx.engine import checksums
from smx.run import dataid, metrics

SETTINGS = ["--seed", "4", "--set", "train.max_update=16", "--set", "train.save_interval_updates=16",
            "--set", "train.validate_interval_updates=16", "--set", "train.log_interval=8", "--no-progress"]


def train_args(run_dir: Path, root: Path, *extra: str) -> list[str]:
    return ["train", str(TINY), "--run-dir", str(run_dir), "--set", f"data.root={root}", *SETTINGS, *extra]


def private_data(data_root: Path, dest: Path) -> Path:
    """A copy of the session's prepared synthetic-mt (this module re-prepares and damages it)."""
    shutil.copytree(data_root / "synthetic-mt", dest / "synthetic-mt")
    return dest


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, data_root: Path) -> tuple[Path, Path]:
    """(a finished run, its data root): copied by each test that changes it."""
    base = tmp_path_factory.mktemp("done")
    root = private_data(data_root, base / "data")
    assert cli(train_args(base / "run", root)) == 0
    return base / "run", root


def copy_run(done_run, dest: Path) -> Path:
    shutil.copytree(done_run[0], dest)
    return dest


def meta(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text())


def one_error_line(err: str, message: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------- data identity
@pytest.mark.slow
def test_data_identity_is_recorded_and_a_replaced_dataset_is_refused(data_root: Path, tmp_path: Path, capsys):
    root = private_data(data_root, tmp_path / "data")
    run = tmp_path / "run"
    assert cli(train_args(run, root)) == 0
    recorded = meta(run)["data"]
    bin_dir = root / "synthetic-mt" / "bin"
    assert recorded["id"] == dataid.identity(bin_dir).id and recorded["source"] == "manifest"
    assert recorded["files"]["dict.src.txt"] == checksums.sha256_file(bin_dir / "dict.src.txt")
    assert dataid.users(root / "synthetic-mt", recorded["id"]) == [run.resolve()]
    merges = data_prep.manifest("synthetic-mt", root)["settings"]["bpe_merges"]
    prep = ["data", "prep", "synthetic-mt", "--out", str(root), "--bpe-merges", str(merges + 20), "--no-progress"]

    capsys.readouterr()
    before = tree_state(tmp_path)
    assert cli(prep) == 2  # another setting: refused without --force, naming the setting and the run
    line = one_error_line(capsys.readouterr().err, "is already prepared with other settings (bpe_merges")
    assert str(run.resolve()) in line and "--force" in line
    assert diff_states(before, tree_state(tmp_path)) == []

    assert cli([*prep, "--force"]) == 0
    err = capsys.readouterr().err
    assert "warning: replacing" in err and str(run.resolve()) in err
    assert data_prep.manifest("synthetic-mt", root)["settings"]["bpe_merges"] == merges + 20
    now = dataid.identity(bin_dir).id
    assert now != recorded["id"]

    before = tree_state(tmp_path)
    for argv in (["eval", "bleu", str(run)], ["train", "--resume", str(run), "--set", "train.max_update=32"]):
        assert cli(argv) == 2, argv
        line = one_error_line(capsys.readouterr().err, "is not the data the run was trained on")
        assert recorded["id"][:12] in line and now[:12] in line and "dict.src.txt" in line
    assert diff_states(before, tree_state(tmp_path)) == []

    other = shutil.copytree(run, tmp_path / "study" / "other")  # a run of the same study trained on the new data
    shutil.copytree(run, tmp_path / "study" / "first")
    m = meta(other)
    m["data"]["id"] = now
    (other / "meta.json").write_text(json.dumps(m))
    assert cli(["compare", str(tmp_path / "study"), "--out", str(tmp_path / "cmp")]) == 2
    one_error_line(capsys.readouterr().err, "cannot compare runs trained on different data")


def test_same_size_garbage_in_a_bin_file_is_refused_before_the_run_exists(data_root: Path, tmp_path: Path, capsys):
    root = private_data(data_root, tmp_path / "data")
    target = root / "synthetic-mt" / "bin" / "train.src-tgt.src.bin"
    target.write_bytes(bytes(255 - b for b in target.read_bytes()))  # same size, other bytes
    capsys.readouterr()
    assert cli(train_args(tmp_path / "run", root)) == 2
    one_error_line(capsys.readouterr().err, f"{target}: its sha256 differs from")
    assert not (tmp_path / "run").exists()


def test_max_tokens_below_the_longest_sentence_is_refused(data_root: Path, tmp_path: Path, capsys):
    capsys.readouterr()
    assert cli(train_args(tmp_path / "run", data_root, "--set", "train.max_tokens=2")) == 2
    one_error_line(capsys.readouterr().err, "train.max_tokens: 2 is smaller than the longest training sentence")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------------- resumes
@pytest.mark.slow
def test_a_failed_resume_keeps_the_status_and_provenance(done_run, tmp_path: Path, capsys):
    run = copy_run(done_run, tmp_path / "run")
    (run / "checkpoints" / "checkpoint_last.pt").write_bytes(b"not a checkpoint")  # the engine cannot load it
    before, recipe = meta(run), (run / "recipe.yaml").read_text()
    capsys.readouterr()
    assert cli(["train", "--resume", str(run), "--set", "train.max_update=32", "--trust-checkpoint",
                "--no-progress"]) == 1
    assert "stays done" in capsys.readouterr().err
    after = meta(run)
    assert after["status"] == "done"
    assert {k: v for k, v in after.items() if k != "resumes"} == {k: v for k, v in before.items() if k != "resumes"}
    attempt = after["resumes"][-1]
    assert len(after["resumes"]) == len(before.get("resumes", [])) + 1
    assert attempt["outcome"] == "failed" and attempt["exit_code"] not in (0, None) and attempt["trusted"] is True
    assert (run / "recipe.yaml").read_text() == recipe  # max_update 32 was not taken: nothing trained


@pytest.mark.slow
def test_a_corrupt_meta_json_is_rebuilt_from_the_recipe_and_kept(done_run, tmp_path: Path, capsys):
    run = copy_run(done_run, tmp_path / "run")
    original = meta(run)
    (run / "meta.json").write_text('{"status": "do')  # cut by a crash
    capsys.readouterr()
    assert cli(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "meta.json: missing or unreadable; rebuilt from recipe.yaml" in capsys.readouterr().err
    rebuilt = meta(run)
    for key in ("name", "recipe", "task", "dataset", "estimator", "seed", "protocol", "arm"):
        assert rebuilt[key] == original[key], key
    started = [datetime.fromisoformat(m["start"]) for m in (rebuilt, original)]  # train.log's first session line
    assert abs((started[0] - started[1]).total_seconds()) <= 5
    assert rebuilt["status"] == "done" and "meta.json.unreadable" in rebuilt["rebuilt"]["reason"]
    assert (run / "meta.json.unreadable").read_text() == '{"status": "do'


@pytest.mark.slow
def test_a_run_that_died_before_its_first_checkpoint_restarts_in_place(done_run, tmp_path: Path, capsys):
    run = copy_run(done_run, tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    m = meta(run)
    m["status"] = "running"  # killed before its first save
    (run / "meta.json").write_text(json.dumps(m))
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    capsys.readouterr()
    assert cli(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "stopped before its first checkpoint; training again from update 0" in capsys.readouterr().err
    assert meta(run)["status"] == "done" and meta(run)["crashes"] == 1
    assert (run / "checkpoints" / "checkpoint_last.pt").is_file()
    # the same seed from update 0: the same numbers as the uninterrupted run, each logged once
    assert comparable(metrics.read(run / "metrics.jsonl")) == comparable(metrics.read(done_run[0] / "metrics.jsonl"))


@pytest.mark.slow
def test_a_run_with_only_checkpoint_best_resumes_from_it(done_run, tmp_path: Path, capsys):
    run = copy_run(done_run, tmp_path / "run")
    (run / "checkpoints" / "checkpoint_last.pt").unlink()
    m = meta(run)
    m["status"] = "interrupted"
    (run / "meta.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert cli(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "no checkpoint_last.pt; resuming from checkpoint_best.pt" in capsys.readouterr().err
    assert f"--restore-file {run / 'checkpoints' / 'checkpoint_best.pt'}" in (run / "fairseq_argv.txt").read_text()
    assert meta(run)["status"] == "done"


@pytest.mark.slow
def test_a_directory_that_never_trained_is_made_again(data_root: Path, tmp_path: Path, capsys):
    from smx.run import paths as rundir

    half = rundir.create(tmp_path / "run")  # what a failure at the very start leaves (disk full, a kill)
    half.recipe.write_text(TINY.read_text())
    half.meta.write_text(json.dumps({"name": "run", "status": "running"}))
    half.log.write_text("# smx 2026-01-01T00:00:00+00:00: python -m fairseq_cli.train\n")
    capsys.readouterr()
    assert cli(train_args(half.path, data_root)) == 0
    assert "was made but never trained" in capsys.readouterr().err
    assert meta(half.path)["status"] == "done" and "resumes" not in meta(half.path)


# ----------------------------------------------------------------------------------------------------- compare
def test_compare_skips_an_unreadable_run_and_lists_it(tmp_path: Path, capsys):
    study = tmp_path / "study"
    for seed in (1, 2):
        fake_run(study / f"tiny-topk-s{seed}", TINY, [f"seed={seed}", "router.estimator=topk"])
    bad = fake_run(study / "tiny-topk-s3", TINY, ["seed=3", "router.estimator=topk"])
    (bad / "meta.json").write_bytes(b"\xff{ not json")
    capsys.readouterr()
    assert cli(["compare", str(study), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert f"skipped {bad}: not a run directory (no readable meta.json)" in out.replace("\n", " ").replace("  ", " ")
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert any("tiny-topk-s3" in n for n in report["notes"]) and len(report["groups"][0]["runs"]) == 2


# --------------------------------------------------------------------------------------------- read-only places
@pytest.fixture
def read_only(tmp_path: Path, data_root: Path):
    """A tmpfs mounted read-only at tmp_path/ro, holding a fake run made before the remount."""
    with tmpfs(tmp_path / "ro", "8m") as mnt:
        fake_run(mnt / "runs" / "t", TINY, [f"data.root={data_root}"])
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt


def test_read_only_places_are_refused_before_any_work(read_only: Path, data_root: Path, tmp_path: Path, capsys,
                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = {
        "train": ["train", str(TINY), "--runs-root", str(read_only / "new"), "--set", f"data.root={data_root}"],
        "resume": ["train", "--resume", str(read_only / "runs" / "t"), "--set", "train.max_update=90"],
        "prep": ["data", "prep", "synthetic-mt", "--out", str(read_only), "--no-progress"],
        "compare": ["compare", str(read_only / "runs" / "t"), "--out", str(read_only / "cmp")],
        "sweep": ["sweep", str(TINY), "--estimators", "topk", "--study-dir", str(read_only / "study")],
        "diagnose": ["diagnose", "gradients", "--samples", "10", "--json", str(read_only / "g.json")],
        "eval": ["eval", "bleu", str(read_only / "runs" / "t")],
    }
    before = tree_state(tmp_path)
    for name, argv in cases.items():
        capsys.readouterr()
        assert cli(argv) == 2, name
        one_error_line(capsys.readouterr().err, "not writable (permissions or a read-only filesystem)")
    assert diff_states(before, tree_state(tmp_path)) == []
