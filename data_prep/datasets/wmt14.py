"""wmt14-en-de: WMT'14 English-German as prepared for the SparseMixer reference (Transformer-Clinic wmt14en-de.sh).

train: europarl-v7 + commoncrawl + news-commentary-v12 (de-en), normalize-punctuation | remove-non-printing-char |
       tokenizer -a, then clean-corpus-n 1-80 (ratio 1.5 here; the reference script ran clean-corpus-n with its
       default ratio 9 -- see the manifest's clean settings)
valid: newstest2013 (dev.tgz), same text pipeline, not cleaned
test:  newstest2014 full (test-full.tgz, src en / ref de .sgm), seg text with ’ -> ', tokenizer -a only
BPE:   subword-nmt learned on train.en + train.de (32764 merges, the reference's BPE_TOKENS); fairseq joined dictionary.
Archives come from the statmt URLs below or, with --source DIR_OR_URL, from files of the same names.
"""

from __future__ import annotations

from pathlib import Path

from smx.errors import UserError

from data_prep.steps.archives import extract_tar, sgm_segments
from data_prep.steps.fetch import Source, fetch, offline_hint
from data_prep.steps.files import write_lines
from data_prep.steps.runner import Prep
from data_prep.steps.spec import DatasetInfo, DatasetSpec
from data_prep.steps.text import CleanSettings, TextSettings

NAME = "wmt14-en-de"
ARCHIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "training-parallel-europarl-v7.tgz": (
        "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
        ("training/europarl-v7.de-en.en", "training/europarl-v7.de-en.de")),
    "training-parallel-commoncrawl.tgz": (
        "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
        ("commoncrawl.de-en.en", "commoncrawl.de-en.de")),
    "training-parallel-nc-v12.tgz": (
        "http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz",
        ("training/news-commentary-v12.de-en.en", "training/news-commentary-v12.de-en.de")),
    "dev.tgz": (
        "http://data.statmt.org/wmt17/translation-task/dev.tgz",
        ("dev/newstest2013.en", "dev/newstest2013.de")),
    "test-full.tgz": (
        "http://statmt.org/wmt14/test-full.tgz",
        ("test-full/newstest2014-deen-src.en.sgm", "test-full/newstest2014-deen-ref.de.sgm")),
}
TRAIN_CORPORA = ("europarl-v7.de-en", "commoncrawl.de-en", "news-commentary-v12.de-en")
TEST_SGM = {"en": "raw/parts/newstest2014-deen-src.en.sgm", "de": "raw/parts/newstest2014-deen-ref.de.sgm"}


def part(member: str) -> str:
    return "raw/parts/" + member.rsplit("/", 1)[-1]


def raw_files(split: str, lang: str) -> list[str]:
    if split == "train":
        return [f"raw/parts/{corpus}.{lang}" for corpus in TRAIN_CORPORA]
    if split == "valid":
        return [f"raw/parts/newstest2013.{lang}"]
    return [f"raw/test.{lang}"]


def text(split: str, lang: str) -> TextSettings:
    if split == "test":
        return TextSettings(lang=lang, normalize_punct=False, remove_non_printing=False, replace=(("’", "'"),))
    return TextSettings(lang=lang)


def fetch_archives(prep: Prep, source: Source | None, archives: dict[str, tuple[str, tuple[str, ...]]],
                   dataset: str) -> None:
    """Fetch (pinned) and extract every archive; shared by the tgz-based datasets."""
    hint = offline_hint(list(archives), dataset)
    for filename, (url, members) in archives.items():
        orig = f"raw/orig/{filename}"
        meta: dict = {}

        def get(tmp: dict[str, Path], filename=filename, url=url, orig=orig, meta=meta) -> None:
            where = source.locate(filename) if source is not None else url
            meta["from"] = where
            fetch(where, tmp[orig], prep.reporter, hint)

        prep.step(f"fetch {filename}", [orig], get, meta=meta, pinned=True)
        outs = {m: part(m) for m in members}

        def extract(tmp: dict[str, Path], orig=orig, outs=outs) -> None:
            extract_tar(prep.path(orig), {m: tmp[rel] for m, rel in outs.items()}, prep.reporter)

        prep.step(f"extract {filename}", list(outs.values()), extract, inputs=[orig],
                  settings={"members": list(members)})


def check_pairs(prep: Prep, pairs: list[tuple[str, str]]) -> None:
    for a, b in pairs:
        na, nb = prep.output_lines(a), prep.output_lines(b)
        if na != nb:
            raise UserError(f"line-count mismatch: {prep.path(a)} has {na} lines, {prep.path(b)} has {nb}")


def build_raw(prep: Prep, source: Source | None, config) -> None:
    fetch_archives(prep, source, ARCHIVES, NAME)
    check_pairs(prep, [(f"raw/parts/{c}.en", f"raw/parts/{c}.de") for c in TRAIN_CORPORA]
                + [("raw/parts/newstest2013.en", "raw/parts/newstest2013.de")])

    def segs(tmp: dict[str, Path]) -> None:
        for lang, sgm in TEST_SGM.items():
            write_lines(tmp[f"raw/test.{lang}"], sgm_segments(prep.path(sgm)))

    prep.step("extract newstest2014 segments", ["raw/test.en", "raw/test.de"], segs, inputs=list(TEST_SGM.values()),
              settings={"seg": "grep '<seg id' | strip <seg id=N> and </seg>"})


SPEC = DatasetSpec(
    info=DatasetInfo(
        name=NAME, task="translation", src_lang="en", tgt_lang="de", offline=False,
        description="WMT'14 En-De (europarl, commoncrawl, news-commentary-v12; newstest2013/2014) as in SparseMixer"),
    build_raw=build_raw,
    default_bpe_merges=32764,
    text=text,
    clean=CleanSettings(min_len=1, max_len=80, ratio=1.5),
    raw_files=raw_files,
)
