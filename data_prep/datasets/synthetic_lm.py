"""synthetic-lm: generated, deterministic monolingual text with sub-domains (the tiny LM recipe's data).

Each sub-domain has its own lexicon and its own sparse first-order Markov chain (every word has `branching`
successors with Zipf weights), so the next word is predictable once the domain is known: a model that routes by
domain can do better. The domain of every line is written to raw/{split}.domain.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep.steps.files import write_lines
from data_prep.steps.runner import Prep
from data_prep.steps.spec import SPLITS, DatasetInfo, DatasetSpec
from data_prep.datasets.synthetic_mt import SRC_SYLLABLES, make_words, plain_text, zipf_weights

GENERATOR_VERSION = 1
LANG = "txt"


@dataclass(frozen=True)
class SyntheticLMConfig:
    train: int = 4000
    valid: int = 200
    test: int = 200
    domains: int = 4
    words: int = 50  # lexicon size per domain
    branching: int = 3  # successors per word
    min_len: int = 4
    max_len: int = 16
    seed: int = 1

    def __post_init__(self) -> None:
        for key in ("train", "valid", "test", "domains", "words", "branching", "min_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"option {key}: must be >= 1, got {getattr(self, key)}")
        if self.branching > self.words:
            raise ValueError(f"option branching: must be <= words ({self.words}), got {self.branching}")
        if self.max_len < self.min_len:
            raise ValueError(f"option max_len: must be >= min_len ({self.min_len}), got {self.max_len}")
        if self.domains * self.words > 20000:
            raise ValueError(f"option words: domains * words must be <= 20000, got {self.domains * self.words}")


def chains(cfg: SyntheticLMConfig) -> list[dict]:
    """Per domain: the lexicon and each word's successors."""
    rng = random.Random(f"synthetic-lm:{cfg.seed}:lexicon")
    taken: set[str] = set()
    out = []
    for d in range(cfg.domains):
        words = make_words(rng, cfg.words, SRC_SYLLABLES, taken)
        succ = {w: rng.sample(words, cfg.branching) for w in words}
        out.append({"domain": d, "words": words, "successors": succ})
    return out


def generate(cfg: SyntheticLMConfig, split: str, chain: list[dict]) -> tuple[list[str], list[str]]:
    rng = random.Random(f"synthetic-lm:{cfg.seed}:{split}")
    weights = zipf_weights(cfg.branching)
    lines, domains = [], []
    for _ in range(getattr(cfg, split)):
        d = rng.randrange(cfg.domains)
        word = rng.choice(chain[d]["words"])
        sentence = [word]
        for _ in range(rng.randint(cfg.min_len, cfg.max_len) - 1):
            word = rng.choices(chain[d]["successors"][word], weights=weights, k=1)[0]
            sentence.append(word)
        lines.append(" ".join(sentence))
        domains.append(str(d))
    return lines, domains


def build_raw(prep: Prep, source, cfg: SyntheticLMConfig) -> None:
    outputs = [f"raw/{split}.{ext}" for split in SPLITS for ext in (LANG, "domain")] + ["raw/chains.json"]

    def fn(tmp: dict[str, Path]) -> None:
        chain = chains(cfg)
        for split in SPLITS:
            lines, dom = generate(cfg, split, chain)
            write_lines(tmp[f"raw/{split}.{LANG}"], lines)
            write_lines(tmp[f"raw/{split}.domain"], dom)
        tmp["raw/chains.json"].write_text(json.dumps(chain, indent=1, sort_keys=True) + "\n", encoding="utf-8")

    prep.step("generate", outputs, fn, settings={"config": asdict(cfg), "generator": GENERATOR_VERSION})


SPEC = DatasetSpec(
    info=DatasetInfo(
        name="synthetic-lm", task="language_modeling", src_lang=LANG, tgt_lang=None, offline=True,
        description="generated monolingual text: sub-domains with own lexicon and Markov chain (tiny LM recipe)"),
    build_raw=build_raw,
    default_bpe_merges=0,
    text=plain_text,
    takes_source=False,
    config_type=SyntheticLMConfig,
)
