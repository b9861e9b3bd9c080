"""End to end on synthetic-mt: fairseq loads the output; a re-run does no work; an interrupted prep (exception or
SIGKILL) is never mistaken for complete and, re-run, gives byte-identical outputs to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from dp_helpers import MERGES, NAME, OPTIONS, fairseq_counts, prepare_small as _prepare, reference, tree  # noqa: F401

import data_prep
from data_prep.steps import binarize, bpe
from data_prep.steps.indexed import count_sentences

def test_binarized_output_loads_with_fairseq(reference):
    assert data_prep.is_prepared(NAME, reference)
    bin_dir = data_prep.bin_dir(NAME, reference)
    assert fairseq_counts(bin_dir, "src", "tgt") == {"train": 300, "valid": 40, "test": 30}
    man = data_prep.manifest(NAME, reference)
    assert man["complete"] is True and man["settings"]["bpe_merges"] == MERGES
    assert man["summary"]["sizes"]["valid"]["sentences"] == 40
    assert man["summary"]["bpe_merges"] == MERGES
    dict_lines = len((bin_dir / "dict.src.txt").read_text().splitlines())
    assert man["summary"]["vocab"]["fairseq_vocab_size"] == dict_lines + 4
    assert (bin_dir / "dict.src.txt").read_bytes() == (bin_dir / "dict.tgt.txt").read_bytes()  # joined
    assert count_sentences(bin_dir / "test.src-tgt.tgt.idx") == 30
    assert set(man["summary"]["timings"]) == set(man["steps"])
    assert data_prep.verify(NAME, reference) == []
    assert not (bin_dir / "preprocess.log").exists() and (reference / NAME / "logs" / "binarize.log").is_file()


def test_rerun_of_finished_prep_does_no_work(reference, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in (reference / NAME).rglob("*") if p.is_file()}

    def forbidden(*a, **k):
        raise AssertionError("no step may run")

    for mod, fn in ((binarize, "run"), (bpe, "learn"), (bpe, "apply")):
        monkeypatch.setattr(mod, fn, forbidden)
    _prepare(reference)
    after = {p: p.stat().st_mtime_ns for p in (reference / NAME).rglob("*") if p.is_file()}
    assert after == before  # not even the manifest was rewritten


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import data_prep
    from data_prep.steps import binarize, bpe

    where = sys.argv[2]
    real_apply = bpe.apply

    def apply(codes, sha, inputs, output, *a, **k):
        if where == "bpe" and output.name.startswith("train.tgt"):
            output.write_text("partial\\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return real_apply(codes, sha, inputs, output, *a, **k)

    def run(bpe_dir, dest, *a, **k):
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "train.src-tgt.src.bin").write_bytes(b"partial")
        (dest / "dict.src.txt").write_text("a 1\\n")
        os.kill(os.getpid(), signal.SIGKILL)

    bpe.apply = apply
    if where == "binarize":
        binarize.run = run
    data_prep.prepare("synthetic-mt", root=Path(sys.argv[1]), bpe_merges=%d, progress=False, options=%r)
""") % (MERGES, OPTIONS)


def _killed_run(root: Path, where: str) -> None:
    res = subprocess.run([sys.executable, "-c", KILLER, str(root), where], capture_output=True, text=True,
                         cwd=root, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr


def test_sigkill_midway_is_never_complete_and_rerun_is_byte_identical(reference, tmp_path):
    _killed_run(tmp_path, "bpe")
    d = tmp_path / NAME
    assert not data_prep.is_prepared(NAME, tmp_path)
    assert json.loads((d / "manifest.json").read_text())["complete"] is False
    assert (d / "bpe" / "train.tgt.partial").exists() and not (d / "bpe" / "train.tgt").exists()
    _killed_run(tmp_path, "binarize")  # resumes, then dies inside binarization
    assert not data_prep.is_prepared(NAME, tmp_path)
    assert (d / "bin.partial").is_dir() and not (d / "bin").exists()
    assert "binarize" not in json.loads((d / "manifest.json").read_text())["steps"]
    _prepare(tmp_path)
    assert data_prep.is_prepared(NAME, tmp_path)
    assert tree(d) == tree(reference / NAME)
    assert not any(p.name.endswith(".partial") for p in d.rglob("*"))


def test_is_prepared_false_for_missing_or_damaged_bin(reference, tmp_path):
    import shutil

    assert not data_prep.is_prepared(NAME, tmp_path)
    shutil.copytree(reference / NAME, tmp_path / NAME)
    assert data_prep.is_prepared(NAME, tmp_path)
    with open(tmp_path / NAME / "bin" / "train.src-tgt.src.bin", "ab") as f:
        f.write(b"x")
    assert not data_prep.is_prepared(NAME, tmp_path)
    assert any("train.src-tgt.src.bin" in p for p in data_prep.verify(NAME, tmp_path))


def test_manifest_hashes_every_input_and_output(reference):
    man = data_prep.manifest(NAME, reference)
    d = reference / NAME
    recorded = {rel for rec in man["steps"].values() for rel in rec["outputs"]}
    on_disk = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()} - {"manifest.json", ".lock",
                                                                                  "logs/binarize.log"}
    assert recorded == on_disk
    bin_inputs = man["steps"]["binarize"]["inputs"]
    assert set(bin_inputs) == {f"bpe/{s}.{l}" for s in ("train", "valid", "test") for l in ("src", "tgt")}
    assert os.path.getsize(d / "bin" / "dict.src.txt") == man["steps"]["binarize"]["outputs"]["bin/dict.src.txt"][
        "bytes"]
