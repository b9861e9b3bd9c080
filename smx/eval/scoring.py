"""Scoring and engine-output parsing for smx eval (pure functions; fairseq is never imported).

Scores (RUN/eval/bleu.json):
- bleu_tok: BLEU on Moses-tokenized text, as the SparseMixer paper reports for WMT'14 (its eval_moe.sh reports
  fairseq-generate's BLEU4 on the tokenized, BPE-removed output): sacrebleu.corpus_bleu(tokenize="none",
  smooth_method="none") of the BPE-removed hypotheses against data/<dataset>/tok/<subset>.<tgt>, which equals
  fairseq's unsmoothed BLEU4 (and multi-bleu.perl). No compound splitting; for German targets the
  compound-split variant (get_ende_bleu's `##AT##-##AT##` rule) is reported as well, as bleu_tok_compound_split.
- sacrebleu: hypotheses detokenized with sacremoses (MosesDetokenizer of the target language), scored with
  sacreBLEU's defaults (13a tokenization) against the raw reference; its signature is stored alongside.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import sacrebleu
from sacremoses import MosesDetokenizer

from smx.errors import UserError

_HYP = re.compile(r"^H-(\d+)\t[^\t]*\t?(.*)$")
_LM_LOSS = re.compile(r"Loss \(base 2\): ([0-9.eE+-]+|nan|inf), Perplexity: ([0-9.eE+-]+|nan|inf)")
_LM_TOKENS = re.compile(r"Evaluated ([0-9,]+) tokens in ([0-9.]+)s")
_COMPOUND = re.compile(r"(\S)-(\S)")


def parse_generate(text: str) -> list[tuple[int, str]]:
    """fairseq-generate output -> [(sentence id, hypothesis)] sorted by id (the first, best, hypothesis per id)."""
    hyps: dict[int, str] = {}
    for line in text.split("\n"):
        m = _HYP.match(line.rstrip("\r"))
        if m:
            hyps.setdefault(int(m.group(1)), m.group(2))
    return sorted(hyps.items())


def check_count(pairs: list[tuple[int, str]], n_sentences: int) -> list[str]:
    """Hypotheses in sentence order; ValueError unless the ids are exactly 0..n_sentences-1."""
    ids = [i for i, _ in pairs]
    if ids != list(range(n_sentences)):
        missing = sorted(set(range(n_sentences)) - set(ids))
        extra = sorted(set(ids) - set(range(n_sentences)))
        raise UserError(
            f"generate produced {len(ids)} hypotheses for {n_sentences} source sentences"
            + (f"; missing ids {missing[:10]}{' ...' if len(missing) > 10 else ''}" if missing else "")
            + (f"; unexpected ids {extra[:10]}" if extra else ""))
    return [h for _, h in pairs]


def compound_split(line: str) -> str:
    """get_ende_bleu's compound splitting: `a-b` -> `a ##AT##-##AT## b`."""
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line)


def detokenize(lines: list[str], lang: str, moses: bool = True, unescape: bool = True) -> list[str]:
    """Moses detokenization (sacremoses) of whitespace-tokenized lines; moses=False only normalizes whitespace."""
    if not moses:
        return [" ".join(line.split()) for line in lines]
    md = MosesDetokenizer(lang=lang)
    return [md.detokenize(line.split(), unescape=unescape) for line in lines]


def _bleu_detail(b) -> dict:
    return {"counts": list(b.counts), "totals": list(b.totals), "precisions": list(b.precisions), "bp": b.bp,
            "sys_len": b.sys_len, "ref_len": b.ref_len}


def score_bleu(hyps_tok: list[str], refs_tok: list[str], hyps_detok: list[str], refs_raw: list[str], *,
               compound: bool = False) -> dict:
    """Tokenized BLEU and sacreBLEU with its signature.

    Tokenized: tokenize='none', smooth_method='none' on Moses-tokenized text (fairseq-generate's BLEU4 and
    multi-bleu.perl: 0 when some n-gram order has no match). sacreBLEU: its defaults (13a, exp smoothing).
    """
    sizes = {len(hyps_tok), len(refs_tok), len(hyps_detok), len(refs_raw)}
    if len(sizes) != 1:
        raise ValueError(f"score_bleu: line counts differ (hyp tok {len(hyps_tok)}, ref tok {len(refs_tok)}, "
                         f"hyp detok {len(hyps_detok)}, ref raw {len(refs_raw)})")
    # force: the tokenized score is meant for tokenized text (no "forgot to detokenize" warning; same score)
    tok = sacrebleu.corpus_bleu(hyps_tok, [refs_tok], tokenize="none", smooth_method="none", force=True)
    metric = sacrebleu.metrics.BLEU()
    sb = metric.corpus_score(hyps_detok, [refs_raw])
    out = {"n_sentences": len(hyps_tok), "bleu_tok": tok.score, "bleu_tok_detail": _bleu_detail(tok),
           "sacrebleu": sb.score, "sacrebleu_signature": str(metric.get_signature()),
           "sacrebleu_detail": _bleu_detail(sb)}
    if compound:
        cs = sacrebleu.corpus_bleu([compound_split(h) for h in hyps_tok], [[compound_split(r) for r in refs_tok]],
                                   tokenize="none", smooth_method="none", force=True)
        out["bleu_tok_compound_split"] = cs.score
    return out


def parse_eval_lm(text: str) -> dict:
    """fairseq eval_lm log -> {"loss": base-2 loss per token, "ppl": 2 ** loss, "tokens": n}."""
    loss, tokens = _LM_LOSS.findall(text), _LM_TOKENS.findall(text)
    if not loss or not tokens:
        raise UserError("eval_lm finished without a 'Loss (base 2)' / 'Evaluated N tokens' line (see the log)")
    value = float(loss[-1][0])
    return {"loss": value, "ppl": 2.0 ** value, "tokens": int(tokens[-1][0].replace(",", "")),
            "engine_seconds": float(tokens[-1][1])}


def idx_length(path: Path) -> int:
    """Number of sentences in a fairseq binarized .idx file (mmap or legacy index), read from its header."""
    try:
        with open(path, "rb") as f:
            head = f.read(34)
    except OSError:
        raise UserError(f"{path}: missing binarized index (prepare the data first: smx data prep)") from None
    if head[:9] == b"MMIDIDX\x00\x00":
        return struct.unpack("<Q", head[18:26])[0]
    if head[:8] == b"TNTIDX\x00\x00":
        return struct.unpack("<Q", head[24:32])[0]
    raise UserError(f"{path}: not a fairseq index file")


def read_lines(path: Path, what: str) -> list[str]:
    """The lines of a text file (no line-end characters; only "\\n" separates lines)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        raise UserError(f"{path}: missing {what}") from None
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") or not text else lines
