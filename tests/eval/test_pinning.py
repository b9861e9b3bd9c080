"""`smx eval` while the run trains: the checkpoint checked is the checkpoint evaluated (smx.eval.pinning)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smx.engine import checksums
from smx.errors import UserError
from smx.eval import pinning


def saved(ck: Path, name: str, data: bytes) -> Path:
    """What the engine does when it saves: list the new hash, rename into place, drop the old hash."""
    tmp = ck / (name + ".tmp")
    tmp.write_bytes(data)
    digest = checksums.sha256_file(tmp)
    checksums.record_pending(ck, name, digest)
    os.replace(tmp, ck / name)
    checksums.record_final(ck, name, digest)
    return ck / name


def test_a_checkpoint_replaced_while_it_is_pinned_is_still_the_one_verified(tmp_path: Path, monkeypatch):
    ck = tmp_path / "run" / "checkpoints"
    ck.mkdir(parents=True)
    best = saved(ck, "checkpoint_best.pt", b"old best")
    real_link = os.link

    def link_then_train_on(src, dst):  # the trainer saves a new best right after the link
        real_link(src, dst)
        saved(ck, "checkpoint_best.pt", b"new best")
    monkeypatch.setattr(pinning.os, "link", link_then_train_on)
    with pinning.pinned([best], tmp_path / "run" / "eval") as (pins, digests):
        assert pins[0].read_bytes() == b"old best"
        assert digests[pins[0]] == checksums.sha256_file(pins[0]) != checksums.sha256_file(best)
        assert pins[0].parent.parent == tmp_path / "run" / "eval"
    assert list((tmp_path / "run" / "eval").iterdir()) == []  # the pins are gone
    assert best.read_bytes() == b"new best"


def test_a_tampered_checkpoint_is_refused_when_pinned(tmp_path: Path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    best = saved(ck, "checkpoint_best.pt", b"good")
    best.write_bytes(b"evil")
    with pytest.raises(UserError, match="checkpoint_best.pt: sha256 .* does not match the recorded"):
        with pinning.pinned([best], tmp_path / "eval"):
            pass
    assert list((tmp_path / "eval").iterdir()) == []


def test_a_checkpoint_removed_while_it_is_checked_is_one_line(tmp_path: Path, monkeypatch):
    from smx.run import paths as rundir

    ck = tmp_path / "checkpoints"
    ck.mkdir()
    numbered = saved(ck, "checkpoint_1_8.pt", b"old")

    def removed_meanwhile(path, chunk=1 << 20):  # keep_last deleted it between the listing and the hashing
        numbered.unlink(missing_ok=True)
        raise FileNotFoundError(path)
    monkeypatch.setattr(checksums, "sha256_file", removed_meanwhile)
    with pytest.raises(UserError, match="removed while smx was reading it"):
        rundir.verify_checkpoint(numbered)
