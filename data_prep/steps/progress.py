"""Rich progress bars for long steps (downloads, tokenization, BPE, binarization); silent when disabled."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _human(n: float, unit: str) -> str:
    if unit != "B":
        return f"{int(n):,}"
    for suffix in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or suffix == "TB":
            return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.1f} {suffix}"
        n /= 1000
    return str(n)


class Reporter:
    """One rich Progress per prep run (stderr). `task()` gives an advance(n) callable; no output when disabled."""

    def __init__(self, enabled: bool, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(file=sys.stderr, highlight=False)
        self._progress: Progress | None = None

    def __enter__(self) -> Reporter:
        if self.enabled:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[count]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, markup=False)

    @contextmanager
    def task(self, description: str, total: float | None = None, unit: str = "lines") -> Iterator[Callable[[float], None]]:
        """Yield advance(n); the bar shows n done of total (total None: a spinner with a running count)."""
        progress = self._progress
        if progress is None:
            yield lambda n: None
            return
        done = [0.0]

        def fmt() -> str:
            shown = _human(done[0], unit)
            if total:
                shown += f"/{_human(total, unit)}"
            return shown + ("" if unit == "B" else f" {unit}")

        task_id = progress.add_task(description, total=total, count=fmt())

        def advance(n: float) -> None:
            done[0] += n
            progress.update(task_id, advance=n, count=fmt())

        try:
            yield advance
        finally:
            progress.update(task_id, completed=total if total else done[0], total=total or done[0] or 1)
            progress.remove_task(task_id)
