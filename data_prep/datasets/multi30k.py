"""multi30k-en-de: Multi30k task 1 (Flickr30k captions), train / val / test_2016_flickr.

Files {train,val,test_2016_flickr}.{en,de}.gz (one sentence per line) from the dataset's public repository, or from
--source DIR_OR_URL holding files of those names. Same Moses pipeline as WMT (no cleaning: the splits keep their
standard sizes 29000 / 1014 / 1000), joint BPE with 10k merges, fairseq joined dictionary.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.steps.fetch import Source, fetch, offline_hint
from data_prep.steps.files import open_lines, write_lines
from data_prep.steps.runner import Prep
from data_prep.steps.spec import DatasetInfo, DatasetSpec

NAME = "multi30k-en-de"
BASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
SPLIT_FILES = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
LANGS = ("en", "de")
FILES = [f"{stem}.{lang}.gz" for stem in SPLIT_FILES.values() for lang in LANGS]


def build_raw(prep: Prep, source: Source | None, config) -> None:
    hint = offline_hint(FILES, NAME)
    for filename in FILES:
        orig = f"raw/orig/{filename}"
        meta: dict = {}

        def get(tmp: dict[str, Path], filename=filename, orig=orig, meta=meta) -> None:
            where = source.locate(filename) if source is not None else BASE_URL + filename
            meta["from"] = where
            fetch(where, tmp[orig], prep.reporter, hint)

        prep.step(f"fetch {filename}", [orig], get, meta=meta, pinned=True)
    outputs = {f"raw/{split}.{lang}": f"raw/orig/{stem}.{lang}.gz"
               for split, stem in SPLIT_FILES.items() for lang in LANGS}

    def gunzip(tmp: dict[str, Path]) -> None:
        for out, gz in outputs.items():
            write_lines(tmp[out], open_lines(prep.path(gz)))

    prep.step("gunzip", list(outputs), gunzip, inputs=list(outputs.values()), settings={"splits": SPLIT_FILES})


SPEC = DatasetSpec(
    info=DatasetInfo(
        name=NAME, task="translation", src_lang="en", tgt_lang="de", offline=False,
        description="Multi30k task 1 En-De (train, val, test_2016_flickr)"),
    build_raw=build_raw,
    default_bpe_merges=10000,
)
