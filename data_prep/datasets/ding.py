"""ding-de-en: real German-English sentence pairs from Debian's trans-de-en package (the Ding dictionary, GPL).

Source, in order: --source (a trans-de-en_*.deb, the de-en file, a directory holding either or an unpacked package,
or a URL of the .deb); the installed package (/usr/share/trans/de-en); else `apt-get download trans-de-en` into the
cache, unpacked without root (dpkg-deb -x). The file is GPL data: it is copied only into root/ding-de-en/raw (data/ is
gitignored), never into the repository.

Format: `German :: English`, both sides split by " | " into aligned sub-entries, alternatives separated by "; ",
annotations {f} [Am.] (...) <...> /ABBR/. We keep only sentence-like sub-entries (capitalized, ending in . ! ?, at
least MIN_WORDS words, no dictionary placeholders such as jdm./sth., no "/" alternatives), strip annotations, take
the first sentence-like alternative of each side, drop exact duplicate pairs and split deterministically by a hash of
the German sentence (3% valid, 3% test): the same German sentence never lands in two splits.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

from smx.errors import UserError

from data_prep.steps.fetch import Source, apt_download, deb_member, download
from data_prep.steps.files import open_lines, write_lines
from data_prep.steps.runner import Prep
from data_prep.steps.spec import SPLITS, DatasetInfo, DatasetSpec
from data_prep.steps.text import CleanSettings

PACKAGE = "trans-de-en"
MEMBER = "usr/share/trans/de-en"
INSTALLED = Path("/") / MEMBER
RAW = "raw/orig/de-en"
RULES_VERSION = 1
MIN_WORDS = 3
VALID_PER_MILLE = 30
TEST_PER_MILLE = 30
HINT = (f"; install it (apt-get install {PACKAGE}) or pass --source pointing at {PACKAGE}_*.deb or its file "
        f"{MEMBER}")

_ANNOTATIONS = [re.compile(p) for p in (r"\{[^{}]*\}", r"\[[^\[\]]*\]", r"<[^<>]*>", r"\([^()]*\)",
                                        r"/[A-Z][^/\s]*/")]
_PLACEHOLDER = re.compile(r"\b(?:jd[mnrs]?|jds|etw|sb|sth)\.|…|\.\.\.|~")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:])")
_SENTENCE_END = re.compile(r"[.!?][\"'“”’»]?$")
_MAYBE_SENTENCE = re.compile(r"[.!?]")
_OPENERS = "„\"'‚«»“‘¿¡"


def strip_annotations(text: str) -> str:
    for _ in range(2):  # nested annotations
        for pattern in _ANNOTATIONS:
            text = pattern.sub(" ", text)
    return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split()))


def is_sentence(text: str) -> bool:
    if not text or not (text[0].isupper() or text[0].isdigit() or text[0] in _OPENERS):
        return False
    if not _SENTENCE_END.search(text) or len(text.split()) < MIN_WORDS:
        return False
    if "/" in text or any(c in text for c in "{}[]<>") or _PLACEHOLDER.search(text):
        return False
    return True


def sentence_pairs(line: str) -> list[tuple[str, str]]:
    """The sentence-like (German, English) pairs of one dictionary line."""
    if line.startswith("#") or line.count(" :: ") != 1:
        return []
    de, en = line.split(" :: ")
    de_parts, en_parts = de.split(" | "), en.split(" | ")
    if len(de_parts) != len(en_parts):
        return []
    pairs = []
    for d, e in zip(de_parts, en_parts):
        if not (_MAYBE_SENTENCE.search(d) and _MAYBE_SENTENCE.search(e)):
            continue  # cheap pre-filter: no sentence-final punctuation anywhere
        ds = [a for a in (x.strip() for x in strip_annotations(d).split("; ")) if is_sentence(a)]
        es = [a for a in (x.strip() for x in strip_annotations(e).split("; ")) if is_sentence(a)]
        if ds and es:
            pairs.append((ds[0], es[0]))
    return pairs


def split_of(german: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(german.encode("utf-8")).digest()[:8], "big") % 1000
    if bucket < VALID_PER_MILLE:
        return "valid"
    if bucket < VALID_PER_MILLE + TEST_PER_MILLE:
        return "test"
    return "train"


def _installed_version() -> str | None:
    try:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Version}", PACKAGE], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def _from_source(prep: Prep, source: Source, meta: dict) -> Path:
    apt_cache = prep.cache_dir / "apt"
    if source.is_url:
        apt_cache.mkdir(parents=True, exist_ok=True)
        deb = apt_cache / source.value.rstrip("/").rsplit("/", 1)[-1]
        tmp = deb.with_name(deb.name + ".partial")
        download(source.value, tmp, prep.reporter, HINT)
        tmp.replace(deb)
        meta.update(origin="url", url=source.value)
        return deb_member(deb, MEMBER, apt_cache / deb.stem)
    p = source.path
    if p.is_dir():
        debs = sorted(p.glob(f"{PACKAGE}_*.deb"))
        for candidate in (p / MEMBER, p / "de-en"):
            if candidate.is_file():
                meta.update(origin="source file", path=str(candidate))
                return candidate
        if not debs:
            raise UserError(f"--source {p}: expected {PACKAGE}_*.deb, a de-en file or an unpacked package there")
        p = debs[-1]
    if p.suffix == ".deb":
        meta.update(origin="source .deb", path=str(p))
        return deb_member(p, MEMBER, apt_cache / f"{p.stem}-{hashlib.sha256(str(p).encode()).hexdigest()[:8]}")
    meta.update(origin="source file", path=str(p))
    return p


def locate(prep: Prep, source: Source | None, meta: dict) -> Path:
    """The Ding de-en file to read: --source, the installed package, or a .deb fetched into the cache."""
    if source is not None:
        return _from_source(prep, source, meta)
    if INSTALLED.is_file():
        meta.update(origin="installed", path=str(INSTALLED), version=_installed_version())
        return INSTALLED
    apt_cache = prep.cache_dir / "apt"
    deb = apt_download(PACKAGE, apt_cache, f"; {PACKAGE} is not installed{HINT}")
    meta.update(origin="apt-get download", deb=deb.name)
    return deb_member(deb, MEMBER, apt_cache / deb.stem)


def build_raw(prep: Prep, source: Source | None, config) -> None:
    fetched: dict = {}

    def fetch(tmp: dict[str, Path]) -> None:
        src = locate(prep, source, fetched)
        try:
            shutil.copyfile(src, tmp[RAW])
        except OSError as e:
            raise UserError(f"cannot read {src}: {e.strerror or e}") from None

    prep.step("fetch de-en", [RAW], fetch, meta=fetched, pinned=True)
    outputs = [f"raw/{split}.{lang}" for split in SPLITS for lang in ("de", "en")]
    counts: dict = {}

    def extract(tmp: dict[str, Path]) -> None:
        seen: set[tuple[str, str]] = set()
        splits: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
        lines = 0
        for line in open_lines(prep.path(RAW)):
            lines += 1
            for pair in sentence_pairs(line):
                if pair not in seen:
                    seen.add(pair)
                    splits[split_of(pair[0])].append(pair)
        for split, pairs in splits.items():
            write_lines(tmp[f"raw/{split}.de"], (d for d, _ in pairs))
            write_lines(tmp[f"raw/{split}.en"], (e for _, e in pairs))
        counts.update(dictionary_lines=lines, pairs=len(seen), **{s: len(p) for s, p in splits.items()})

    prep.step("extract sentences", outputs, extract, inputs=[RAW], meta=counts,
              settings={"rules": RULES_VERSION, "min_words": MIN_WORDS, "valid_per_mille": VALID_PER_MILLE,
                        "test_per_mille": TEST_PER_MILLE})


SPEC = DatasetSpec(
    info=DatasetInfo(
        name="ding-de-en", task="translation", src_lang="de", tgt_lang="en", offline=True,
        description="German-English example sentences from Debian trans-de-en (Ding, GPL); offline default"),
    build_raw=build_raw,
    # 2000 joint merges (~2.2k types): measured against 8000 under the same 7-minute one-core budget, a quarter of
    # the softmax gives 1.6-1.8x the updates and a better valid BLEU (bench/results/scale_ding.md)
    default_bpe_merges=2000,
    clean=CleanSettings(min_len=1, max_len=80, ratio=9.0),
)
