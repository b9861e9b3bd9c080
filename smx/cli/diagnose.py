"""`smx diagnose gradients`: the gradient-fidelity study (smx.diagnose) as a rich table and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from smx import diagnose as diag
from smx.cli.output import table_console
from smx.errors import UserError
from smx.run.writable import check_file

app = typer.Typer(no_args_is_help=True, help="Diagnostics: router gradient fidelity against exact gradients.")


@app.command()
def gradients(
    experts: int = typer.Option(4, "--experts", help="number of experts E"),
    k: int = typer.Option(1, "--k", help="experts per token"),
    tokens: int = typer.Option(32, "--tokens", help="tokens T"),
    samples: int = typer.Option(4000, "--samples", help="Monte-Carlo samples M per estimator"),
    loss: str = typer.Option("quadratic", "--loss", help="per-token loss: linear | quadratic | mlp"),
    jitter_eps: Optional[float] = typer.Option(None, "--jitter-eps", help="override the SparseMixer mask band"),
    reference_eps: Optional[float] = typer.Option(
        None, "--reference-eps", help="exact reference = masked-sampling model with this band (default: plain softmax)"),
    logit_offset: float = typer.Option(
        0.0, "--logit-offset", help="add to every logit (softmax-invariant; moves the SparseMixer mask)"),
    seed: int = typer.Option(0, "--seed"),
    json_file: Optional[Path] = typer.Option(None, "--json", help="also write the numbers to this JSON file"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing --json file"),
) -> None:
    """Exact enumerated vs estimated router gradients for every estimator on a single-MoE-layer problem."""
    if json_file is not None and json_file.exists() and not force:
        raise UserError(f"--json {json_file}: file exists; pass --force to overwrite it")
    if json_file is not None and not json_file.parent.is_dir():
        raise UserError(f"--json {json_file}: directory {json_file.parent} does not exist")
    if json_file is not None:
        check_file(json_file, "--json")  # before the study, not after it
    result = diag.study(experts, k, tokens, samples, loss, jitter_eps, seed, reference_eps=reference_eps, offset=logit_offset)
    console = table_console()
    s = result["settings"]
    eps = "reference defaults" if jitter_eps is None else f"{jitter_eps:g}"
    table = Table(title=f"Router gradient fidelity: E={experts} k={k} T={tokens} M={samples} loss={loss} "
                        f"jitter_eps={eps} reference="
                        f"{'softmax' if reference_eps is None else f'masked eps={reference_eps:g}'} offset={logit_offset:g} seed={s['seed']}")
    for col in ("estimator", "cosine to exact", "rel. bias", "rel. std", "MC noise floor", "ms / call"):
        table.add_column(col, justify="left" if col == "estimator" else "right", no_wrap=col == "estimator")
    for r in result["rows"]:
        table.add_row(r["estimator"], f"{r['cosine']:.4f}", f"{r['rel_bias']:.4f}", f"{r['rel_std']:.4f}",
                      f"{r['noise_floor']:.4f}", f"{r['ms_per_call']:.3f}")
    console.print(table)
    for name, why in result["skipped"].items():
        console.print(f"[dim]skipped {name}: {why}[/dim]")
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {json_file}")


def register(parent: typer.Typer) -> None:
    """Add the `smx diagnose ...` command group."""
    parent.add_typer(app, name="diagnose")
