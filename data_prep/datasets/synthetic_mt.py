"""synthetic-mt: a generated, deterministic parallel corpus with sub-domains, so that routing matters.

Each sub-domain has its own source lexicon, its own word-for-word translation table into a disjoint target lexicon and
its own word-order rule (monotone, reverse, swap adjacent pairs, rotate left). A sentence is drawn from one domain
(Zipf-weighted words); its translation maps every word and applies the domain's rule. The domain of every sentence
is written to raw/{split}.domain for routing analyses. Everything follows from the options (sizes, seed).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep.steps.files import write_lines
from data_prep.steps.runner import Prep
from data_prep.steps.spec import SPLITS, DatasetInfo, DatasetSpec
from data_prep.steps.text import TextSettings

GENERATOR_VERSION = 1
SRC_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
TGT_SYLLABLES = [c + v for c in ("ch", "sh", "th", "kr", "pl", "gw", "x", "q", "j", "h", "w", "y") for v in "aeiouy"]


def monotone(words: list[str]) -> list[str]:
    return list(words)


def reverse(words: list[str]) -> list[str]:
    return words[::-1]


def swap_pairs(words: list[str]) -> list[str]:
    out = list(words)
    for i in range(0, len(out) - 1, 2):
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def rotate(words: list[str]) -> list[str]:
    return words[1:] + words[:1]


RULES: dict[str, Callable[[list[str]], list[str]]] = {
    "monotone": monotone, "reverse": reverse, "swap_pairs": swap_pairs, "rotate": rotate}


@dataclass(frozen=True)
class SyntheticMTConfig:
    train: int = 4000
    valid: int = 200
    test: int = 200
    domains: int = 4
    words: int = 40  # source words per domain (each has one target word)
    min_len: int = 3
    max_len: int = 10
    seed: int = 1

    def __post_init__(self) -> None:
        for key in ("train", "valid", "test", "domains", "words", "min_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"option {key}: must be >= 1, got {getattr(self, key)}")
        if self.max_len < self.min_len:
            raise ValueError(f"option max_len: must be >= min_len ({self.min_len}), got {self.max_len}")
        if self.domains * self.words > 20000:
            raise ValueError(f"option words: domains * words must be <= 20000, got {self.domains * self.words}")


def make_words(rng: random.Random, n: int, syllables: list[str], taken: set[str]) -> list[str]:
    """n new pseudo-words of 2-3 syllables, none already in `taken` (which is updated)."""
    out: list[str] = []
    while len(out) < n:
        word = "".join(rng.choice(syllables) for _ in range(rng.choice((2, 2, 3))))
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


def zipf_weights(n: int) -> list[float]:
    return [1.0 / (i + 1) for i in range(n)]


def lexicons(cfg: SyntheticMTConfig) -> list[dict]:
    """Per domain: source words, their translations and the word-order rule name."""
    rng = random.Random(f"synthetic-mt:{cfg.seed}:lexicon")
    taken: set[str] = set()
    rule_names = list(RULES)
    out = []
    for d in range(cfg.domains):
        src = make_words(rng, cfg.words, SRC_SYLLABLES, taken)
        tgt = make_words(rng, cfg.words, TGT_SYLLABLES, taken)
        out.append({"domain": d, "rule": rule_names[d % len(rule_names)], "src": src, "tgt": dict(zip(src, tgt))})
    return out


def generate(cfg: SyntheticMTConfig, split: str, lex: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """(source lines, target lines, domain ids) of one split."""
    rng = random.Random(f"synthetic-mt:{cfg.seed}:{split}")
    weights = zipf_weights(cfg.words)
    src_lines, tgt_lines, domains = [], [], []
    for _ in range(getattr(cfg, split)):
        d = rng.randrange(cfg.domains)
        words = rng.choices(lex[d]["src"], weights=weights, k=rng.randint(cfg.min_len, cfg.max_len))
        target = RULES[lex[d]["rule"]]([lex[d]["tgt"][w] for w in words])
        src_lines.append(" ".join(words))
        tgt_lines.append(" ".join(target))
        domains.append(str(d))
    return src_lines, tgt_lines, domains


def build_raw(prep: Prep, source, cfg: SyntheticMTConfig) -> None:
    outputs = [f"raw/{split}.{ext}" for split in SPLITS for ext in ("src", "tgt", "domain")] + ["raw/lexicon.json"]

    def fn(tmp: dict[str, Path]) -> None:
        lex = lexicons(cfg)
        for split in SPLITS:
            src, tgt, dom = generate(cfg, split, lex)
            write_lines(tmp[f"raw/{split}.src"], src)
            write_lines(tmp[f"raw/{split}.tgt"], tgt)
            write_lines(tmp[f"raw/{split}.domain"], dom)
        tmp["raw/lexicon.json"].write_text(json.dumps(lex, indent=1, sort_keys=True) + "\n", encoding="utf-8")

    prep.step("generate", outputs, fn, settings={"config": asdict(cfg), "generator": GENERATOR_VERSION})


def plain_text(split: str, lang: str) -> TextSettings:
    return TextSettings(lang=lang, moses=False)


SPEC = DatasetSpec(
    info=DatasetInfo(
        name="synthetic-mt", task="translation", src_lang="src", tgt_lang="tgt", offline=True,
        description="generated parallel corpus: sub-domains with own lexicon and word order (tests, smoke runs)"),
    build_raw=build_raw,
    default_bpe_merges=0,
    text=plain_text,
    takes_source=False,
    config_type=SyntheticMTConfig,
)
