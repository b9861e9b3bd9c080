"""Committed study results (results/<study>/) regenerate exactly, and `smx export` copies only the small files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compare_helpers import write_run
from smx.cli import run as cli

REPO = Path(__file__).resolve().parents[2]
STUDIES = sorted(p.parent for p in (REPO / "results").glob("*/compare.json"))


def test_results_are_committed():
    assert STUDIES, "results/ holds no committed study (results/<study>/compare.json)"


@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_compare_regenerates_the_committed_table(study, tmp_path, capsys):
    committed = json.loads((study / "compare.json").read_text())
    assert cli(["compare", str(study), "--baseline", committed["baseline"], "--metric", committed["metric"],
                "--out", str(tmp_path)]) == 0
    assert (tmp_path / "compare.md").read_text() == (study / "compare.md").read_text()
    assert json.loads((tmp_path / "compare.json").read_text()) == committed
    for run in (p.parent for p in study.glob("*/meta.json")):  # only the small files were committed
        files = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
        assert files <= {"recipe.yaml", "meta.json", "metrics.jsonl"} | {f"eval/{p.name}" for p in
                                                                        (run / "eval").glob("*.json")}, run


def test_export_copies_small_files_and_never_overwrites(tmp_path, capsys):
    study = tmp_path / "study"
    run = write_run(study, "topk-s1", "topk", 1, [(10, 3.0), (20, 2.0)],
                    bleu={"bleu_tok": 1.0, "sacrebleu": 1.0, "subset": "test", "checkpoint": "best"})
    for junk in ("checkpoints/checkpoint_last.pt", "eval/test.hyp.tok", "train.log", "tb/events"):
        (run / junk).parent.mkdir(parents=True, exist_ok=True)
        (run / junk).write_text("x")
    dest = tmp_path / "results" / "s"
    assert cli(["export", str(study), "--to", str(dest)]) == 0
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == ["topk-s1/eval/bleu.json", "topk-s1/meta.json", "topk-s1/metrics.jsonl", "topk-s1/recipe.yaml"]
    before = (dest / "topk-s1" / "meta.json").read_text()
    capsys.readouterr()
    assert cli(["export", str(study), "--to", str(dest)]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert (dest / "topk-s1" / "meta.json").read_text() == before


def test_report_with_a_secondary_comparison(tmp_path, capsys):
    main, ref = tmp_path / "main", tmp_path / "main-reference"
    for root, protocol in ((main, "controlled"), (ref, "reference")):
        for est in ("topk", "sparsemixer"):
            write_run(root, f"{est}-s1", est, 1, [(10, 3.0), (20, 2.0)], protocol=protocol)
        assert cli(["compare", str(root), "--out", str(root / "compare")]) == 0
    assert cli(["report", str(main), "--secondary", str(ref / "compare"), "--command", "make reproduce"]) == 0
    text = (main / "compare" / "report.md").read_text()
    assert "Protocol: **controlled**" in text and "Protocol: **reference**" in text
    assert f"## Second comparison ({ref / 'compare'})" in text
    assert "](../../main-reference/compare/curves.png)" in text and "](curves.png)" in text
    assert text.count("| topk-s1 | topk |") == 2  # both studies' runs listed
