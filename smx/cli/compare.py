"""`smx compare`: aggregate runs per arm (smx.study.compare), print the table, write the outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from smx.cli.output import table_console
from smx.errors import UserError
from smx.run.paths import RunDir
from smx.run.writable import check_dir
from smx.study.compare import discover, load_runs, summarize
from smx.study.outputs import protocol_line, table_rows, write_outputs


def compare(
    runs: list[Path] = typer.Argument(..., help="Run directories and/or study directories (runs roots)."),
    baseline: Optional[str] = typer.Option(
        None, help="Baseline estimator for targets and speed-ups (default: topk if present)."),
    metric: str = typer.Option(
        "valid_loss", help="Curve to compare: <split>_<field>, lower is better (valid_loss, valid_nll_loss, "
        "valid_ppl)."),
    target: Optional[float] = typer.Option(
        None, help="Target value (default: the best value of the baseline mean curve)."),
    interpolate: bool = typer.Option(False, help="Interpolate updates-to-target linearly between validation points."),
    out: Optional[Path] = typer.Option(
        None, help="Output directory (default: STUDY/compare for one study dir, else ./compare)."),
) -> None:
    """Table, curves and steps-to-target speed-ups of runs grouped by arm (estimator and routing variant), seeds
    aggregated."""
    paths = discover(runs)
    if out is None:
        single_study = len(runs) == 1 and not RunDir(runs[0]).meta.is_file()
        out = runs[0] / "compare" if single_study else Path("compare")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    check_dir(out, "--out")  # before the table is printed
    loaded, skipped = load_runs(paths)
    c = summarize(loaded, metric=metric, baseline=baseline or "topk", target=target, interpolate=interpolate,
                  require_baseline=baseline is not None, skipped=skipped)
    headers, rows = table_rows(c)
    table = Table(title=f"{len(loaded)} runs, {len(c.groups)} arms"
                  + (f", target {c.metric} {c.target:.4f} ({c.target_source})" if c.target is not None else ""))
    for i, h in enumerate(headers):
        table.add_column(h, overflow="fold", no_wrap=i == 0)
    for r in rows:
        table.add_row(*map(escape, r))  # an arm label such as topk[balance=loss_free] is text, not markup
    console = table_console()
    console.print(table)
    console.print(protocol_line(c).replace("**", ""), markup=False)
    for key, per in c.differences.items():
        console.print(f"differs: {key}: " + "; ".join(f"{e} {', '.join(map(json.dumps, v))}" for e, v in per.items()),
                      markup=False)
    for n in c.notes:
        console.print(f"note: {n}", markup=False)
    for p in write_outputs(c, out):
        console.print(f"wrote {p}", markup=False)
    if c.flattening_line():
        console.print(c.flattening_line(), markup=False)
    for v in c.verdict_lines():
        console.print(f"Verdict: {v}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
