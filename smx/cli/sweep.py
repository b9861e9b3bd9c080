"""`smx sweep`: train an estimator x seed grid of one recipe into a study directory (smx.study.sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from smx.errors import UserError
from smx.study import sweep as sw
from smx.study.parallel import run_parallel


def sweep(
    recipe: Path = typer.Argument(..., help="Recipe YAML."),
    estimators: str = typer.Option(..., help="Comma-separated estimators, e.g. topk,sparsemixer,sparsemixer_v2."),
    seeds: str = typer.Option("1,2,3", help="Comma-separated seeds."),
    set_: list[str] = typer.Option([], "--set", help="Override KEY=VALUE for every run (repeatable)."),
    study_dir: Optional[Path] = typer.Option(None, help="Runs root of the study (default: studies/<recipe name>)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (overrides train.device)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (start / resume / skip) and stop."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    jobs: int = typer.Option(1, "--jobs", help="Runs trained at once, each in its own process (CPU: one per core)."),
) -> int:
    """Train the estimator x seed grid of RECIPE into one study directory (--jobs runs at once); rerun to resume."""
    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {device!r}: expected auto, cpu or cuda")
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: expected an integer >= 1")
    plan = sw.plan_sweep(recipe, sw.parse_list(estimators, "--estimators"), sw.parse_seeds(seeds), list(set_),
                         study_dir)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    table = Table(title=f"study {plan.study_dir} ({plan.recipe_name}, {len(plan.cells)} runs)")
    for h in ("estimator", "seed", "run directory", "action"):
        table.add_column(h)
    for c in plan.cells:
        table.add_row(c.estimator, str(c.seed), str(c.path), c.action)
    console.print(table)
    if dry_run:
        return 0
    argv = ("smx", "sweep", str(recipe), "--estimators", estimators, "--seeds", seeds,
            *(x for s in set_ for x in ("--set", s)), "--study-dir", str(plan.study_dir))
    if jobs > 1:
        results = run_parallel(plan, jobs, device=device, console=console)
    else:
        results = sw.run_sweep(plan, device=device, progress=not no_progress, console=console, argv=argv)
    bad = {p: r for p, r in results.items() if r not in ("done", "skipped")}
    for p, r in bad.items():
        console.print(f"{p}: {r}", markup=False)
    console.print(f"compare with: smx compare {plan.study_dir}", markup=False)
    if "interrupted" in results.values():
        raise typer.Exit(130)
    if bad:
        raise typer.Exit(1)
    return 0


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
