"""Side-by-side timing: interleaved A/B pairs in one process, medians, ratio of medians, per-pair ratios.

Order alternates A B, B A, A B, ... so that a slow drift of the machine (another process starting, thermal state)
hits both sides alike; the per-pair ratio median is robust to a burst of load during one pair, and pairs during which
other processes kept the CPU busy are run again (the machine is shared; a busy core distorts multi-threaded timings,
and MoE layers, with more and smaller parallel regions than one dense FFN, suffer more from it).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Row:
    """One comparison: side a against side b (ratio = a / b, lower is better for a when timing)."""

    name: str
    a: str
    b: str
    unit: str  # "ms" (time per call: ratio a/b) or "tok/s" (throughput: ratio a/b, higher is better)
    times_a: list[float]  # seconds per call, in run order
    times_b: list[float]
    median_a: float  # in `unit`
    median_b: float
    ratio: float  # of the medians, a / b in `unit`
    pair_ratio_median: float  # median over pairs of (a_i / b_i) in `unit`
    pair_ratio_min: float
    pair_ratio_max: float
    target: str  # e.g. "<= 1.10"
    met: bool | None  # None: informational row
    notes: str = ""
    extra: dict = field(default_factory=dict)


def command_line() -> str:
    """How this benchmark was invoked (recorded in the JSON)."""
    return shlex.join(["python", "-m", "bench", *sys.argv[1:]])


def check_target(value: float, target: str) -> bool | None:
    """'<= 1.10' / '>= 4' -> value compared; '' -> None."""
    if not target:
        return None
    op, bound = target.split()
    return value <= float(bound) if op == "<=" else value >= float(bound)


@dataclass(frozen=True)
class Pairs:
    """Timed pairs of one comparison, in run order (A and B of pair i ran back to back)."""

    times_a: list[float]  # seconds per call
    times_b: list[float]
    work_a: list[float]  # what each call returned (e.g. tokens processed); empty when the calls return None
    work_b: list[float]
    other_cores: list[float]  # per kept pair: cores other processes kept busy meanwhile (-1: pair too short)
    discarded: int  # pairs re-run because other processes were busy during them


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleave(fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int, warmup: int = 2,
               max_other_cores: float = 0.25, budget: float = 2.0) -> Pairs:
    """Warm-up calls of each side, then `repeats` pairs in alternating order (A B, B A, ...).

    A pair during which other processes kept more than max_other_cores cores busy (measured from /proc/stat for
    pairs of 0.5 s and longer) is discarded and run again, up to budget * repeats pairs in all; if the machine
    stays busy, the least disturbed pairs are kept (Pairs.other_cores says how disturbed they were).
    """
    for _ in range(warmup):
        fn_a()
        fn_b()
    kept: list[tuple] = []
    spare: list[tuple] = []
    attempts = 0
    while len(kept) < repeats and attempts < max(repeats, int(budget * repeats)):
        snap = cpu_snapshot()
        if attempts % 2 == 0:
            (ta, wa), (tb, wb) = _timed(fn_a), _timed(fn_b)
        else:
            (tb, wb), (ta, wa) = _timed(fn_b), _timed(fn_a)
        end = cpu_snapshot()
        attempts += 1
        other = other_load(snap, end) if end[0] - snap[0] >= 0.5 else -1.0
        (kept if other <= max_other_cores else spare).append((ta, tb, wa, wb, other))
    discarded = len(spare)
    kept += sorted(spare, key=lambda p: p[4])[: repeats - len(kept)]
    return Pairs(times_a=[p[0] for p in kept], times_b=[p[1] for p in kept],
                 work_a=[float(p[2]) for p in kept if p[2] is not None],
                 work_b=[float(p[3]) for p in kept if p[3] is not None],
                 other_cores=[round(p[4], 3) for p in kept], discarded=discarded)


def make_row(name: str, a: str, b: str, pairs: Pairs, target: str = "", throughput: bool = False,
             notes: str = "", extra: dict | None = None) -> Row:
    """Pairs -> medians and ratios (a / b). throughput: report work/s (the calls' return values) instead of ms."""
    if throughput:
        unit = "tok/s"
        va = [w / t for w, t in zip(pairs.work_a, pairs.times_a)]
        vb = [w / t for w, t in zip(pairs.work_b, pairs.times_b)]
    else:
        unit = "ms"
        va, vb = [t * 1e3 for t in pairs.times_a], [t * 1e3 for t in pairs.times_b]
    ratios = [x / y for x, y in zip(va, vb)]
    ratio = statistics.median(va) / statistics.median(vb)
    disturbed = sum(c > 0.25 for c in pairs.other_cores)
    if pairs.discarded:
        notes = (notes + "; " if notes else "") + (f"{pairs.discarded} pair(s) re-run (machine busy)"
                                                   + (f", {disturbed} kept under load" if disturbed else ""))
    return Row(name=name, a=a, b=b, unit=unit, times_a=pairs.times_a, times_b=pairs.times_b,
               median_a=statistics.median(va), median_b=statistics.median(vb), ratio=ratio,
               pair_ratio_median=statistics.median(ratios), pair_ratio_min=min(ratios), pair_ratio_max=max(ratios),
               target=target, met=check_target(ratio, target), notes=notes,
               extra={**(extra or {}), "other_cores_per_pair": pairs.other_cores, "pairs_rerun": pairs.discarded})


def git_commit() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    # changes to code, not the benchmarks' own output files (written as `make bench` goes)
    dirty = bool(git("status", "--porcelain", "--", ".", ":(exclude)bench/results"))
    return {"commit": commit, "uncommitted_changes": dirty,
            "commit_label": commit + (" + uncommitted changes" if dirty else "")}


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall seconds, busy CPU seconds of the whole machine, CPU seconds of this process) now."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    own = time.process_time()
    return time.monotonic(), (sum(fields[:8]) - idle) / tick, own


