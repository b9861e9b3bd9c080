"""`smx sweep --jobs N`: train up to N grid cells at once, each as its own `smx train` child process.

On a CPU box, runs with one torch thread each (train.cpu_threads, default 1) scale almost linearly with cores, so
a 2-core machine finishes a two-estimator head-to-head in about half the time of the sequential sweep. Each child
writes its console output to <study dir>/logs/<run name>.log; its outcome is read back from the run's meta.json.
SIGINT, SIGTERM or SIGHUP to the sweep is forwarded to every running child (Ctrl-C reaches them anyway, through the
process group; `smx train` counts signals within two seconds as one request): each saves, marks its run interrupted
and exits; the sweep waits for them (up to 120 s each) and exits 130. No child is left training unwatched.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

from smx.engine.contract import STOP_SIGNALS
from smx.engine.children import is_main_thread
from smx.run.paths import RunDir
from smx.study.sweep import Cell, SweepPlan, write_study
from smx.recipe import recipes
from smx.run import train as training

VERB = {"start": "starting", "resume": "resuming"}


def cell_argv(plan: SweepPlan, cell: Cell, device: str | None) -> list[str]:
    """The `smx train` argv (without the interpreter) that starts or resumes one cell."""
    if cell.action == "resume":
        args = ["train", "--resume", str(cell.path)]
    else:
        args = ["train", str(plan.recipe_path), "--estimator", cell.estimator, "--seed", str(cell.seed),
                "--runs-root", str(plan.study_dir), *(x for s in plan.overrides for x in ("--set", s))]
    if device is not None:
        args += ["--device", device]
    return args + ["--no-progress"]


def outcome(path: Path, returncode: int) -> str:
    status = RunDir(path).status()
    if status in ("done", "failed", "interrupted"):
        return status
    return "interrupted" if returncode == 130 else f"error: exit code {returncode} (see the log)"


def run_parallel(plan: SweepPlan, jobs: int, device: str | None = None, console=None) -> dict[Path, str]:
    """Run the plan's start/resume cells, at most `jobs` at a time; same outcomes as smx.study.sweep.run_sweep."""
    from rich.console import Console

    console = console or Console(stderr=True)
    # prepare the dataset once, here, rather than racing for its lock in every child
    first = plan.cells[0].estimator if plan.cells else None  # the recipe's own estimator may not take the overrides
    training.data_dir(recipes.load(plan.recipe_path, list(plan.overrides), estimator=first), console=console)
    write_study(plan)
    logs = plan.study_dir / "logs"
    logs.mkdir(exist_ok=True)
    results: dict[Path, str] = {}
    pending = []
    for cell in plan.cells:
        if cell.action in ("skip", "blocked"):
            results[cell.path] = "skipped" if cell.action == "skip" else "blocked"
            console.print(f"{cell.path}: {results[cell.path]}", markup=False, highlight=False)
        else:
            pending.append(cell)
    running: dict[Cell, tuple[subprocess.Popen, float]] = {}

    def stop(signum, frame) -> None:
        for proc, _ in running.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
        for sig in STOP_SIGNALS:  # one request: later signals go to the children through their own handlers
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    handlers = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS} if is_main_thread() else {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                cell = pending.pop(0)
                log = (logs / f"{cell.path.name}.log").open("a")
                proc = subprocess.Popen([sys.executable, "-m", "smx", *cell_argv(plan, cell, device)],
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                log.close()
                running[cell] = (proc, time.monotonic())
                console.print(f"{cell.estimator} seed {cell.seed}: {VERB[cell.action]} -> {cell.path} "
                              f"(log: {logs / (cell.path.name + '.log')})", markup=False, highlight=False)
            time.sleep(0.5)
            for cell, (proc, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[cell]
                results[cell.path] = outcome(cell.path, proc.returncode)
                console.print(f"{cell.estimator} seed {cell.seed}: {results[cell.path]} after "
                              f"{time.monotonic() - start:.0f} s", markup=False, highlight=False)
    except KeyboardInterrupt:
        for proc, _ in running.values():
            try:
                proc.wait(timeout=120)  # the children got the signal too: let them checkpoint
            except subprocess.TimeoutExpired:
                proc.kill()
        for cell in running:
            results[cell.path] = "interrupted"
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
    return results
