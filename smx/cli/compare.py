"""`smx compare` and `smx sweep`: aggregate runs per estimator; run an estimator x seed grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from smx import plots
from smx.cli.output import table_console
from smx.compare import Comparison, discover, load_run, summarize
from smx.stats import BOOT_SEED, N_BOOT, Interval


def fmt_interval(iv: Interval | None, digits: int = 3) -> str:
    if iv is None:
        return "-"
    if iv.lo is None:
        return f"{iv.mean:.{digits}f}"
    return f"{iv.mean:.{digits}f} ± {(iv.hi - iv.lo) / 2:.{digits}f}"  # symmetric t-interval: mean ± half-width


def _fmt_wall(iv: Interval | None) -> str:
    if iv is None:
        return "-"
    s = iv.mean
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def table_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the comparison table (shared by the terminal table and compare.md)."""
    g0 = c.groups
    has_bleu = any(g.bleu_tok or g.sacrebleu for g in g0)
    has_ppl = any(g.ppl for g in g0)
    headers = ["estimator", "seeds", f"best {c.metric}", f"final {c.metric}"]
    headers += ["BLEU (tok)", "sacreBLEU"] if has_bleu else []
    headers += ["test ppl"] if has_ppl else []
    headers += ["updates to target (reached)", "speed-up [95% CI]", "tokens/s", "wall"]
    rows = []
    for g in g0:
        seeds = ",".join("?" if s is None else str(s) for s in g.seeds)
        row = [g.estimator, seeds, fmt_interval(g.best), fmt_interval(g.final)]
        row += [fmt_interval(g.bleu_tok, 2), fmt_interval(g.sacrebleu, 2)] if has_bleu else []
        row += [fmt_interval(g.ppl, 2)] if has_ppl else []
        steps = "-" if c.target is None else f"{fmt_interval(g.steps_ci, 0)} ({g.reached}/{len(g.steps)})"
        if g.speedup is None:
            speed = g.speedup_note or "-"
        elif g.speedup_lo is None:
            speed = f"{g.speedup:.2f}x" + (" (baseline)" if g.speedup_note == "baseline" else "")
        else:
            speed = f"{g.speedup:.2f}x [{g.speedup_lo:.2f}, {g.speedup_hi:.2f}]"
        row += [steps, speed, "-" if g.wps is None else f"{g.wps.mean:.0f}", _fmt_wall(g.wall)]
        rows.append(row)
    return headers, rows


def markdown(c: Comparison, images: list[str]) -> str:
    headers, rows = table_rows(c)
    lines = ["# smx compare", "", protocol_line(c), ""]
    lines += differences_lines(c)
    if c.target is not None:
        lines += [f"Target {c.metric} = {c.target:.4f} ({c.target_source}).", ""]
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "Method: mean ± half-width of the 95% Student-t interval over seeds; updates to target: per "
              "seed, the "
              "first validated update with " + c.metric + " <= target"
              + (" (linear interpolation between validation points)" if c.interpolate else " (no interpolation)")
              + ", mean over the seeds that reached it; speed-up: baseline mean updates-to-target / estimator mean, "
              f"95% percentile bootstrap over seeds ({N_BOOT} resamples, fixed seed {BOOT_SEED}), only when every "
              "seed of both groups reached the target; tokens/s: mean train wps; wall: last logged wall time; all "
              "means over seeds. Exact intervals are in compare.json."]
    lines += [""] + [f"- {n}" for n in c.notes] if c.notes else []
    lines += [""] + [f"![{Path(p).stem}]({Path(p).name})" for p in images]
    return "\n".join(lines) + "\n"


def protocol_line(c: Comparison) -> str:
    if c.protocol == "reference":
        return ("Protocol: **reference** (each arm trained as its reference code trains it; the settings that differ "
                "between the arms are listed below).")
    return ("Protocol: **controlled** (every setting but the estimator identical across arms"
            + ("; yet some differ, listed below)." if c.differences else ")."))


def differences_lines(c: Comparison) -> list[str]:
    """A markdown table of every resolved setting that differs between the compared runs (none: nothing)."""
    if not c.differences:
        return ["Settings that differ between the arms: none besides the estimator.", ""]
    estimators = [g.estimator for g in c.groups]
    lines = ["Settings that differ between the arms:", "", "| setting | " + " | ".join(estimators) + " |",
             "|" + "---|" * (len(estimators) + 1)]
    for key, per in c.differences.items():
        cells = [", ".join(json.dumps(v) for v in per.get(e, [])) or "-" for e in estimators]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_outputs(c: Comparison, out: Path) -> list[Path]:
    """Write compare.md, compare.json, curves.png and expert_load.png (when loads were logged) into out."""
    out.mkdir(parents=True, exist_ok=True)
    images = [plots.plot_curves([(g.estimator, g.curve) for g in c.groups], c.metric, c.target, out / "curves.png")]
    loads = {g.estimator: g.load for g in c.groups if g.load}
    if loads:
        images.append(plots.plot_expert_load(loads, out / "expert_load.png"))
    (out / "compare.json").write_text(json.dumps(c.to_dict(), indent=2) + "\n")
    (out / "compare.md").write_text(markdown(c, [str(p) for p in images]))
    return [out / "compare.md", out / "compare.json", *images]


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
    """Table, curves and steps-to-target speed-ups of runs grouped by estimator, seeds aggregated."""
    paths = discover(runs)
    loaded = [load_run(p) for p in paths]
    c = summarize(loaded, metric=metric, baseline=baseline or "topk", target=target, interpolate=interpolate,
                  require_baseline=baseline is not None)
    if out is None:
        single_study = len(runs) == 1 and not (runs[0] / "meta.json").is_file()
        out = runs[0] / "compare" if single_study else Path("compare")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    headers, rows = table_rows(c)
    table = Table(title=f"{len(loaded)} runs, {len(c.groups)} estimators"
                  + (f", target {c.metric} {c.target:.4f} ({c.target_source})" if c.target is not None else ""))
    for i, h in enumerate(headers):
        table.add_column(h, overflow="fold", no_wrap=i == 0)
    for r in rows:
        table.add_row(*r)
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
    from smx import sweep as sw

    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {device!r}: expected auto, cpu or cuda")
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: expected an integer >= 1")
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
        from smx.sweep_parallel import run_parallel

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
    """Add `compare` and `sweep` to the smx app."""
    app.command("compare")(compare)
    app.command("sweep")(sweep)
