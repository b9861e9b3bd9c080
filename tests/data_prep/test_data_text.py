"""Moses text processing, cleaning and BPE: values, not just 'it runs'."""

from __future__ import annotations

import pytest

from data_prep.steps import bpe
from data_prep.steps.files import open_lines, write_lines
from data_prep.steps.progress import Reporter
from data_prep.steps.text import CleanSettings, TextSettings, clean_files, process_line, tokenize_files
from smx.errors import UserError

QUIET = Reporter(False)


def test_moses_pipeline_normalizes_removes_control_chars_and_splits_hyphens():
    s = TextSettings(lang="de")
    out = process_line("„Das ist’s“ – sagte er:\x07 E-Mail & Co.", s)
    assert out == "\" Das ist ' s \" - sagte er : E @-@ Mail & Co."  # Moses splits ' on both sides in German
    assert "&amp;" not in out  # escape=False, recorded in the manifest
    assert TextSettings(lang="en").as_json()["moses_default_escape"] is True


def test_escape_switch_and_test_set_settings():
    assert process_line("a & b", TextSettings(lang="en", escape=True)) == "a &amp; b"
    test = TextSettings(lang="en", normalize_punct=False, remove_non_printing=False, replace=(("’", "'"),))
    assert process_line("It’s  fine", test) == "It 's fine"


def test_pretokenized_text_only_normalizes_whitespace():
    s = TextSettings(lang="en", moses=False)
    assert process_line("  = Title =  with <unk>\t@-@ x ", s) == "= Title = with <unk> @-@ x"


@pytest.mark.parametrize(
    "src,tgt,keep",
    [("a b c", "x y z", True), ("", "x", False), ("a", "x y", False), ("a b", "x y z", True),
     ("w " * 81, "x " * 81, False), ("a " * 80, "x " * 80, True), ("a b", "x y z w", False)],
)
def test_clean_rules_match_clean_corpus_n(src, tgt, keep):
    assert CleanSettings(min_len=1, max_len=80, ratio=1.5).keep(" ".join(src.split()), " ".join(tgt.split())) is keep


def test_clean_settings_validate():
    with pytest.raises(ValueError, match="clean.ratio"):
        CleanSettings(ratio=0)


def test_clean_files_counts_and_mismatch(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_lines(a, ["one two", "", "x " * 100])
    write_lines(b, ["eins zwei", "leer", "y " * 100])
    kept, total, words = clean_files(a, b, tmp_path / "oa", tmp_path / "ob", CleanSettings(), QUIET)
    assert (kept, total, words) == (1, 3, (2, 2))
    assert list(open_lines(tmp_path / "ob")) == ["eins zwei"]
    write_lines(b, ["eins zwei"])
    with pytest.raises(UserError, match=r"line-count mismatch: .*/a and .*/b"):
        clean_files(a, b, tmp_path / "oa", tmp_path / "ob", CleanSettings(), QUIET)


def test_tokenize_with_worker_pool_equals_serial(tmp_path, monkeypatch):
    import data_prep.steps.text as text

    monkeypatch.setattr(text, "_CHUNK_LINES", 7)  # several chunks in flight with 2 workers
    src = tmp_path / "raw.en"
    write_lines(src, [f"Line {i}: it’s a well-known e-mail, isn't it?" for i in range(60)])
    s = TextSettings(lang="en")
    n1 = tokenize_files([src], tmp_path / "serial", s, 1, QUIET)
    n2 = tokenize_files([src], tmp_path / "pool", s, 2, QUIET)
    assert n1 == n2 == (60, 60 * 17)
    assert (tmp_path / "serial").read_bytes() == (tmp_path / "pool").read_bytes()


def test_bpe_learn_and_apply_joint(tmp_path):
    a, b = tmp_path / "train.en", tmp_path / "train.de"
    write_lines(a, ["lower lowest newer newest"] * 5)
    write_lines(b, ["niedriger niedrigste neuer neueste"] * 5)
    codes = tmp_path / "codes"
    learned = bpe.learn([a, b], codes, 20, QUIET)
    assert learned == 20
    assert codes.read_text().startswith("#version: 0.2\n")
    sha = "x"
    out = tmp_path / "out"
    bpe.apply(codes, sha, [tmp_path / "train.en"], out, 1, QUIET)
    first = next(open_lines(out))
    assert first.replace("@@ ", "") == "lower lowest newer newest"
    write_lines(tmp_path / "unk", ["<unk> lowerlow"])
    bpe.apply(codes, sha + "g", [tmp_path / "unk"], out, 1, QUIET, glossaries=("<unk>",))
    assert next(open_lines(out)).split()[0] == "<unk>"
