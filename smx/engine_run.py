"""Running the fairseq engine for a run directory (smx.launch builds the command; this module runs it).

The engine is a subprocess in its own session (so that a terminal's Ctrl-C reaches smx first): output is teed to
train.log and parsed into metrics.jsonl (smx.metrics); a rich progress bar follows it (smx.progress); every
checkpoint save seen in the log updates checkpoints/SHA256SUMS (and once more at the end). SIGINT / SIGTERM are
forwarded to the engine's process group (a second one escalates to SIGTERM, a third to SIGKILL), the engine is
awaited, and meta.json says done, failed or interrupted. A resume drops the metrics logged after the checkpoint it
loads (they are logged again) and continues the wall clock.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smx import metrics
from smx.launch import Distributed, engine_command, engine_environment, fairseq_argv
from smx.recipes import Recipe
from smx.rundir import RunDir, now, update_meta, write_checksums


@dataclass
class _State:
    proc: subprocess.Popen | None = None
    interrupts: int = 0


def _forward(state: _State, signum: int) -> None:
    state.interrupts += 1
    if state.proc is None or state.proc.poll() is not None:
        return
    sig = signal.SIGINT if state.interrupts == 1 and signum == signal.SIGINT else signal.SIGTERM
    if state.interrupts >= 3:
        sig = signal.SIGKILL
    try:
        os.killpg(state.proc.pid, sig)
    except ProcessLookupError:
        pass


def train(recipe: Recipe, run: RunDir, data_dir: Path, *, resume: bool, device: str,
          dist: Distributed = Distributed(), console: Any = None, progress: bool = True) -> str:
    """Run the engine for `run` and return the final status: done | failed | interrupted (also in meta.json).

    The caller created/locked the run directory and wrote the snapshot (smx.rundir). Output goes to train.log,
    metrics to metrics.jsonl, checkpoint hashes to checkpoints/SHA256SUMS.
    """
    from smx.progress import TrainProgress

    argv = fairseq_argv(recipe, run.path, data_dir, resume=resume, device=device, world_size=dist.world_size)
    cmd = engine_command(argv, dist)
    run.argv.write_text(shlex.join(cmd) + "\n")
    state = _State()
    handlers = {}
    in_main = _is_main_thread()
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, lambda signum, frame: _forward(state, signum))
    t0 = time.monotonic()
    wall_offset = 0.0
    rc: int | None = None
    try:
        with open(run.log, "a", encoding="utf-8") as log, TrainProgress(
            recipe, console=console, enabled=progress
        ) as bar:
            log.write(f"# smx {now()}: {' '.join(cmd)}\n")
            log.flush()
            state.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=engine_environment(recipe, device), text=True, errors="replace", bufsize=1,
                start_new_session=True,
            )
            assert state.proc.stdout is not None
            for line in state.proc.stdout:
                log.write(line)
                log.flush()
                event = metrics.parse_event(line)
                if event is not None and event.kind == "saved":
                    write_checksums(run.checkpoints)
                elif event is not None and event.kind == "loaded":
                    wall_offset = _truncate_metrics(run, event.updates)
                entry = metrics.parse_line(line, wall_offset + time.monotonic() - t0)
                if entry is not None:
                    with open(run.metrics, "a", encoding="utf-8") as f:
                        f.write(metrics.dumps(entry) + "\n")
                    bar.update(entry)
            rc = state.proc.wait()
    except KeyboardInterrupt:  # not the main thread's handler: still stop the engine
        _forward(state, signal.SIGINT)
        state.interrupts = max(state.interrupts, 1)
        if state.proc is not None:
            rc = state.proc.wait()
    except BaseException:  # smx itself failed (disk full, ...): stop the engine, record it, re-raise
        update_meta(run, status="failed", end=now(), exit_code=None)
        raise
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
        if state.proc is not None and state.proc.poll() is None:
            _kill_group(state.proc)
        if run.checkpoints.is_dir():
            write_checksums(run.checkpoints)
    status = "interrupted" if state.interrupts else ("done" if rc == 0 else "failed")
    final = metrics.read(run.metrics) if run.metrics.is_file() else []
    summary = {k: v for k, v in (("train", metrics.last(final, "train")), ("valid", metrics.last(final, "valid"))) if v}
    update_meta(run, status=status, end=now(), exit_code=rc,
                last={split: {"step": e["step"], "loss": e["loss"]} for split, e in summary.items()})
    return status


def train_worker(recipe: Recipe, run_path: Path, data_dir: Path, *, resume: bool, device: str,
                 dist: Distributed) -> str:
    """A node with --node-rank > 0: run its engine processes; the rank-0 node keeps the run directory's records."""
    (run_path / "checkpoints").mkdir(parents=True, exist_ok=True)
    argv = fairseq_argv(recipe, run_path, data_dir, resume=resume, device=device, world_size=dist.world_size)
    proc = subprocess.Popen(engine_command(argv, dist), env=engine_environment(recipe, device), start_new_session=True)
    state = _State(proc=proc)
    handlers = {}
    if _is_main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, lambda signum, frame: _forward(state, signum))
    try:
        rc = proc.wait()
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
    return "interrupted" if state.interrupts else ("done" if rc == 0 else "failed")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the engine's whole process group (torchrun and its workers too) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _truncate_metrics(run: RunDir, step: int) -> float:
    """Resuming from a checkpoint at `step`: drop the metrics logged after it; return the wall clock reached."""
    if not run.metrics.is_file():
        return 0.0
    kept, wall = [], 0.0
    for raw in run.metrics.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if entry.get("step", 0) <= step:
            kept.append(raw)
            wall = max(wall, float(entry.get("wall", 0.0)))
    run.metrics.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return wall


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
