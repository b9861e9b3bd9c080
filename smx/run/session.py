"""Running the fairseq engine for a run directory: smx.engine.argv builds the arguments, smx.engine.process the
command; this module runs it, follows train.log into metrics.jsonl and keeps meta.json.

The engine is a subprocess in its own session (so that a terminal's Ctrl-C reaches smx first) that writes its output
straight into train.log (so nothing it logged is lost if smx dies); smx follows the file, parses it into
metrics.jsonl (smx.run.metrics) and drives a rich progress bar (smx.run.progress).

Reliability (see also smx.fairseq_plugin.guards, the engine-side half):
- The engine dies with smx: on Linux it gets SIGKILL when smx dies (PR_SET_PDEATHSIG; torchrun workers watch their
  parent, smx.engine.entry), so a kill -9 of smx never leaves an orphan training on.
- Checkpoint hashes are recorded by the engine when it saves (never by smx re-hashing whatever is on disk); smx only
  drops the lines of checkpoints the engine removed. A resume passes the hash smx verified to the engine, which
  checks it again right before unpickling.
- SIGINT / SIGTERM / SIGHUP (Ctrl-C; a scheduler's preemption or time limit; a closed terminal): the first one asks
  the engine to save checkpoint_last.pt after the current update and stop: the same signal to the engine process,
  or under torchrun to its workers only (the agent would kill them at once; the workers agree on the update to stop
  after, smx.fairseq_plugin.guards). The engine also stops gracefully when the signal reaches it directly (SLURM
  and Kubernetes signal every process of the job; signals within a second or two count as one request). A second
  request to smx kills the engine's process group (SIGKILL; checkpoints are written atomically). meta.json then
  says interrupted, and `interrupted_by` names the signal.
- A resume drops the metrics logged after the checkpoint it loads (they are logged again), recovers from train.log
  the ones up to it that smx had not yet written when it was killed, and continues the wall clock.
- A non-finite loss (SMX_NONFINITE line) ends the run as failed, with meta.json "failure" naming the update and the
  last checkpoint saved before it.
- Disk full (the engine cannot save, or smx cannot append metrics): the engine is stopped, its partial checkpoint
  removed, and meta.json says failed with reason "no space" (written into the room of RESERVE_NAME, a small file
  kept for that while the engine runs); the checkpoints saved before are intact and --resume continues from them.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smx.engine import checksums
from smx.engine.contract import SAME_REQUEST_S, STOP_SIGNALS
from smx.engine.argv import fairseq_argv
from smx.engine.procfs import children
from smx.engine.children import die_with_parent, is_main_thread, kill_group
from smx.engine.process import Distributed, engine_command, engine_environment, follow, train_env_additions, verify_env
from smx.errors import NO_SPACE_ERRNOS, UserError
from smx.recipe.recipes import Recipe
from smx.run import metrics
from smx.run.paths import RESERVE_NAME, RunDir, now, prune_checksums, read_meta, update_meta, write_meta
from smx.run.progress import TrainProgress



RESERVE_BYTES = 256 << 10
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")


@dataclass
class _State:
    proc: subprocess.Popen | None = None
    interrupts: int = 0
    signal_name: str | None = None  # the first stop request (SIGINT, SIGTERM or SIGHUP)
    first_at: float = 0.0  # monotonic time of the first request
    graceful: bool = False  # the engine saves and stops on SIGINT (not a --node-rank > 0 worker node)
    distributed: bool = False  # proc is the torchrun agent; its children are the engine processes
    nonfinite: dict | None = None
    saved: metrics.CheckpointEvent | None = None
    trained: bool = False  # this session logged a training update or saved a checkpoint
    notes: list[str] = field(default_factory=list)


def _forward(state: _State, signum: int) -> None:
    now_s = time.monotonic()
    if state.interrupts and now_s - state.first_at <= SAME_REQUEST_S:
        return  # e.g. the terminal's SIGINT and a sweep's forwarded one, or a scheduler's SIGTERM to every process
    state.interrupts += 1
    if state.interrupts == 1:  # the budget timer names itself before it calls this
        state.first_at, state.signal_name = now_s, state.signal_name or signal.Signals(signum).name
    if state.proc is None or state.proc.poll() is not None:
        return
    try:
        if state.interrupts == 1 and state.graceful:
            targets = children(state.proc.pid) if state.distributed else [state.proc.pid]
            if targets:  # the engine processes only (not torchrun's agent, not the data-loader workers)
                for pid in targets:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signum)
                return
        os.killpg(state.proc.pid, signal.SIGKILL if state.interrupts >= 2 else signum)
    except ProcessLookupError:
        pass


def _catch_stop_signals(state: _State) -> dict:
    """Route SIGINT / SIGTERM / SIGHUP to _forward (main thread only); returns the previous handlers."""
    handlers = {}
    if is_main_thread():
        for sig in STOP_SIGNALS:
            handlers[sig] = signal.signal(sig, lambda signum, frame: _forward(state, signum))
    return handlers


def _handle(line: str, run: RunDir, state: _State, session_start: int, clock: dict, bar: Any) -> None:
    event = metrics.parse_event(line)
    if event is not None and event.kind == "saved":
        state.saved, state.trained = event, True
    elif event is not None and event.kind == "loaded":
        clock["offset"] = _resume_metrics(run, event.updates, session_start)
    if state.nonfinite is None and (bad := metrics.parse_nonfinite(line)) is not None:
        state.nonfinite = bad
    entry = metrics.parse_line(line, clock["offset"] + time.monotonic() - clock["t0"])
    if entry is not None:
        state.trained = state.trained or entry.get("split") == "train"
        with open(run.metrics, "a", encoding="utf-8") as f:
            f.write(metrics.dumps(entry) + "\n")
        bar.update(entry)


def train(recipe: Recipe, run: RunDir, data_dir: Path, *, resume: bool, device: str,
          dist: Distributed = Distributed(), console: Any = None, progress: bool = True,
          verified: dict[Path, str] | None = None, stop_after_s: float | None = None,
          restore: str = "checkpoint_last.pt", previous: dict | None = None) -> str:
    """Run the engine for `run` and return the final status: done | failed | interrupted (also in meta.json).

    The caller created/locked the run directory and wrote the snapshot (smx.run.paths); `verified` maps the checkpoint
    a resume loads to the sha256 the caller checked. Output goes to train.log, metrics to metrics.jsonl; the engine
    records checkpoint hashes in checkpoints/SHA256SUMS. stop_after_s: after that many seconds the engine is asked
    to stop as on SIGINT (meta.json interrupted_by names the budget). previous: a resumed run's meta.json before
    this session, restored (with the failed attempt appended to its resumes) when the session fails before training.
    """
    argv = fairseq_argv(recipe, run.path, data_dir, resume=resume, device=device, world_size=dist.world_size,
                        restore=restore)
    cmd = engine_command("fairseq_cli.train", argv, dist)
    run.argv.write_text(shlex.join(cmd) + "\n")
    _remove_partial_checkpoints(run)
    _reserve(run)
    extra = {**train_env_additions(recipe.train.cpu_threads, device), **verify_env(verified or {})}
    state = _State(graceful=True, distributed=dist.world_size > 1)
    handlers = _catch_stop_signals(state)
    timer = None

    def budget_spent() -> None:
        state.signal_name = state.signal_name or f"--stop-after-minutes {stop_after_s / 60:g}"
        _forward(state, signal.SIGINT)
    clock = {"t0": time.monotonic(), "offset": 0.0}
    rc: int | None = None
    try:
        with open(run.log, "ab") as log, TrainProgress(recipe, console=console, enabled=progress) as bar:
            log.write(f"# smx {now()}: {' '.join(cmd)}\n".encode())
            log.flush()
            session_start = log.tell()
            state.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=engine_environment(extra), start_new_session=True,
                preexec_fn=die_with_parent(),
            )
            if stop_after_s is not None:  # counted from the engine's start; a graceful stop as on SIGINT
                timer = threading.Timer(stop_after_s, budget_spent)
                timer.daemon = True
                timer.start()
            for line in follow(run.log, session_start, state.proc):
                _handle(line, run, state, session_start, clock, bar)
            rc = state.proc.wait()
    except KeyboardInterrupt:  # not the main thread's handler: still stop the engine
        _forward(state, signal.SIGINT)
        state.interrupts = max(state.interrupts, 1)
        if state.proc is not None:
            rc = state.proc.wait()
    except OSError as e:  # smx could not write (disk full): stop the engine, record it, one line for the user
        if e.errno not in NO_SPACE_ERRNOS:
            _release(run)
            update_meta(run, status="failed", end=now(), exit_code=None)
            raise
        if state.proc is not None and state.proc.poll() is None:
            kill_group(state.proc)
        failure = _no_space_failure(run, state, e.filename)
        update_meta(run, status="failed", end=now(), exit_code=None, failure=failure)
        raise UserError(failure["message"]) from None
    except BaseException:  # smx itself failed: stop the engine, record it, re-raise
        _release(run)
        update_meta(run, status="failed", end=now(), exit_code=None)
        raise
    finally:
        if timer is not None:
            timer.cancel()
        for sig, old in handlers.items():
            signal.signal(sig, old)
        if state.proc is not None and state.proc.poll() is None:
            kill_group(state.proc)
        if run.checkpoints.is_dir():
            prune_checksums(run.checkpoints)
    return _finish(run, state, rc, previous)


def _finish(run: RunDir, state: _State, rc: int | None, previous: dict | None = None) -> str:
    _release(run)
    status = "interrupted" if state.interrupts else ("done" if rc == 0 else "failed")
    changes: dict[str, Any] = {}
    if state.nonfinite is not None and not state.interrupts:
        status = "failed"
        changes["failure"] = nonfinite_failure(state.nonfinite, state.saved, run)
    elif status == "failed" and _out_of_space(run):
        changes["failure"] = _no_space_failure(run, state, None)
    if state.interrupts:
        changes["interrupted_by"] = state.signal_name or "SIGINT"
    if status == "failed" and not state.trained and (previous or {}).get("status") in KEPT_ON_FAILED_RESUME:
        _keep_previous(run, previous, {"outcome": "failed", "end": now(), "exit_code": rc, **changes})
        return status
    final = metrics.read(run.metrics) if run.metrics.is_file() else []
    summary = {k: v for k, v in (("train", metrics.last(final, "train")), ("valid", metrics.last(final, "valid"))) if v}
    update_meta(run, status=status, end=now(), exit_code=rc, **changes,
                last={split: {"step": e["step"], "loss": e["loss"]} for split, e in summary.items()})
    return status


# A resume that fails before training anything leaves these statuses (and the provenance) as they were.
KEPT_ON_FAILED_RESUME = ("done", "interrupted", "failed")


def _keep_previous(run: RunDir, previous: dict, outcome: dict) -> None:
    """meta.json as before the session, plus the attempt (its resumes entry and how it ended) in resumes."""
    attempt = ((read_meta(run).get("resumes") or [{}])[-1]) | outcome
    write_meta(run, {**previous, "resumes": [*previous.get("resumes", []), attempt]})


def _reserve(run: RunDir) -> None:
    """Keep RESERVE_BYTES in the run directory while the engine runs (released for the final meta.json)."""
    try:
        with open(run.path / RESERVE_NAME, "wb") as f:
            f.write(b"\0" * RESERVE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError:  # already full: nothing to keep
        (run.path / RESERVE_NAME).unlink(missing_ok=True)


def _release(run: RunDir) -> None:
    (run.path / RESERVE_NAME).unlink(missing_ok=True)


def _out_of_space(run: RunDir) -> bool:
    """The engine failed for want of space: its log says so, or the run's filesystem has (almost) nothing free."""
    try:
        with open(run.log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 20000))
            tail = f.read().decode("utf-8", errors="replace")
        if any(text in tail for text in _NO_SPACE_TEXT):
            return True
        st = os.statvfs(run.path)
        return st.f_bavail * st.f_frsize < RESERVE_BYTES + (64 << 10)  # about the released reserve, no more
    except OSError:
        return False


