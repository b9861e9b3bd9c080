"""Fetching: --source dirs, file:// and loopback http:// URLs, errors naming files, archives, .deb unpacking."""

from __future__ import annotations

import shutil

import pytest
from dp_builders import LoopbackServer, closed_port_url, write_deb, write_gz, write_tgz

from data_prep.steps import archives, fetch
from data_prep.steps.files import open_lines
from data_prep.steps.progress import Reporter
from smx.errors import UserError

QUIET = Reporter(False)


def test_parse_source_validates_before_anything_is_written(tmp_path):
    assert fetch.parse_source(None) is None
    assert fetch.parse_source("http://example.org/x/").is_url
    with pytest.raises(UserError, match=r"--source: no such file or directory: .*nowhere"):
        fetch.parse_source(tmp_path / "nowhere")
    src = fetch.parse_source(tmp_path)
    with pytest.raises(UserError, match=r"--source .*: missing dev.tgz \(expected .*dev.tgz\)"):
        src.locate("dev.tgz")
    (tmp_path / "dev.tgz").write_bytes(b"x")
    assert src.locate("dev.tgz") == str(tmp_path / "dev.tgz")
    assert fetch.Source("http://h/base", True).locate("a b.tgz") == "http://h/base/a%20b.tgz"


def test_http_and_file_url_download(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "data.txt").write_bytes(b"x" * 300_000)
    with LoopbackServer(www) as server:
        fetch.fetch(server.url + "data.txt", tmp_path / "got", QUIET)
        assert (tmp_path / "got").read_bytes() == b"x" * 300_000
        with pytest.raises(UserError, match=r"download failed: http://127.0.0.1:\d+/missing.tgz: HTTP 404"):
            fetch.fetch(server.url + "missing.tgz", tmp_path / "m", QUIET)
    fetch.fetch((www / "data.txt").as_uri(), tmp_path / "got2", QUIET)
    assert (tmp_path / "got2").read_bytes() == b"x" * 300_000
    with pytest.raises(UserError, match=r"cannot download file:///.*nothere"):
        fetch.fetch((www / "nothere").as_uri(), tmp_path / "m", QUIET)


def test_no_network_says_which_files_to_place_where(tmp_path):
    hint = fetch.offline_hint(["a.tgz", "b.tgz"], "wmt14-en-de")
    with pytest.raises(UserError) as e:
        fetch.fetch(closed_port_url() + "a.tgz", tmp_path / "x", QUIET, hint)
    msg = str(e.value)
    assert "\n" not in msg and "cannot download http://127.0.0.1" in msg
    assert "place a.tgz, b.tgz in a directory DIR and run `smx data prep wmt14-en-de --source DIR`" in msg


def test_tar_members_extracted_in_one_pass_and_errors(tmp_path):
    tgz = write_tgz(tmp_path / "a.tgz", {"training/x.de": "a\n", "training/x.en": "b\n", "other": "c"})
    archives.extract_tar(tgz, {"training/x.de": tmp_path / "de", "x.en": tmp_path / "en"}, QUIET)
    assert (tmp_path / "de").read_text() == "a\n" and (tmp_path / "en").read_text() == "b\n"
    with pytest.raises(UserError, match=r"a.tgz: missing nope \(is this the right archive\?\)"):
        archives.extract_tar(tgz, {"nope": tmp_path / "n"}, QUIET)
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(tgz.read_bytes()[:60])
    with pytest.raises(UserError, match=r"corrupt archive .*bad.tgz"):
        archives.extract_tar(bad, {"training/x.de": tmp_path / "n"}, QUIET)


def test_gzip_errors_name_the_file(tmp_path):
    gz = write_gz(tmp_path / "t.en.gz", "one\ntwo\n")
    assert list(open_lines(gz)) == ["one", "two"]
    (tmp_path / "bad.en.gz").write_bytes(gz.read_bytes()[:15])
    with pytest.raises(UserError, match=r"corrupt gzip file .*bad.en.gz"):
        list(open_lines(tmp_path / "bad.en.gz"))
    (tmp_path / "plain.gz").write_text("not gzip")
    with pytest.raises(UserError, match=r"corrupt gzip file .*plain.gz"):
        list(open_lines(tmp_path / "plain.gz"))
    with pytest.raises(UserError, match=r"cannot read .*absent.gz"):
        list(open_lines(tmp_path / "absent.gz"))


def test_sgm_segments(tmp_path):
    p = tmp_path / "t.sgm"
    p.write_text('<doc docid="1">\n<seg id="1"> Hello  world. </seg>\n<p>\n<seg id="2">It’s me.</seg>\n</doc>\n')
    assert list(archives.sgm_segments(p)) == ["Hello  world.", "It’s me."]


@pytest.mark.parametrize("use_dpkg", [True, False])
def test_deb_member_unpacks_without_root(tmp_path, monkeypatch, use_dpkg):
    if use_dpkg and shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb is missing: install dpkg (apt-get install dpkg) to test the dpkg-deb path", pytrace=False)
    if not use_dpkg:
        monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    deb = write_deb(tmp_path / "trans-de-en_1.9-6_all.deb", {"usr/share/trans/de-en": b"A :: B\n"})
    got = fetch.deb_member(deb, "usr/share/trans/de-en", tmp_path / "unpacked")
    assert got.read_bytes() == b"A :: B\n"
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"corrupt .deb .*bad.deb"):
        fetch.deb_member(bad, "usr/share/trans/de-en", tmp_path / "unpacked2")
    with pytest.raises(UserError, match=r"has no usr/share/nothing"):
        fetch.deb_member(deb, "usr/share/nothing", tmp_path / "unpacked3")


def test_external_tool_failure_is_one_line_with_hint():
    import sys

    cmd = [sys.executable, "-c", "import sys; sys.stderr.write('noise\\nE: Unable to locate package\\n'); sys.exit(100)"]
    with pytest.raises(UserError) as e:
        fetch._run_tool(cmd, "apt-get download trans-de-en", "; pass --source")
    assert str(e.value) == "apt-get download trans-de-en failed (exit 100: E: Unable to locate package); pass --source"
    with pytest.raises(UserError, match="no-such-tool-xyz not found"):
        fetch._run_tool(["no-such-tool-xyz"], "x", "")
