"""Pure scoring and parsing (smx.eval.scoring), checked against sacrebleu's own command line and a hand-written BLEU."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

import pytest

from smx.eval.scoring import (check_count, compound_split, detokenize, idx_length, parse_eval_lm, parse_generate,
                         read_lines, score_bleu)

from eval_helpers import HYPS_TOK, REFS_RAW, REFS_TOK, generate_output, write_idx, write_lines


def sacrebleu_cli(ref, hyp, *extra) -> dict:
    out = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-w", "10", *extra],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def hand_bleu(hyps, refs) -> float:
    """Corpus BLEU-4 (clipped n-gram precisions, brevity penalty), whitespace tokens; no smoothing needed here."""
    match, total = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for h, r in zip(hyps, refs):
        h, r = h.split(), r.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            hc = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            rc = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(sum(math.log(m / t) for m, t in zip(match, total)) / 4)


def test_score_bleu_equals_sacrebleu_cli_on_files(tmp_path):
    hyps_detok = detokenize(HYPS_TOK, "de")
    files = {name: write_lines(tmp_path / name, lines) for name, lines in
             [("hyp.tok", HYPS_TOK), ("ref.tok", REFS_TOK), ("hyp.detok", hyps_detok), ("ref.raw", REFS_RAW)]}
    read = {k: read_lines(p, k) for k, p in files.items()}
    s = score_bleu(read["hyp.tok"], read["ref.tok"], read["hyp.detok"], read["ref.raw"], compound=True)
    tok = sacrebleu_cli(files["ref.tok"], files["hyp.tok"], "--tokenize", "none", "--smooth-method", "none")
    sb = sacrebleu_cli(files["ref.raw"], files["hyp.detok"])
    assert s["bleu_tok"] == pytest.approx(tok["score"], abs=1e-8)
    assert s["sacrebleu"] == pytest.approx(sb["score"], abs=1e-8)
    assert s["sacrebleu_signature"] == sb["signature"] and "tok:13a" in s["sacrebleu_signature"]
    assert s["bleu_tok"] == pytest.approx(hand_bleu(HYPS_TOK, REFS_TOK), abs=1e-9)
    assert s["n_sentences"] == 8 and 0 < s["bleu_tok"] < 100 and s["bleu_tok"] != s["sacrebleu"]
    assert s["bleu_tok_compound_split"] == pytest.approx(
        hand_bleu([compound_split(h) for h in HYPS_TOK], [compound_split(r) for r in REFS_TOK]), abs=1e-9)


def test_tokenized_bleu_is_unsmoothed_like_fairseq():
    # no 4-gram matches: fairseq's BLEU4 / multi-bleu.perl give 0; sacreBLEU's default exp smoothing does not
    hyps, refs = ["a b c d", "e f"], ["a b x d", "e f"]
    s = score_bleu(hyps, refs, hyps, refs)
    assert s["bleu_tok"] == 0.0 and s["bleu_tok_detail"]["counts"] == [5, 2, 0, 0] and s["sacrebleu"] > 0


def test_tokenized_score_raises_no_detokenize_warning(caplog):
    """sacrebleu warns "you forgot to detokenize" when 100 lines end in " .": the tokenized score is tokenized on
    purpose, so it must not print that (the detokenized sacreBLEU score keeps sacrebleu's check)."""
    hyps = [f"das ist satz nummer {i} ." for i in range(120)]
    with caplog.at_level("WARNING", logger="sacrebleu"):
        s = score_bleu(hyps, hyps, [h.replace(" .", ".") for h in hyps], [h.replace(" .", ".") for h in hyps],
                       compound=True)
    assert s["bleu_tok"] == pytest.approx(100.0) and s["bleu_tok_compound_split"] == pytest.approx(100.0)
    assert "detokenize" not in caplog.text


def test_score_bleu_perfect_and_length_mismatch():
    s = score_bleu(REFS_TOK, REFS_TOK, REFS_RAW, REFS_RAW)
    assert s["bleu_tok"] == pytest.approx(100.0) and s["sacrebleu"] == pytest.approx(100.0)
    assert "bleu_tok_compound_split" not in s
    with pytest.raises(ValueError, match="line counts differ"):
        score_bleu(REFS_TOK[:-1], REFS_TOK, REFS_RAW, REFS_RAW)


def test_detokenize_moses():
    assert detokenize(["Er sagte , &quot; das ist gut &quot; .", "Forschung @-@ Projekte &amp; mehr"], "de") == [
        'Er sagte, "das ist gut".', "Forschung-Projekte & mehr"]


def test_compound_split():
    assert compound_split("Test-Fall und a-b-c") == "Test ##AT##-##AT## Fall und a ##AT##-##AT## b-c"
    assert compound_split("- frei -") == "- frei -"


def test_parse_generate_reorders_by_id_and_counts():
    order = [3, 0, 7, 1, 5, 2, 6, 4]
    pairs = parse_generate(generate_output(HYPS_TOK, order))
    assert [i for i, _ in pairs] == list(range(8))
    assert check_count(pairs, 8) == HYPS_TOK


def test_parse_generate_empty_hypothesis_and_first_nbest():
    text = "H-1\t-0.5\tzweite\nH-0\t-1.25\t\nH-1\t-0.9\tschlechter\nD-0\t-1.25\t\nT-0\tref\n"
    assert parse_generate(text) == [(0, ""), (1, "zweite")]


def test_check_count_fires_on_missing_sentence():
    pairs = parse_generate(generate_output(HYPS_TOK, [0, 1, 2, 4, 5, 6, 7]))  # id 3 missing
    with pytest.raises(ValueError, match=r"7 hypotheses for 8 source sentences; missing ids \[3\]"):
        check_count(pairs, 8)
    with pytest.raises(ValueError, match=r"unexpected ids \[8\]"):
        check_count([(i, "x") for i in range(9)], 8)


def test_parse_eval_lm():
    text = ("2024-01-01 00:00:00 | INFO | fairseq_cli.eval_lm | Evaluated 12,345 tokens in 3.2s (3857.81 tokens/s)\n"
            "2024-01-01 00:00:00 | INFO | fairseq_cli.eval_lm | Loss (base 2): 5.2500, Perplexity: 38.05\n")
    r = parse_eval_lm(text)
    assert r["tokens"] == 12345 and r["loss"] == 5.25 and r["ppl"] == pytest.approx(2 ** 5.25)
    with pytest.raises(ValueError, match="Loss"):
        parse_eval_lm("nothing here")


def test_idx_length(tmp_path):
    assert idx_length(write_idx(tmp_path / "a.idx", 3003)) == 3003
    (tmp_path / "b.idx").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a fairseq index"):
        idx_length(tmp_path / "b.idx")
    with pytest.raises(ValueError, match="missing binarized index"):
        idx_length(tmp_path / "c.idx")


def test_read_lines_keeps_empty_lines(tmp_path):
    (tmp_path / "f").write_text("a\n\nb\n\n", encoding="utf-8")
    assert read_lines(tmp_path / "f", "x") == ["a", "", "b", ""]
    (tmp_path / "g").write_text("", encoding="utf-8")
    assert read_lines(tmp_path / "g", "x") == []
