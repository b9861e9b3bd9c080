"""wikitext-103: WikiText-103 (v1, already tokenized, <unk> for rare words) for LM pretraining.

Source: wikitext-103-v1.zip from the URLs below, or --source DIR_OR_URL holding that zip, or a directory holding
the unzipped wiki.{train,valid,test}.tokens. The text is used as distributed (whitespace normalized, blank lines
kept as in fairseq's examples/language_model); joint BPE with 32000 merges by default (<unk> is kept whole);
--bpe-merges 0 gives the word-level setup.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from smx.errors import UserError

from data_prep.steps.archives import extract_zip
from data_prep.steps.fetch import Source, fetch, offline_hint
from data_prep.steps.runner import Prep
from data_prep.steps.spec import SPLITS, DatasetInfo, DatasetSpec
from data_prep.steps.text import TextSettings

NAME = "wikitext-103"
ZIP = "wikitext-103-v1.zip"
URLS = ("https://wikitext.smerity.com/wikitext-103-v1.zip",  # mirrors, tried in order
        "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip")
MEMBERS = {split: f"wiki.{split}.tokens" for split in SPLITS}


def _unzipped_dir(source: Source | None) -> Path | None:
    if source is None or source.is_url or not source.path.is_dir():
        return None
    for d in (source.path, source.path / "wikitext-103"):
        if all((d / m).is_file() for m in MEMBERS.values()):
            return d
    return None


def build_raw(prep: Prep, source: Source | None, config) -> None:
    unzipped = _unzipped_dir(source)
    outputs = {f"raw/{split}.en": member for split, member in MEMBERS.items()}
    if unzipped is not None:
        def copy(tmp: dict[str, Path]) -> None:
            for out, member in outputs.items():
                shutil.copyfile(unzipped / member, tmp[out])

        prep.step("fetch tokens", list(outputs), copy, meta={"from": str(unzipped)}, pinned=True)
        return
    orig = f"raw/orig/{ZIP}"
    meta: dict = {}

    def get(tmp: dict[str, Path]) -> None:
        candidates = [source.locate(ZIP)] if source is not None else list(URLS)
        for i, where in enumerate(candidates):
            meta["from"] = where
            try:
                fetch(where, tmp[orig], prep.reporter, offline_hint([ZIP], NAME))
                return
            except UserError:
                if i == len(candidates) - 1:
                    raise

    prep.step(f"fetch {ZIP}", [orig], get, meta=meta, pinned=True)

    def unzip(tmp: dict[str, Path]) -> None:
        extract_zip(prep.path(orig), {m: tmp[out] for out, m in outputs.items()}, prep.reporter)

    prep.step(f"extract {ZIP}", list(outputs), unzip, inputs=[orig], settings={"members": MEMBERS})


def text(split: str, lang: str) -> TextSettings:
    return TextSettings(lang=lang, moses=False)


SPEC = DatasetSpec(
    info=DatasetInfo(
        name=NAME, task="language_modeling", src_lang="en", tgt_lang=None, offline=False,
        description="WikiText-103 (tokenized Wikipedia) for LM pretraining"),
    build_raw=build_raw,
    default_bpe_merges=32000,
    text=text,
    bpe_glossaries=("<unk>",),
)