def other_load(start: tuple[float, float, float], end: tuple[float, float, float]) -> float:
    """Average number of cores other processes kept busy between two cpu_snapshot()s."""
    wall = max(end[0] - start[0], 1e-9)
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / wall)


def wait_idle(max_seconds: float, console: Console | None = None, threshold: float = 0.15) -> float:
    """Wait (at most max_seconds) until other processes use < threshold cores over a 5 s window. -> that load."""
    console = console or Console(stderr=True)
    begin = time.monotonic()
    last_note = -60.0
    while True:
        start = cpu_snapshot()
        time.sleep(5)
        load = other_load(start, cpu_snapshot())
        waited = time.monotonic() - begin
        if load < threshold or waited >= max_seconds:
            console.print(f"[dim]after {waited:.0f} s: other processes use {load:.2f} cores[/]")
            return load
        if waited - last_note >= 60:
            console.print(f"[dim]waiting (up to {max_seconds:.0f} s) for an idle machine: other processes use "
                          f"{load:.2f} cores[/]")
            last_note = waited


def environment(threads: int) -> dict:
    return {**git_commit(), "torch": torch.__version__, "threads": threads, "python": platform.python_version(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "mkldnn": torch.backends.mkldnn.is_available(),
            "loadavg_start": list(os.getloadavg()), "_cpu_start": cpu_snapshot()}


def setup_threads(threads: int | None) -> int:
    """torch.set_num_threads(threads or all cores); the same count for every side of every row."""
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def loaded(env: dict) -> bool:
    """Other processes kept more than 0.25 of a core busy on average while we measured."""
    return env["other_processes_cores"] > 0.25


def report(title: str, benchmark: str, env: dict, rows: list[Row], json_path: Path | None, command: str,
           options: dict | None = None, console: Console | None = None) -> dict:
    """Print the rich table and write the JSON (default bench/results/<benchmark>.json). -> the JSON document."""
    console = console or Console(width=200)
    env = {**env, "loadavg_end": list(os.getloadavg())}
    env["other_processes_cores"] = round(other_load(env.pop("_cpu_start"), cpu_snapshot()), 3)
    env["machine_loaded"] = loaded(env)
    table = Table(title=f"{title}  [dim]({env['commit_label']}, torch {env['torch']}, {env['threads']} threads)")
    for col in ("row", "A", "B", "median A", "median B", "ratio A/B", "pair ratio med [min, max]", "target", ""):
        table.add_column(col, justify="right" if col.startswith(("median", "ratio", "pair")) else "left")
    for r in rows:
        status = "" if r.met is None else ("[green]met[/]" if r.met else "[red]NOT met[/]")
        table.add_row(r.name, r.a, r.b, f"{r.median_a:,.1f} {r.unit}", f"{r.median_b:,.1f} {r.unit}",
                      f"{r.ratio:.3f}x", f"{r.pair_ratio_median:.3f} [{r.pair_ratio_min:.3f}, {r.pair_ratio_max:.3f}]",
                      r.target, status)
    console.print(table)
    for r in rows:
        if r.notes:
            console.print(f"[dim]{r.name}: {r.notes}[/]")
    if env["machine_loaded"]:
        console.print(f"[yellow]machine loaded: other processes kept {env['other_processes_cores']:.2f} of "
                      f"{env['cpu_count']} cores busy on average during the run (load average "
                      f"{env['loadavg_start'][0]:.2f} -> {env['loadavg_end'][0]:.2f}); ratios are side by side but "
                      f"multi-threaded ratios suffer from oversubscription[/]")
    else:
        console.print(f"[dim]machine quiet: other processes used {env['other_processes_cores']:.2f} cores[/]")
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in (options or {}).items()}
    doc = {"benchmark": benchmark, "title": title, "command": command, "options": options, **env,
           "rows": [asdict(r) for r in rows]}
    path = json_path or RESULTS_DIR / f"{benchmark}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"[dim]wrote {path}[/]")
    return doc