def _no_space_failure(run: RunDir, state: _State, where: str | None) -> dict:
    """meta.json "failure" for a full disk; frees the partial checkpoint and the reserve first."""
    _remove_partial_checkpoints(run)
    _release(run)
    kept = (f"the last good checkpoint is {run.last_checkpoint} (update {state.saved.updates})" if state.saved
            else f"the last good checkpoint is {run.last_checkpoint}" if run.last_checkpoint.is_file()
            else "no checkpoint had been saved")
    message = (f"{where or run.path}: no space left on device: training stopped, {kept}; free space, then: "
               f"smx train --resume {run.path}")
    return {"reason": "no space", "path": str(where or run.path), "message": message,
            "last_checkpoint_update": state.saved.updates if state.saved else None}


def nonfinite_failure(bad: dict, saved: metrics.CheckpointEvent | None, run: RunDir) -> dict:
    """meta.json "failure" for a non-finite loss/gradient: what, where, and the last good checkpoint (one line)."""
    update, split, what, value = bad.get("update"), bad.get("split", "train"), bad.get("what"), bad.get("value")
    if what == "loss":
        head = f"non-finite loss ({value})"
    elif what == "gradients":
        head = f"non-finite gradients (fairseq: {value})"
    else:  # a bare FloatingPointError line of fairseq's
        head = f"non-finite values (fairseq: {what})"
    where = (f"in validation after update {update}" if split == "valid" else f"at update {update}") \
        if update is not None else "in training"
    if saved is not None:
        kept = f"the last good checkpoint is {run.last_checkpoint} (update {saved.updates})"
    elif run.last_checkpoint.is_file():
        kept = f"the last good checkpoint is {run.last_checkpoint} (from before this session)"
    else:
        kept = "no checkpoint had been saved"
    message = f"{head} {where}: training stopped, {kept}; run marked failed"
    return {"reason": "non-finite", "update": update, "split": split, "what": bad.get("what"),
            "value": bad.get("value"), "last_checkpoint_update": saved.updates if saved else None,
            "message": message}


