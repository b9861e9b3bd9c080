"""Plots for `smx compare`: validation curves and expert-load heatmaps, rendered with matplotlib's Agg canvas.

No pyplot: figures are built with matplotlib.figure.Figure on a FigureCanvasAgg, so nothing touches matplotlib's
global backend or figure registry.
"""

from __future__ import annotations

import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_LOAD_KEY = re.compile(r"^moe_load_(enc|dec)(\d+)_e(\d+)$")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_curves(series, metric: str, target: float | None, path: Path) -> Path:
    """Validation curves: one mean line per estimator with a min-max band over seeds, and the target line.

    series: [(label, (updates, mean, min, max))] with equally long lists.
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for label, (steps, mean, lo, hi) in series:
        if not steps:
            continue
        (line,) = ax.plot(steps, mean, label=label, linewidth=1.6)
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    if target is not None:
        ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:.3f}")
    ax.set_xlabel("update")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{metric.replace('_', ' ')}: mean over seeds, band = min-max")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def load_matrix(load: dict[str, float]) -> tuple[list[str], int, list[list[float]]]:
    """moe_load_{enc|dec}{L}_e{i} values -> (row labels enc0.. dec0.., n_experts, rows x experts); missing = nan."""
    cells: dict[tuple[str, int], dict[int, float]] = {}
    for key, value in load.items():
        m = _LOAD_KEY.match(key)
        if m:
            cells.setdefault((m.group(1), int(m.group(2))), {})[int(m.group(3))] = float(value)
    layers = sorted(cells, key=lambda k: (k[0] != "enc", k[1]))
    n_exp = 1 + max((i for d in cells.values() for i in d), default=-1)
    rows = [[cells[k].get(i, float("nan")) for i in range(n_exp)] for k in layers]
    return [f"{s}{layer}" for s, layer in layers], n_exp, rows


def plot_expert_load(loads: dict[str, dict[str, float]], path: Path) -> Path:
    """One heatmap per estimator: MoE layers x experts, fraction of tokens routed (last logged values)."""
    mats = {name: load_matrix(load) for name, load in loads.items()}
    mats = {name: m for name, m in mats.items() if m[1] > 0}
    if not mats:
        raise ValueError("no moe_load_{enc|dec}{L}_e{i} values to plot")
    vmax = max(v for _, _, rows in mats.values() for r in rows for v in r if v == v)
    n = len(mats)
    height = max(2.0, 0.45 * max(len(m[0]) for m in mats.values()) + 1.2)
    fig = Figure(figsize=(max(4.0, 3.2 * n + 1.0), height))
    axes = fig.subplots(1, n, squeeze=False)[0]
    image = None
    for ax, (name, (labels, n_exp, rows)) in zip(axes, mats.items()):
        image = ax.imshow(rows, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(n_exp))
        ax.set_xlabel("expert")
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=8)
    fig.colorbar(image, ax=list(axes), label="fraction of tokens (uniform = 1/E)")
    return _save(fig, path)
