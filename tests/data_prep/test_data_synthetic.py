"""Synthetic corpora: deterministic, sub-domains with their own lexicon and word order, small and parametrizable."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import data_prep
from data_prep.datasets import synthetic_lm, synthetic_mt
from data_prep.steps.files import write_lines
from data_prep.steps.progress import Reporter
from data_prep.steps.text import TextSettings, tokenize_files
from smx.errors import UserError


def test_word_order_rules():
    w = ["a", "b", "c", "d", "e"]
    assert synthetic_mt.reverse(w) == ["e", "d", "c", "b", "a"]
    assert synthetic_mt.swap_pairs(w) == ["b", "a", "d", "c", "e"]
    assert synthetic_mt.rotate(w) == ["b", "c", "d", "e", "a"]
    assert synthetic_mt.monotone(w) == w


def test_synthetic_mt_is_deterministic_and_follows_each_domains_rule():
    cfg = synthetic_mt.SyntheticMTConfig(train=200, valid=10, test=10)
    lex = synthetic_mt.lexicons(cfg)
    src, tgt, dom = synthetic_mt.generate(cfg, "train", lex)
    assert (src, tgt, dom) == synthetic_mt.generate(cfg, "train", synthetic_mt.lexicons(cfg))
    assert synthetic_mt.generate(cfg, "valid", lex)[0] != src[:10]
    assert len(set(dom)) == 4
    all_src = [set(d["src"]) for d in lex]
    assert all(not (a & b) for i, a in enumerate(all_src) for b in all_src[i + 1:])  # disjoint lexicons
    for s, t, d in zip(src, tgt, dom):
        entry = lex[int(d)]
        mapped = [entry["tgt"][w] for w in s.split()]
        assert t.split() == synthetic_mt.RULES[entry["rule"]](mapped)
        assert cfg.min_len <= len(s.split()) <= cfg.max_len
    other = synthetic_mt.generate(synthetic_mt.SyntheticMTConfig(seed=2, train=200), "train",
                                  synthetic_mt.lexicons(synthetic_mt.SyntheticMTConfig(seed=2)))
    assert other[0] != src


def test_synthetic_lm_follows_its_domain_chain():
    cfg = synthetic_lm.SyntheticLMConfig(train=100)
    chain = synthetic_lm.chains(cfg)
    lines, dom = synthetic_lm.generate(cfg, "train", chain)
    assert (lines, dom) == synthetic_lm.generate(cfg, "train", synthetic_lm.chains(cfg))
    for line, d in zip(lines, dom):
        words = line.split()
        succ = chain[int(d)]["successors"]
        assert all(b in succ[a] for a, b in zip(words, words[1:]))


@pytest.mark.parametrize("options,message", [
    ({"max_len": 2}, "option max_len: must be >= min_len"),
    ({"domains": 0}, "option domains: must be >= 1"),
    ({"words": 30000}, "domains \\* words must be <= 20000"),
])
def test_synthetic_options_are_validated(tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        data_prep.prepare("synthetic-mt", root=tmp_path, options=options, progress=False)
    with pytest.raises(UserError, match="branching: must be <= words"):
        data_prep.prepare("synthetic-lm", root=tmp_path, options={"branching": 9, "words": 5}, progress=False)


def test_api_contract():
    assert data_prep.names() == ["wmt14-en-de", "multi30k-en-de", "ding-de-en", "wikitext-103", "shakespeare",
                                 "synthetic-mt", "synthetic-lm"]
    i = data_prep.info("ding-de-en")
    assert (i.name, i.task, i.src_lang, i.tgt_lang, i.offline) == ("ding-de-en", "translation", "de", "en", True)
    lm = data_prep.info("shakespeare")
    assert (lm.task, lm.tgt_lang, lm.offline) == ("language_modeling", None, True)
    assert not data_prep.info("wmt14-en-de").offline
    from pathlib import Path

    assert data_prep.bin_dir("multi30k-en-de", Path("x")) == Path("x/multi30k-en-de/bin")
    with pytest.raises(UserError, match="unknown dataset 'wmt'; choices: wmt14-en-de"):
        data_prep.info("wmt")


def test_progress_bars_render(tmp_path):
    buf = io.StringIO()
    src = tmp_path / "a.en"
    write_lines(src, ["Hello, world!"] * 50)
    with Reporter(True, Console(file=buf, force_terminal=True, width=100)) as rep:
        tokenize_files([src], tmp_path / "out", TextSettings(lang="en"), 1, rep, total=50)
        rep.note("done tokenize")
    assert "tokenize out" in buf.getvalue() and "done tokenize" in buf.getvalue()
