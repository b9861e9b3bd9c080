"""A Comparison written out: the table rows (terminal and compare.md), compare.md, compare.json and the plots.

Pure formatting of smx.study.compare's result; the CLI prints the same rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from smx.study import plots
from smx.study.compare import Comparison
from smx.study.stats import BOOT_SEED, N_BOOT, Interval
from smx.study.verdict import describe


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
    headers += ["verdict"] if c.baseline is not None else []
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
        if c.baseline is not None:
            row += ["baseline" if g.estimator == c.baseline else (g.verdict or "-")]
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
    lines += ["", c.flattening_line()] if c.flattening_line() else []
    lines += contrast_lines(c)
    lines += telemetry_lines(c)
    lines += [""] + [f"- {n}" for n in c.notes] if c.notes else []
    lines += [""] + [f"![{Path(p).stem}]({Path(p).name})" for p in images]
    return "\n".join(lines) + "\n"


def contrast_lines(c: Comparison) -> list[str]:
    """The verdicts in words and the table of every difference against the baseline, with intervals."""
    arms = [g for g in c.groups if g.contrasts]
    if c.baseline is None or not arms:
        return []
    lines = ["", f"## Against the baseline ({c.baseline})", ""] + [f"- {v}" for v in c.verdict_lines()]
    lines += ["", "| estimator | quantity | arm - baseline [95% CI] | verdict |", "|---|---|---|---|"]
    for g in arms:
        lines += [f"| {g.estimator} | {x.label} | {describe(x)} | {x.verdict} |" for x in g.contrasts]
    lines += ["", "Paired: per seed, arm minus baseline run of the same seed (same data order), Student-t interval "
              "of the mean difference; unpaired (no two common seeds): Welch's interval. The verdict (table column) "
              "is that of BLEU (tok), else test ppl, else best valid: better / worse when the interval excludes 0, "
              "else indistinguishable at 95%."]
    return lines


def telemetry_lines(c: Comparison) -> list[str]:
    """Routing telemetry per estimator (runs from before it was logged: no section)."""
    if not any(g.telemetry for g in c.groups):
        return []
    lines = ["", "## Routing telemetry (last logging step, mean over MoE layers and seeds)", "",
             "| arm | imbalance (max/mean load) | tokens without router gradient | router-logit RMS | experts per "
             "token | sparsity | ReMoE lambda |",
             "|---|---|---|---|---|---|---|"]
    for g in c.groups:
        t = g.telemetry
        cell = lambda key, f: f.format(t[key]) if key in t else "n/a"  # noqa: E731
        lines.append(f"| {g.estimator} | {cell('imbalance', '{:.3f}')} | {cell('nograd', '{:.1%}')} | "
                     f"{cell('logit_rms', '{:.3f}')} | {cell('active', '{:.2f}')} | {cell('sparsity', '{:.1%}')} | "
                     f"{cell('l1_coeff', '{:.2e}') if 'l1_coeff' in t else '-'} |")
    return lines


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
