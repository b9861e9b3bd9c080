"""The rich progress display of a training run: update/max_update, loss, lr, tokens/s, ETA; one line per validation."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from smx.recipe.recipes import Recipe


def _fmt_rate(wps: float | None) -> str:
    if wps is None:
        return "-"
    return f"{wps / 1000:.1f}k tok/s" if wps >= 1000 else f"{wps:.0f} tok/s"


class TrainProgress:
    """Context manager; call update(entry) with each metrics.jsonl entry."""

    def __init__(self, recipe: Recipe, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.total = recipe.train.max_update or None
        self.label = f"{recipe.router.estimator} s{recipe.seed}"
        self.progress: Progress | None = None
        self.task: Any = None
        self.seen_first = False

    def __enter__(self) -> "TrainProgress":
        if self.enabled:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[wps]}  eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task(self.label, total=self.total, loss="-", lr="-", wps="-")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def update(self, entry: dict) -> None:
        if self.progress is None:
            return
        step = entry["step"]
        if entry["split"] == "valid":
            extra = f" ppl {entry['ppl']:.2f}" if "ppl" in entry else ""
            self.progress.console.print(f"valid @ update {step}: loss {entry['loss']:.3f}{extra}", highlight=False)
            self.progress.update(self.task, completed=step)
            return
        if entry.get("epoch_end"):
            return
        fields = {"loss": f"{entry['loss']:.3f}", "wps": _fmt_rate(entry.get("wps"))}
        if "lr" in entry:
            fields["lr"] = f"{entry['lr']:.3g}"
        if not self.seen_first:  # a resumed run starts mid-way: do not count the jump in the speed estimate
            self.seen_first = True
            self.progress.reset(self.task, completed=step, total=self.total, **fields)
        else:
            self.progress.update(self.task, completed=step, **fields)
