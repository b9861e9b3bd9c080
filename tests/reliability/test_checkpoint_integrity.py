"""Checkpoint integrity: hashes recorded when the engine saves (crash-safe), checked before anything unpickles a
checkpoint (smx and, again, the engine), --trust-checkpoint as the only way around."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rel_helpers import TINY, diff_states, fake_run, tree_state

from smx.run import paths as rundir
from smx.cli import run as cli
from smx.errors import UserError
from smx.engine import checksums


def test_hash_is_recorded_before_the_file_appears_and_a_kill_in_between_is_harmless(tmp_path: Path, monkeypatch):
    import smx.fairseq_plugin.guards as guards
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    guards._atomic_recorded(ck / "checkpoint_last.pt", lambda tmp: tmp.write_bytes(b"old"))
    old = checksums.sha256_file(ck / "checkpoint_last.pt")
    assert checksums.read_sums(ck) == {"checkpoint_last.pt": [old]}

    # a kill -9 after the new file's hash is recorded but before it is renamed into place
    record_pending = checksums.record_pending

    def killed(*args):
        record_pending(*args)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(guards.checksums, "record_pending", killed)
    with pytest.raises(KeyboardInterrupt):
        guards._atomic_recorded(ck / "checkpoint_last.pt", lambda tmp: tmp.write_bytes(b"new"))
    monkeypatch.undo()
    new = checksums.sha256_file(ck / "checkpoint_last.pt.tmp")
    assert checksums.read_sums(ck)["checkpoint_last.pt"] == [new, old]  # both accepted in the window
    assert (ck / "checkpoint_last.pt").read_bytes() == b"old"
    assert rundir.verify_checksums(ck) == [] and rundir.verify_checkpoint(ck / "checkpoint_last.pt") == old

    # the next save settles it: one hash per file again, lines of removed files dropped
    guards._atomic_recorded(ck / "checkpoint_last.pt", lambda tmp: tmp.write_bytes(b"new"))
    assert checksums.read_sums(ck) == {"checkpoint_last.pt": [new]}
    (ck / "checkpoint_1_8.pt").write_bytes(b"x")
    checksums.record_final(ck, "checkpoint_1_8.pt", checksums.sha256_file(ck / "checkpoint_1_8.pt"))
    (ck / "checkpoint_1_8.pt").unlink()
    checksums.prune(ck)
    assert list(checksums.read_sums(ck)) == ["checkpoint_last.pt"]
    text = (ck / "SHA256SUMS").read_text()
    assert text == f"{new}  checkpoint_last.pt\n"  # sha256sum -c format


def test_verify_checkpoint_refuses_mismatch_and_unrecorded_unless_trusted(tmp_path: Path):
    ck = tmp_path
    (ck / "checkpoint_last.pt").write_bytes(b"weights")
    with pytest.raises(UserError, match=r"no recorded sha256 \(.*SHA256SUMS is missing\); checkpoints are pickles"):
        rundir.verify_checkpoint(ck / "checkpoint_last.pt")
    rundir.write_checksums(ck)
    assert rundir.verify_checkpoint(ck / "checkpoint_last.pt") == checksums.sha256_file(ck / "checkpoint_last.pt")
    (ck / "checkpoint_best.pt").write_bytes(b"unlisted")
    with pytest.raises(UserError, match="checkpoint_best.pt: no recorded sha256 in"):
        rundir.verify_checkpoint(ck / "checkpoint_best.pt")
    (ck / "checkpoint_last.pt").write_bytes(b"weights, changed")
    with pytest.raises(UserError, match="refusing to load .*does not match the recorded.*--trust-checkpoint"):
        rundir.verify_checkpoint(ck / "checkpoint_last.pt")
    warnings: list[str] = []
    digest = rundir.verify_checkpoint(ck / "checkpoint_last.pt", trust=True, warn=warnings.append)
    assert digest == checksums.sha256_file(ck / "checkpoint_last.pt")
    assert len(warnings) == 1 and "loading it anyway (--trust-checkpoint)" in warnings[0]


def test_the_unpickling_process_checks_the_hash_again(tmp_path: Path):
    """A file changed after smx checked it is refused by the process that would unpickle it (here the checkpoint
    averaging subprocess; the fairseq engine does the same in load_checkpoint_to_cpu)."""
    import torch

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for p in (a, b):
        torch.save({"model": {"w": torch.ones(2)}}, p)
    env = {**os.environ, checksums.VERIFY_ENV: checksums.verify_env_value({a: checksums.sha256_file(a),
                                                                            b: "0" * 64})}
    r = subprocess.run([sys.executable, "-m", "smx.eval.average", str(tmp_path / "avg.pt"), str(a), str(b)],
                       capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "refusing to load checkpoint" in r.stderr and str(b) in r.stderr
    assert not (tmp_path / "avg.pt").exists()


def test_eval_trust_checkpoint_is_the_only_way_around(tmp_path: Path, monkeypatch, capsys):
    import smx.eval.evaluate as ev

    run = fake_run(tmp_path / "runs" / "t", TINY, [f"data.root={tmp_path / 'data'}"])
    (run / "checkpoints" / "checkpoint_best.pt").write_bytes(b"changed after it was saved")
    before = tree_state(tmp_path)
    assert cli(["eval", "bleu", str(run)]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert diff_states(before, tree_state(tmp_path)) == []
    seen: dict = {}

    def stop(recipe, run_):  # the next thing bleu() does after the checks: stop there
        seen["reached"] = True
        raise UserError("stop here")

    monkeypatch.setattr(ev, "bin_dir_of", stop)
    assert cli(["eval", "bleu", str(run), "--trust-checkpoint"]) == 2
    err = capsys.readouterr().err
    assert seen == {"reached": True} and "stop here" in err and "refusing" not in err


# --------------------------------------------------------------------------------------- with a real engine run


def test_sha256sum_binary_form_is_read(tmp_path):
    """`sha256sum -b` writes `<hex> *name`; a SHA256SUMS made by hand that way is read like the text form."""
    digest = "ab" * 32
    (tmp_path / "SHA256SUMS").write_text(f"{digest} *checkpoint_best.pt\n{digest.upper()}  checkpoint_last.pt\n"
                                         "not a line\n")
    assert checksums.read_sums(tmp_path) == {"checkpoint_best.pt": [digest], "checkpoint_last.pt": [digest]}
