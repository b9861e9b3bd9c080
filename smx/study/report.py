"""report.md for a study: the comparison (table, method, plots), every run, and the exact commands.

Reads only files: the run directories' meta.json / eval/bleu.json / eval/ppl.json and the output of `smx compare`
(compare.md, compare.json, PNGs) in the same directory the report is written to.
"""

from __future__ import annotations

import json
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

from smx.errors import UserError
from smx.run.paths import RunDir


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _runs(study: Path) -> list[RunDir]:
    return [RunDir(p.parent) for p in sorted(study.glob("*/meta.json"))]


def run_rows(study: Path) -> list[list[str]]:
    """One row per run directory in the study: name, estimator, seed, status, updates, BLEU / ppl, wall."""
    rows = []
    for rd in _runs(study):
        run, meta = rd.path, rd.read_meta() or {}
        last = meta.get("last") if isinstance(meta.get("last"), dict) else {}
        last_train = last.get("train") if isinstance(last.get("train"), dict) else {}
        bleu, ppl = rd.read_eval("bleu") or {}, rd.read_eval("ppl") or {}
        score = "-"
        if isinstance(bleu.get("bleu_tok"), (int, float)):
            score = f"BLEU {bleu['bleu_tok']:.2f} (tokenized) / {bleu.get('sacrebleu', float('nan')):.2f} (sacreBLEU)"
        elif ppl:
            score = f"ppl {ppl.get('ppl', float('nan')):.2f}"
        rows.append([run.name, str(meta.get("estimator", "?")), str(meta.get("seed", "?")),
                     str(meta.get("status", "?")), str(last_train.get("step", "-")), score,
                     str(meta.get("git_sha", "?"))[:12]])
    return rows


def _compare_body(compare_dir: Path, study: Path, relative_to: Path) -> str:
    """compare.md without its title, its images addressed from `relative_to` (where report.md is written)."""
    compare_md = compare_dir / "compare.md"
    if not compare_md.is_file():
        raise UserError(f"{compare_md}: missing; run `smx compare {study} --out {compare_dir}` first")
    body = compare_md.read_text().split("\n", 1)[1].lstrip("\n")  # drop its "# smx compare" title
    rel = os.path.relpath(compare_dir, relative_to)
    if rel != ".":
        body = re.sub(r"\]\(([^)/]+\.png)\)", lambda m: f"]({rel}/{m.group(1)})", body)
    return body.replace("\n## ", "\n### ")


def _study_of(compare_dir: Path) -> Path:
    """The study a compare output belongs to: itself when it holds the runs (a committed study), else its parent."""
    return compare_dir if any(compare_dir.glob("*/meta.json")) else compare_dir.parent


def build(study: Path, compare_dir: Path, commands: list[str], secondary: tuple[Path, ...] = ()) -> str:
    """report.md text; `secondary`: further `smx compare` outputs (another protocol, say), each its own section."""
    body = _compare_body(compare_dir, study, compare_dir)
    extra = [_compare_body(d, _study_of(d), compare_dir) for d in secondary]
    study_json = _read_json(study / "study.json")
    rows = run_rows(study)
    if not rows:
        raise UserError(f"{study}: no run directories (*/meta.json) in this study")
    for d in secondary:
        if _study_of(d).resolve() != study.resolve():
            rows += run_rows(_study_of(d))
    metas = [rd.read_meta() or {} for rd in _runs(study)]
    versions = next((m["versions"] for m in metas if isinstance(m.get("versions"), dict)), {})
    lines = [f"# smx study report: {study_json.get('recipe_name', study.name)}", "",
             f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} "
             f"({platform.machine()}, {platform.python_implementation()} {platform.python_version()}); "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", "",
             f"Recipe `{study_json.get('recipe', '?')}`, overrides {study_json.get('overrides', [])}, "
             f"estimators {study_json.get('estimators', '?')}, seeds {study_json.get('seeds', '?')}.", "",
             "Commit: " + ", ".join(sorted({str(m.get("git_sha", "?")) for m in metas})) + ".", "", "## Comparison", "", body.rstrip(), ""]
    for d, text in zip(secondary, extra):
        lines += [f"## Second comparison ({d})", "", text.rstrip(), ""]
    lines += ["## Runs", "", "| run | estimator | seed | status | last update | score | git |",
             "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "## Exact commands", "", "```"] + (commands or ["(not recorded)"]) + ["```", "",
              "Every run directory also holds its resolved recipe (recipe.yaml), the exact engine command "
              "(fairseq_argv.txt), metrics.jsonl and train.log.", ""]
    return "\n".join(lines)


def write(study: Path, compare_dir: Path, commands: list[str], secondary: tuple[Path, ...] = ()) -> Path:
    if not study.is_dir():
        raise UserError(f"{study}: no such study directory")
    text = build(study, compare_dir, commands, secondary)
    out = compare_dir / "report.md"
    out.write_text(text)
    return out
