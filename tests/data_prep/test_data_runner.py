"""The step runner: skip when done, redo when interrupted or changed, pinned sources, atomic outputs, the lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dp_helpers import make_prep

from data_prep.steps.files import digest, partial
from data_prep.steps.manifest import Manifest
from data_prep.steps.runner import locked
from smx.errors import UserError


def _writer(calls: list, text: str = "hello\n"):
    def fn(tmp: dict[str, Path]) -> None:
        calls.append(1)
        for p in tmp.values():
            p.write_text(text)
    return fn


def test_step_runs_once_then_skips_and_records(prep):
    calls: list = []
    assert prep.step("a", ["out/a.txt"], _writer(calls), settings={"x": 1}) is True
    assert prep.step("b", ["out/b.txt"], _writer(calls), inputs=["out/a.txt"]) is True
    fresh = make_prep(prep.root_dir.parent)  # a later run: manifest read back from disk
    assert fresh.step("a", ["out/a.txt"], _writer(calls), settings={"x": 1}) is False
    assert fresh.step("b", ["out/b.txt"], _writer(calls), inputs=["out/a.txt"]) is False
    assert len(calls) == 2
    rec = json.loads((prep.root_dir / "manifest.json").read_text())["steps"]["b"]
    assert rec["inputs"] == {"out/a.txt": digest(prep.path("out/a.txt")).sha256}
    assert rec["outputs"]["out/b.txt"] == {"sha256": digest(prep.path("out/b.txt")).sha256, "bytes": 6, "lines": 1}
    assert rec["seconds"] >= 0 and rec["finished"]


def test_changed_settings_input_or_output_redo_the_step(prep):
    calls: list = []
    prep.step("a", ["a.txt"], _writer(calls), settings={"x": 1})
    prep2 = make_prep(prep.root_dir.parent)
    assert prep2.step("a", ["a.txt"], _writer(calls), settings={"x": 2}) is True  # settings changed
    prep3 = make_prep(prep.root_dir.parent)
    prep3.path("a.txt").write_text("edited\n")  # output changed by hand: redone (derived data)
    assert prep3.step("a", ["a.txt"], _writer(calls), settings={"x": 2}) is True
    assert prep3.path("a.txt").read_text() == "hello\n"
    prep4 = make_prep(prep.root_dir.parent)
    prep4.path("a.txt").unlink()
    assert prep4.step("a", ["a.txt"], _writer(calls), settings={"x": 2}) is True
    assert len(calls) == 4


def test_interrupted_step_leaves_no_output_and_no_record(prep):
    def boom(tmp):
        tmp["a.txt"].write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        prep.step("a", ["a.txt"], boom)
    assert not prep.path("a.txt").exists() and not partial(prep.path("a.txt")).exists()
    data = json.loads((prep.root_dir / "manifest.json").read_text())
    assert data["complete"] is False and "a" not in data["steps"]
    calls: list = []
    assert make_prep(prep.root_dir.parent).step("a", ["a.txt"], _writer(calls)) is True


def test_directory_outputs_are_renamed_whole(prep):
    def fn(tmp):
        d = tmp["bin"]
        d.mkdir()
        (d / "x.bin").write_bytes(b"\0\1")
        (d / "dict.txt").write_text("a 1\n")

    prep.step("bin", ["bin"], fn)
    rec = prep.record("bin")
    assert set(rec["outputs"]) == {"bin/x.bin", "bin/dict.txt"}
    assert "lines" not in rec["outputs"]["bin/x.bin"] and rec["outputs"]["bin/dict.txt"]["lines"] == 1
    assert not (prep.root_dir / "bin.partial").exists()


def test_pinned_output_modified_is_a_checksum_error(prep):
    prep.step("fetch", ["raw/src.tgz"], _writer([], "original"), pinned=True)
    prep.path("raw/src.tgz").write_text("tampered")
    with pytest.raises(UserError, match=r"checksum mismatch: .*raw/src.tgz"):
        make_prep(prep.root_dir.parent).step("fetch", ["raw/src.tgz"], _writer([], "original"), pinned=True)


def test_pinned_refetch_must_match_recorded_hash(prep):
    prep.step("fetch", ["raw/src.tgz"], _writer([], "original"), pinned=True)
    prep.path("raw/src.tgz").unlink()
    again = make_prep(prep.root_dir.parent)
    with pytest.raises(UserError, match=r"checksum mismatch: .*src.tgz.*recorded"):
        again.step("fetch", ["raw/src.tgz"], _writer([], "a different file"), pinned=True)
    assert not prep.path("raw/src.tgz").exists()
    assert make_prep(prep.root_dir.parent).step("fetch", ["raw/src.tgz"], _writer([], "original"), pinned=True)


def test_missing_input_names_the_file(prep):
    with pytest.raises(UserError, match=r"missing input .*nope.txt"):
        prep.step("a", ["a.txt"], _writer([]), inputs=["nope.txt"])


def test_corrupt_manifest_is_a_one_line_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match=r"corrupt manifest .*manifest.json"):
        Manifest.load(tmp_path)


def test_second_concurrent_prep_is_refused(tmp_path):
    with locked(tmp_path):
        with pytest.raises(UserError, match="being prepared by another process"):
            with locked(tmp_path):
                pass
    with locked(tmp_path):  # released
        pass


def test_line_count_includes_unterminated_last_line(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("a\nb")
    assert digest(p).lines == 2
    p.write_text("")
    assert digest(p).lines == 0
