"""Joint BPE with subword-nmt's Python API: learn one code file on the concatenated training text of both languages
(as `cat train.src train.tgt | learn_bpe.py -s N` in prepare-wmt14en2de.sh), apply it with the "@@ " separator."""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
from collections import Counter
from importlib.metadata import version
from pathlib import Path

from data_prep.steps.files import open_lines
from data_prep.steps.progress import Reporter
from data_prep.steps.text import map_lines

MIN_FREQUENCY = 2
SEPARATOR = "@@"


def settings(merges: int, glossaries: tuple[str, ...] = ()) -> dict:
    return {"tool": f"subword-nmt {version('subword-nmt')}", "merges": merges, "min_frequency": MIN_FREQUENCY,
            "separator": SEPARATOR + " ", "joint": True, "glossaries": list(glossaries)}


class _CountingWriter(io.TextIOBase):
    """Passes learn_bpe's output through to a file and advances a progress bar per merge written."""

    def __init__(self, f, advance):
        self._f, self._advance = f, advance

    def write(self, s: str) -> int:
        self._f.write(s)
        n = s.count("\n")
        if n:
            self._advance(n)
        return len(s)


def learn(train_files: list[Path], codes_out: Path, merges: int, reporter: Reporter) -> int:
    """Learn `merges` joint BPE merges from the word counts of train_files; returns the number actually learned."""
    from subword_nmt.learn_bpe import learn_bpe

    counts: Counter[str] = Counter()
    with reporter.task("count words for BPE", None) as adv:
        for path in train_files:
            for i, line in enumerate(open_lines(path), 1):
                counts.update(line.split())
                if i % 10000 == 0:
                    adv(10000)
    vocab = io.StringIO("".join(f"{w} {c}\n" for w, c in sorted(counts.items())))
    with open(codes_out, "w", encoding="utf-8", newline="\n") as f, \
            reporter.task(f"learn BPE ({merges} merges)", merges + 1, "merges") as adv:
        with contextlib.redirect_stderr(io.StringIO()):  # subword-nmt's own tqdm bar; ours replaces it
            learn_bpe(vocab, _CountingWriter(f, adv), merges, min_frequency=MIN_FREQUENCY, is_dict=True)
    with open(codes_out, encoding="utf-8") as f:
        return sum(1 for line in f if not line.startswith("#version"))


@functools.lru_cache(maxsize=4)
def _bpe(codes: str, codes_sha256: str, glossaries: tuple[str, ...]):
    from subword_nmt.apply_bpe import BPE

    with open(codes, encoding="utf-8") as f:
        return BPE(f, merges=-1, separator=SEPARATOR, glossaries=list(glossaries) or None)


def _apply_chunk(codes: str, codes_sha256: str, glossaries: tuple[str, ...], lines: list[str]) -> list[str]:
    bpe = _bpe(codes, codes_sha256, glossaries)
    return [bpe.process_line(line) for line in lines]


def apply(codes: Path, codes_sha256: str, inputs: list[Path], output: Path, workers: int, reporter: Reporter,
          glossaries: tuple[str, ...] = (), total: int | None = None) -> int:
    """Segment the concatenation of inputs with the codes into output; returns the line count."""
    fn = functools.partial(_apply_chunk, str(codes), codes_sha256, tuple(glossaries))
    lines = itertools.chain.from_iterable(open_lines(p) for p in inputs)
    n = 0
    with open(output, "w", encoding="utf-8", newline="\n") as f, \
            reporter.task(f"apply BPE {output.name.removesuffix('.partial')}", total) as adv:
        for out in map_lines(fn, lines, workers, total):
            f.write("".join(line + "\n" for line in out))
            n += len(out)
            adv(len(out))
    return n