def train_worker(recipe: Recipe, run_path: Path, data_dir: Path, *, resume: bool, device: str,
                 dist: Distributed, restore: str = "checkpoint_last.pt") -> str:
    """A node with --node-rank > 0: run its engine processes and write nothing. The rank-0 node creates the run
    directory and keeps its records (its engine ranks are the only ones that save); creating any of it here could
    make node 0, started later, refuse the directory as an existing run."""
    argv = fairseq_argv(recipe, run_path, data_dir, resume=resume, device=device, world_size=dist.world_size,
                        restore=restore)
    proc = subprocess.Popen(engine_command("fairseq_cli.train", argv, dist),
                            env=engine_environment(train_env_additions(recipe.train.cpu_threads, device)),
                            start_new_session=True, preexec_fn=die_with_parent())
    state = _State(proc=proc)
    handlers = _catch_stop_signals(state)
    try:
        rc = proc.wait()
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
    return "interrupted" if state.interrupts else ("done" if rc == 0 else "failed")


def _remove_partial_checkpoints(run: RunDir) -> None:
    """`*.pt.tmp` / `SHA256SUMS.tmp` are writes a kill interrupted (the engine renames a file into place only once
    complete)."""
    if run.checkpoints.is_dir():
        for tmp in [*run.checkpoints.glob("*.pt.tmp"), run.checkpoints / (checksums.SUMS_NAME + ".tmp")]:
            tmp.unlink(missing_ok=True)


def _resume_metrics(run: RunDir, step: int, session_start: int) -> float:
    """Resuming from a checkpoint at `step`: keep the metrics up to it (recovering from the earlier sessions in
    train.log those smx had not written when it was killed), drop the later ones; return the wall clock reached."""
    kept = [e for e in metrics.entries(run.metrics) if e["step"] <= step] if run.metrics.is_file() else []
    with open(run.log, "rb") as f:
        earlier = f.read(session_start).decode("utf-8", errors="replace").splitlines()
    recovered = metrics.recover(kept, earlier, step)
    entries = sorted(kept + recovered, key=lambda e: e["step"])  # stable: logged order within a step
    tmp = run.metrics.with_name(run.metrics.name + ".tmp")
    tmp.write_text("".join(metrics.dumps(e) + "\n" for e in entries), encoding="utf-8")
    os.replace(tmp, run.metrics)
    return max((float(e.get("wall", 0.0)) for e in entries), default=0.0)
