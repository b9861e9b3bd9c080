"""A study's small files copied out for committing (results/<study>/): per run recipe.yaml, meta.json,
metrics.jsonl and eval/*.json; never checkpoints, TensorBoard logs, hypotheses or the training log.

`smx compare` and `smx report` on the exported folder read exactly what they read in the study, so they regenerate
its table (tests/study/test_committed_results.py checks the committed ones).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from smx.errors import UserError
from smx.run.paths import RunDir

RUN_FILES = ("recipe.yaml", "meta.json", "metrics.jsonl")


def run_files(run: Path) -> list[Path]:
    """The small files of one run directory that a comparison reads (relative to the run)."""
    rd = RunDir(run)
    names = [Path(n) for n in RUN_FILES if (run / n).is_file()]
    names += sorted(p.relative_to(run) for p in rd.eval.glob("*.json")) if rd.eval.is_dir() else []
    return names


def export(studies: list[Path], dest: Path) -> list[Path]:
    """Copy the small files of every run of `studies` into dest/<run>/; refuses a non-empty dest (never overwrites)."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest}: exists and is not an empty directory; export into a new one")
    runs = [p.parent for s in studies for p in sorted(s.glob("*/meta.json"))]
    if not runs:
        raise UserError(f"{', '.join(map(str, studies))}: no run directories (*/meta.json) to export")
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"run names {dup} occur in several studies; export each study into its own folder")
    written = []
    for run in runs:
        for rel in run_files(run):
            target = dest / run.name / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run / rel, target)
            written.append(target)
    return written
