"""The shared steps after raw text exists: tokenize -> clean (train) -> joint BPE -> binarize -> summary.

Step outputs (relative to root/<name>):
  tok/{split}.{lang}            Moses-tokenized, pre-BPE text (the BLEU reference); tok/train.uncleaned.{lang} when the
                                dataset cleans its training split
  bpe/codes, bpe/{split}.{lang} subword-nmt codes and segmented text ("@@ " continuation marker)
  bin/                          fairseq-preprocess output (joined dictionary)
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from smx.errors import UserError

from data_prep.steps import binarize, bpe
from data_prep.steps.files import files_under, open_lines, remove
from data_prep.steps.indexed import count_tokens
from data_prep.steps.runner import Prep
from data_prep.steps.spec import SPLITS, DatasetSpec
from data_prep.steps.text import clean_files, tokenize_files


def _check_parallel(prep: Prep, split: str, files: dict[str, list[str]]) -> None:
    """Every language of a split has the same number of lines, and the split is not empty."""
    counts = {lang: sum(prep.output_lines(r) for r in rels) for lang, rels in files.items()}
    langs = list(counts)
    if len(langs) == 2 and counts[langs[0]] != counts[langs[1]]:
        a, b = (prep.path(files[lang][-1]) for lang in langs)
        raise UserError(f"line-count mismatch in {split}: {a} has {counts[langs[0]]} lines, {b} has "
                        f"{counts[langs[1]]}")
    for lang, n in counts.items():
        if n == 0:
            raise UserError(f"empty split: {prep.path(files[lang][-1])} has no lines")


def tok_name(spec: DatasetSpec, split: str, lang: str) -> str:
    if split == "train" and spec.clean is not None and spec.info.tgt_lang is not None:
        return f"tok/train.uncleaned.{lang}"
    return f"tok/{split}.{lang}"


def run(prep: Prep, spec: DatasetSpec, merges: int) -> None:
    info = spec.info
    langs = info.langs
    for split in SPLITS:
        _check_parallel(prep, split, {lang: spec.raw_files(split, lang) for lang in langs})
    for split in SPLITS:
        for lang in langs:
            _tokenize(prep, spec, split, lang)
    if spec.clean is not None and info.tgt_lang is not None:
        _clean(prep, spec)
    for split in SPLITS:
        _check_parallel(prep, split, {lang: [f"tok/{split}.{lang}"] for lang in langs})
    _bpe(prep, spec, merges)
    bpe_files = [f"bpe/{split}.{lang}" for split in SPLITS for lang in langs]

    def do_binarize(tmp: dict[str, Path]) -> None:
        binarize.run(prep.path("bpe"), tmp["bin"], info.src_lang, info.tgt_lang, prep.workers,
                     prep.path("logs/binarize.log"), prep.reporter)

    prep.step("binarize", ["bin"], do_binarize, inputs=bpe_files,
              settings=binarize.settings(info.src_lang, info.tgt_lang))


def _tokenize(prep: Prep, spec: DatasetSpec, split: str, lang: str) -> None:
    raw = spec.raw_files(split, lang)
    out = tok_name(spec, split, lang)
    settings = spec.text(split, lang)
    total = sum(prep.output_lines(r) for r in raw)

    meta: dict = {}

    def fn(tmp: dict[str, Path]) -> None:
        _, words = tokenize_files([prep.path(r) for r in raw], tmp[out], settings, prep.workers, prep.reporter,
                                  total)
        meta["words"] = {out: words}

    prep.step(f"tokenize {split}.{lang}", [out], fn, inputs=raw, settings={"text": settings.as_json()}, meta=meta)


def _clean(prep: Prep, spec: DatasetSpec) -> None:
    src, tgt = spec.info.src_lang, spec.info.tgt_lang
    ins = [f"tok/train.uncleaned.{src}", f"tok/train.uncleaned.{tgt}"]
    outs = [f"tok/train.{src}", f"tok/train.{tgt}"]
    meta: dict = {}

    def fn(tmp: dict[str, Path]) -> None:
        kept, total, words = clean_files(*(prep.path(r) for r in ins), tmp[outs[0]], tmp[outs[1]], spec.clean,
                                         prep.reporter)
        meta.update(kept=kept, total=total, dropped=total - kept, words=dict(zip(outs, words)))

    prep.step("clean train", outs, fn, inputs=ins, settings={"clean": dataclasses.asdict(spec.clean)}, meta=meta)


def _bpe(prep: Prep, spec: DatasetSpec, merges: int) -> None:
    langs = spec.info.langs
    glossaries = spec.bpe_glossaries
    if merges > 0:
        train = [f"tok/train.{lang}" for lang in langs]
        learned: dict = {}

        def learn(tmp: dict[str, Path]) -> None:
            learned["merges_learned"] = bpe.learn([prep.path(r) for r in train], tmp["bpe/codes"], merges,
                                                  prep.reporter)

        prep.step("learn bpe", ["bpe/codes"], learn, inputs=train, settings=bpe.settings(merges, glossaries),
                  meta=learned)
    for split in SPLITS:
        for lang in langs:
            src, out = f"tok/{split}.{lang}", f"bpe/{split}.{lang}"
            if merges > 0:
                _apply(prep, src, out, glossaries)
            else:
                prep.step(f"apply bpe {split}.{lang}", [out],
                          lambda tmp, src=src, out=out: shutil.copyfile(prep.path(src), tmp[out]),
                          inputs=[src], settings={"merges": 0, "copy": True})


def _apply(prep: Prep, src: str, out: str, glossaries: tuple[str, ...]) -> None:
    def fn(tmp: dict[str, Path]) -> None:
        codes = prep.path("bpe/codes")
        bpe.apply(codes, prep.digest(codes).sha256, [prep.path(src)], tmp[out], prep.workers, prep.reporter,
                  glossaries, total=prep.output_lines(src))

    prep.step(f"apply bpe {out.removeprefix('bpe/')}", [out], fn, inputs=["bpe/codes", src],
              settings={"separator": bpe.SEPARATOR + " ", "glossaries": list(glossaries)})


def summary(prep: Prep, spec: DatasetSpec) -> dict:
    """Sizes (sentences, BPE tokens, bytes), vocabulary, BPE merges and step timings, from recorded outputs."""
    info = spec.info
    src = info.src_lang
    bin_dir = prep.path("bin")
    sizes: dict = {}
    for split in SPLITS:
        entry: dict = {"sentences": prep.output_lines(f"bpe/{split}.{src}")}
        for lang in info.langs:
            stem = split if info.tgt_lang is None else f"{split}.{src}-{info.tgt_lang}.{lang}"
            entry[f"tokens_{lang}"] = count_tokens(bin_dir / f"{stem}.idx")
            entry[f"words_{lang}"] = _words(prep, f"tok/{split}.{lang}")
        sizes[split] = entry
    dict_files = ["dict.txt"] if info.tgt_lang is None else [f"dict.{lang}.txt" for lang in info.langs]
    dict_lines = sum(1 for _ in open_lines(bin_dir / dict_files[0]))
    learn = prep.record("learn bpe")
    timings = {name: rec["seconds"] for name, rec in prep.manifest.steps.items()}
    return {
        "sizes": sizes,
        "vocab": {"dict_entries": dict_lines, "fairseq_vocab_size": dict_lines + 4, "joined": info.tgt_lang is not None},
        "bpe_merges": learn["meta"].get("merges_learned", 0) if learn else 0,
        "bin_bytes": sum(f.stat().st_size for f in files_under(bin_dir)),
        "timings": timings,
        "total_seconds": round(sum(timings.values()), 3),
    }


def _words(prep: Prep, rel: str) -> int:
    for name, rec in prep.manifest.steps.items():
        if rel in rec["outputs"]:
            words = rec["meta"].get("words", {})
            if rel in words:
                return int(words[rel])
    return sum(len(line.split()) for line in open_lines(prep.path(rel)))


def drop_stale(prep: Prep, planned: set[str]) -> None:
    """Forget steps of an earlier configuration (e.g. BPE codes after --bpe-merges 0) and delete their outputs."""
    keep = {rel for name in planned if name in prep.manifest.steps for rel in prep.manifest.steps[name]["outputs"]}
    for name in [n for n in prep.manifest.steps if n not in planned]:
        for rel in prep.manifest.steps.pop(name)["outputs"]:
            if rel not in keep:
                remove(prep.path(rel))
