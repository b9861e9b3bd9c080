"""smx report (report.md from a study) and smx sweep --jobs (parallel cells as child processes)."""

from __future__ import annotations

import json
from pathlib import Path


from smx.cli import run
from smx.study.sweep import Cell, SweepPlan
from smx.study.parallel import cell_argv, outcome

REPO = Path(__file__).resolve().parents[2]


def make_run(study: Path, name: str, estimator: str, seed: int, bleu: float | None) -> None:
    run_dir = study / name
    (run_dir / "eval").mkdir(parents=True)
    meta = {"name": name, "estimator": estimator, "seed": seed, "status": "done", "git_sha": "abc123def4567890",
            "versions": {"smx": "0.1.0", "torch": "2.13.0"}, "last": {"train": {"step": 300, "loss": 5.0}}}
    (run_dir / "meta.json").write_text(json.dumps(meta))
    if bleu is not None:
        (run_dir / "eval" / "bleu.json").write_text(json.dumps({"bleu_tok": bleu, "sacrebleu": bleu - 1.0}))


def test_report_lists_runs_scores_commands_and_embeds_the_comparison(tmp_path, capsys):
    study = tmp_path / "study"
    make_run(study, "r-topk-s1", "topk", 1, 12.345)
    make_run(study, "r-sparsemixer-s1", "sparsemixer", 1, None)
    (study / "study.json").write_text(json.dumps({"recipe": "recipes/r.yaml", "recipe_name": "r",
                                                  "overrides": [], "estimators": ["topk", "sparsemixer"],
                                                  "seeds": [1]}))
    cmp = study / "compare"
    cmp.mkdir()
    (cmp / "compare.md").write_text("# smx compare\n\n| estimator | x |\n|---|---|\n| topk | 1 |\n\n![curves](curves.png)\n")
    assert run(["report", str(study), "--command", "make reproduce RECIPE=recipes/r.yaml"]) == 0
    text = (cmp / "report.md").read_text()
    assert text.startswith("# smx study report: r\n")
    assert "| topk | 1 |" in text and "![curves](curves.png)" in text and "# smx compare" not in text
    assert "| r-topk-s1 | topk | 1 | done | 300 | BLEU 12.35 (tokenized) / 11.35 (sacreBLEU) | abc123def456 |" in text
    assert "| r-sparsemixer-s1 | sparsemixer | 1 | done | 300 | - |" in text
    assert "make reproduce RECIPE=recipes/r.yaml" in text and "torch 2.13.0" in text


def test_report_without_comparison_is_one_line_exit_2(tmp_path, capsys):
    study = tmp_path / "study"
    make_run(study, "a", "topk", 1, None)
    assert run(["report", str(study)]) == 2
    err = capsys.readouterr().err
    assert "compare.md: missing" in err and "Traceback" not in err
    assert not (study / "compare").exists()
    assert run(["report", str(tmp_path / "nope")]) == 2


def test_cell_argv_start_and_resume(tmp_path):
    plan = SweepPlan(Path("recipes/tiny.yaml"), "tiny", ("optim.lr=1e-3",), tmp_path, ())
    start = cell_argv(plan, Cell("topk", 2, tmp_path / "tiny-topk-s2", "start"), "cpu")
    assert start == ["train", "recipes/tiny.yaml", "--estimator", "topk", "--seed", "2", "--runs-root", str(tmp_path),
                     "--set", "optim.lr=1e-3", "--device", "cpu", "--no-progress"]
    resume = cell_argv(plan, Cell("topk", 2, tmp_path / "tiny-topk-s2", "resume"), None)
    assert resume == ["train", "--resume", str(tmp_path / "tiny-topk-s2"), "--no-progress"]


def test_outcome_reads_meta_status(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"status": "failed"}))
    assert outcome(tmp_path, 1) == "failed"
    assert outcome(tmp_path / "missing", 130) == "interrupted"
    assert outcome(tmp_path / "missing", 2).startswith("error: exit code 2")


def test_jobs_must_be_positive(capsys):
    assert run(["sweep", str(REPO / "recipes" / "tiny.yaml"), "--estimators", "topk", "--jobs", "0"]) == 2
    assert "--jobs" in capsys.readouterr().err
