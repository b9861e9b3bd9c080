"""`smx report STUDY`: report.md from a study's run directories and its `smx compare` output."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from smx.study import report as rep


def report(
    study: Path = typer.Argument(..., help="study directory (the runs root of `smx sweep`)"),
    compare_dir: Optional[Path] = typer.Option(None, "--compare-dir", help="output of `smx compare` "
                                                                             "(default: STUDY/compare)"),
    command: List[str] = typer.Option([], "--command", help="a command that produced the study (repeatable)"),
    secondary: List[Path] = typer.Option([], "--secondary", help="another `smx compare` output (e.g. the "
                                         "reference protocol's) shown as its own section (repeatable)"),
) -> None:
    """Write report.md (comparison table, plots, runs, exact commands) next to the comparison."""
    out = rep.write(study, compare_dir or study / "compare", list(command), tuple(secondary))
    Console().print(f"wrote {out}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
