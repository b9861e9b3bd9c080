"""`smx export STUDY DEST`: the small files of a study's runs, for committing (smx.study.export)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from smx.study.export import export as export_study


def export(
    studies: list[Path] = typer.Argument(..., help="study directories (runs roots of `smx sweep`)"),
    to: Path = typer.Option(..., "--to", help="new (or empty) folder, e.g. results/ding_switch"),
) -> None:
    """Copy recipe.yaml, meta.json, metrics.jsonl and eval/*.json of every run (no checkpoints, logs, hypotheses)."""
    written = export_study(list(studies), to)
    runs = len({p.relative_to(to).parts[0] for p in written})
    Console().print(f"exported {runs} runs ({len(written)} files) to {to}; next: smx compare {to} --out {to}",
                    highlight=False)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
