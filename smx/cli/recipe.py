"""`smx recipe validate FILE...` and `smx recipe show FILE [--set a.b=v]`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from smx.recipe import protocol
from smx.recipe import recipes
from smx.errors import UserError

app = typer.Typer(no_args_is_help=True, help="Check recipes and show them resolved.")


@app.command()
def validate(
    files: List[Path] = typer.Argument(..., help="recipe YAML files"),
    set_: List[str] = typer.Option([], "--set", help="override KEY=VALUE (repeatable), e.g. --set moe.k=2"),
) -> int:
    """Check recipes: `ok` or every problem (one line each, with its key path) per file; exit 2 if any is bad."""
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    bad = 0
    for path in files:
        try:
            recipes.load(path, set_)
        except UserError as e:
            bad += 1
            for line in str(e).splitlines():
                err.print(f"error: {line}", markup=False)
        else:
            out.print(f"ok: {path}", markup=False)
    if bad:
        raise typer.Exit(code=2)
    return 0


@app.command()
def show(
    file: Path = typer.Argument(..., help="recipe YAML file"),
    set_: List[str] = typer.Option([], "--set", help="override KEY=VALUE (repeatable)"),
    estimator: Optional[str] = typer.Option(None, "--estimator", help="use this router estimator (as smx train)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="use this seed (as smx train)"),
) -> int:
    """Print the resolved arm (protocol, estimator and the settings the protocol decides), then the resolved recipe
    (every key explicit, overrides applied) as YAML."""
    overrides = list(set_) + ([f"seed={seed}"] if seed is not None else [])
    notes: list[str] = []
    recipe = recipes.load(file, overrides, estimator=estimator, notes=notes)
    for note in notes:
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"note: {note}", markup=False)
    out = Console(soft_wrap=True)
    out.print(arm_table(protocol.arm_settings(recipe)))
    out.print(Syntax(recipes.dump(recipe), "yaml", theme="ansi_dark", background_color="default"))
    return 0


def arm_table(arm: dict) -> Table:
    """The resolved arm as a two-column table (one row per setting; the reference's differences one row each)."""
    table = Table(title=f"arm: {arm['estimator']} under protocol {arm['protocol']}", show_header=False,
                  title_justify="left")
    for key, value in arm.items():
        if key == "differences":
            for line in value:
                table.add_row("differs from the reference", line)
        elif key not in ("estimator", "protocol"):
            table.add_row(key, json.dumps(value) if isinstance(value, (dict, bool)) or value is None else str(value))
    return table


def register(parent: typer.Typer) -> None:
    """Add the `smx recipe ...` command group."""
    parent.add_typer(app, name="recipe")
