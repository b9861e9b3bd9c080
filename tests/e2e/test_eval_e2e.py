"""End to end through the engine (slow): a tiny sweep, beam search on every test sentence, compare; LM perplexity."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from smx.cli import run as cli
from smx.eval.scoring import idx_length, read_lines

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SHORT = ["--set", "train.max_update=10", "--set", "train.save_interval_updates=5", "--set", "train.keep_last=2",
         "--set", "train.validate_interval_updates=5"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    args = ["sweep", str(REPO / "recipes" / "tiny.yaml"), "--estimators", "topk,sparsemixer", "--seeds", "1",
            "--study-dir", str(root / "study"), "--set", f"data.root={root / 'data'}", *SHORT, "--no-progress"]
    assert cli(args) == 0
    assert cli(args) == 0  # resumable: the second call skips both finished runs
    return root


def test_eval_bleu_every_test_sentence(study):
    run = study / "study" / "tiny-topk-s1"
    assert cli(["eval", "bleu", str(run)]) == 0
    data = study / "data" / "synthetic-mt"
    n = idx_length(data / "bin" / "test.src-tgt.src.idx")
    r = json.loads((run / "eval" / "bleu.json").read_text())
    assert r["n_sentences"] == n == len(read_lines(data / "tok" / "test.tgt", "ref")) > 0
    assert len(read_lines(run / "eval" / "test.hyp.tok", "hyp")) == n
    assert len(read_lines(run / "eval" / "test.hyp.detok", "hyp")) == n
    log = (run / "eval" / "test.generate.log").read_text()
    assert len(re.findall(r"^H-\d+\t", log, re.M)) == n
    # tokenized BLEU = fairseq-generate's own BLEU4 on the same (tokenized, BPE-removed) output
    fairseq_bleu = float(re.search(r"BLEU4 = ([0-9.]+),", log).group(1))
    assert round(r["bleu_tok"], 2) == pytest.approx(fairseq_bleu, abs=0.006)
    assert r["sacrebleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")


def test_eval_bleu_averaged_checkpoints(study):
    run = study / "study" / "tiny-sparsemixer-s1"
    assert cli(["eval", "bleu", str(run), "--checkpoint", "avg:2", "--subset", "valid", "--beam", "2"]) == 0
    r = json.loads((run / "eval" / "bleu.valid.avg2.beam2.lenpen0.6.json").read_text())
    assert [Path(p).name for p in r["checkpoint_files"]] == ["checkpoint_1_5.pt", "checkpoint_1_10.pt"]
    assert r["n_sentences"] == idx_length(study / "data" / "synthetic-mt" / "bin" / "valid.src-tgt.src.idx")


def test_compare_real_study(study):
    out = study / "cmp"
    assert cli(["compare", str(study / "study"), "--out", str(out)]) == 0
    data = json.loads((out / "compare.json").read_text())
    assert [g["estimator"] for g in data["groups"]] == ["topk", "sparsemixer"]
    assert all(g["curve"]["updates"] for g in data["groups"])
    assert data["groups"][0]["expert_load"] and (out / "expert_load.png").stat().st_size > 1000
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_ppl_lm_run(tmp_path):
    runs = tmp_path / "runs"
    assert cli(["train", str(REPO / "recipes" / "tiny_lm.yaml"), "--runs-root", str(runs),
                "--set", f"data.root={tmp_path / 'data'}", "--set", "train.max_update=10", "--no-progress"]) == 0
    (run,) = runs.iterdir()
    assert cli(["eval", "ppl", str(run)]) == 0
    r = json.loads((run / "eval" / "ppl.json").read_text())
    assert r["tokens"] > 0 and math.isfinite(r["loss"]) and r["ppl"] == pytest.approx(2 ** r["loss"])
    assert r["tokens_per_sample"] == 64
