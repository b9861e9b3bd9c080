"""Child processes that die with smx, and stop signals as KeyboardInterrupt; a leaf module (the standard library
only), shared by the engine launcher (smx.engine.process, smx.run.session) and data prep (fairseq-preprocess).

    code = run_child(["python", "-m", "fairseq_cli.preprocess", ...], stdout=log)  # killed whole if we stop
    with stop_signals_interrupt():  # SIGTERM / SIGHUP raise KeyboardInterrupt("SIGTERM"), as Ctrl-C does
        ...
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from typing import Callable, Sequence

from smx.engine.contract import STOP_SIGNALS

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A Popen preexec_fn making the child get SIGKILL when this process dies (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: no import or dlopen after fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the engine's whole process group (torchrun and its workers too) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@contextlib.contextmanager
def stop_signals_interrupt():
    """SIGTERM and SIGHUP raise KeyboardInterrupt(signal name) in the main thread, as Ctrl-C does: work that
    cleans up on KeyboardInterrupt (a data prep killing its fairseq-preprocess) does so on a scheduler's signal."""
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)
    previous = {}
    if is_main_thread():
        for sig in STOP_SIGNALS:
            if sig != signal.SIGINT:
                previous[sig] = signal.signal(sig, raise_interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_child(cmd: Sequence[str], **popen) -> int:
    """Run `cmd` to its end in its own process group that dies with us (PR_SET_PDEATHSIG) and is killed whole
    (its workers too) if we are interrupted or fail while it runs; returns its exit code."""
    proc = subprocess.Popen(list(cmd), start_new_session=True, preexec_fn=die_with_parent(), **popen)
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            kill_group(proc)


