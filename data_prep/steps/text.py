"""Moses-style text processing (sacremoses): punctuation normalization, non-printing character removal, aggressive
hyphen tokenization, and parallel-corpus cleaning (clean-corpus-n: length and ratio limits).

The order and switches follow the fairseq/Transformer-Clinic prepare-wmt14en2de.sh pipeline:
normalize-punctuation.perl -l L | remove-non-printing-char.perl | tokenizer.perl -a -l L
sacremoses runs with perl_parity=True (exact normalize-punctuation.perl behaviour). Moses' tokenizer escapes
special characters (&amp; &apos; ...) by default; we keep escape=False and record both in the manifest.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import regex

from smx.errors import UserError

from data_prep.steps.files import open_lines
from data_prep.steps.progress import Reporter

_NON_PRINTING = regex.compile(r"\p{C}")
_CHUNK_LINES = 2000


@dataclass(frozen=True)
class TextSettings:
    """How one split of one language is turned into tokenized text."""

    lang: str
    moses: bool = True  # False: the corpus is already tokenized; only whitespace is normalized
    normalize_punct: bool = True
    remove_non_printing: bool = True
    aggressive_dash_splits: bool = True
    escape: bool = False
    replace: tuple[tuple[str, str], ...] = ()  # literal replacements applied first (e.g. ’ -> ' on newstest2014)

    def __post_init__(self) -> None:
        if not self.lang:
            raise ValueError("text.lang: empty language code")

    def as_json(self) -> dict:
        d = asdict(self)
        d["replace"] = [list(p) for p in self.replace]
        if self.moses:
            d.update(tool=f"sacremoses {version('sacremoses')}", perl_parity=True, moses_default_escape=True)
        return d


@dataclass(frozen=True)
class CleanSettings:
    """clean-corpus-n.perl: drop pairs with an empty side, a side outside [min_len, max_len] tokens, a length ratio
    above `ratio` either way, or a token longer than max_word_length characters."""

    min_len: int = 1
    max_len: int = 80
    ratio: float = 1.5
    max_word_length: int = 1000

    def __post_init__(self) -> None:
        if not 0 <= self.min_len <= self.max_len:
            raise ValueError(f"clean.min_len/max_len: need 0 <= {self.min_len} <= {self.max_len}")
        if self.ratio <= 0:
            raise ValueError(f"clean.ratio: must be > 0, got {self.ratio}")

    def keep(self, src: str, tgt: str) -> bool:
        s, t = src.split(), tgt.split()
        if not s or not t:
            return False
        if not (self.min_len <= len(s) <= self.max_len and self.min_len <= len(t) <= self.max_len):
            return False
        if len(s) / len(t) > self.ratio or len(t) / len(s) > self.ratio:
            return False
        return all(len(w) <= self.max_word_length for w in itertools.chain(s, t))


@functools.lru_cache(maxsize=8)
def _moses(lang: str):
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    return MosesPunctNormalizer(lang=lang, perl_parity=True), MosesTokenizer(lang=lang)


def process_line(line: str, s: TextSettings) -> str:
    """One raw line -> one tokenized line (single spaces, no leading/trailing whitespace)."""
    for old, new in s.replace:
        line = line.replace(old, new)
    if s.moses:
        normalizer, tokenizer = _moses(s.lang)
        if s.normalize_punct:
            line = normalizer.normalize(line)
        if s.remove_non_printing:
            line = _NON_PRINTING.sub(" ", line)
        line = tokenizer.tokenize(line, aggressive_dash_splits=s.aggressive_dash_splits, escape=s.escape,
                                  return_str=True)
    return " ".join(line.split())


def _process_chunk(settings: TextSettings, lines: list[str]) -> list[str]:
    return [process_line(line, settings) for line in lines]


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(lines)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def map_lines(fn, lines: Iterable[str], workers: int, total: int | None = None) -> Iterator[list[str]]:
    """Apply fn(list[str]) -> list[str] to chunks of lines, in order, with at most 2*workers chunks in flight.

    Small inputs (total known and under 4 chunks) run in this process: a worker pool costs more than it saves.
    """
    chunks = _chunks(lines, _CHUNK_LINES)
    if workers <= 1 or (total is not None and total < 4 * _CHUNK_LINES):
        yield from map(fn, chunks)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(fn, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def tokenize_files(inputs: list[Path], output: Path, settings: TextSettings, workers: int, reporter: Reporter,
                   total: int | None = None) -> tuple[int, int]:
    """Tokenize the concatenation of inputs into output; returns (lines, tokens)."""
    lines = itertools.chain.from_iterable(open_lines(p) for p in inputs)
    fn = functools.partial(_process_chunk, settings)
    n = words = 0
    with open(output, "w", encoding="utf-8", newline="\n") as f, \
            reporter.task(f"tokenize {output.name.removesuffix('.partial')}", total) as adv:
        for out in map_lines(fn, lines, workers, total):
            f.write("".join(line + "\n" for line in out))
            n += len(out)
            words += sum(len(line.split()) for line in out)
            adv(len(out))
    return n, words


def clean_files(src_in: Path, tgt_in: Path, src_out: Path, tgt_out: Path, s: CleanSettings,
                reporter: Reporter) -> tuple[int, int, tuple[int, int]]:
    """Write the pairs that pass the cleaning rules; returns (kept, total, (src words, tgt words) kept).

    Unequal line counts are an error naming both files."""
    kept = total = words_a = words_b = 0
    sentinel = object()
    with open(src_out, "w", encoding="utf-8", newline="\n") as fs, \
            open(tgt_out, "w", encoding="utf-8", newline="\n") as ft, \
            reporter.task(f"clean {src_out.name.removesuffix('.partial')}", None) as adv:
        for a, b in itertools.zip_longest(open_lines(src_in), open_lines(tgt_in), fillvalue=sentinel):
            if a is sentinel or b is sentinel:
                raise UserError(f"line-count mismatch: {src_in} and {tgt_in} differ in length")
            total += 1
            a, b = " ".join(a.split()), " ".join(b.split())
            if s.keep(a, b):
                fs.write(a + "\n")
                ft.write(b + "\n")
                kept += 1
                words_a += len(a.split())
                words_b += len(b.split())
            if total % 10000 == 0:
                adv(10000)
    return kept, total, (words_a, words_b)
