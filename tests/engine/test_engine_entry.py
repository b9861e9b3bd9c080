"""smx.engine.entry: the module's exit status is kept, atexit handlers and non-daemon threads finish, and a daemon
thread busy in torch's C++ code no longer aborts the process at exit (fairseq's prefetch thread after a mid-epoch
stop: the CI failure "terminate called without an active exception", exit -6, after a Ctrl-C save)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# a daemon thread running torch ops without a pause when the main thread returns
BUSY_DAEMON = """
    import threading, time, torch

    def loop():
        x = torch.randn(64, 64)
        while True:
            torch.stack([x @ x for _ in range(4)])

    threading.Thread(target=loop, daemon=True).start()
    time.sleep(0.2)
"""


def _module(tmp_path: Path, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


def _run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=120)


def test_busy_daemon_thread_aborts_plain_python_but_not_the_entry(tmp_path: Path):
    _module(tmp_path, "busy", BUSY_DAEMON)
    plain = [_run(tmp_path, "-m", "busy") for _ in range(3)]
    # the control: CPython's finalization kills the thread inside torch and C++ terminates (if torch ever stops
    # doing this, the clean exit of smx.engine.entry is no longer needed, and this line says so)
    assert any(p.returncode == -6 and "terminate called" in p.stderr for p in plain), [p.returncode for p in plain]
    for _ in range(3):
        entry = _run(tmp_path, "-P", "-m", "smx.engine.entry", "busy")
        assert entry.returncode == 0, entry.stderr
        assert "terminate called" not in entry.stderr


def test_exit_status_atexit_handlers_and_threads(tmp_path: Path):
    marker = tmp_path / "marks.txt"
    _module(tmp_path, "stops", f"""
        import atexit, sys, threading, time

        def mark(text):
            with open({str(marker)!r}, "a") as f:
                f.write(text + "\\n")

        def late():
            time.sleep(0.3)
            mark("thread")

        atexit.register(mark, "atexit")
        threading.Thread(target=late).start()
        print("argv", sys.argv[1:], flush=False)  # flushed by the entry before it leaves
        sys.exit(int(sys.argv[1]))
    """)
    done = _run(tmp_path, "-m", "smx.engine.entry", "stops", "3", "x")
    assert done.returncode == 3, done.stderr
    assert "argv ['3', 'x']" in done.stdout
    assert marker.read_text().splitlines() == ["thread", "atexit"]  # threads joined first, as CPython does


def test_uncaught_exception_and_usage(tmp_path: Path):
    _module(tmp_path, "fails", "raise RuntimeError('engine broke')\n")
    failed = _run(tmp_path, "-m", "smx.engine.entry", "fails")
    assert failed.returncode == 1 and "RuntimeError: engine broke" in failed.stderr and "Traceback" in failed.stderr
    _module(tmp_path, "says", "import sys\nsys.exit('engine says no')\n")
    said = _run(tmp_path, "-m", "smx.engine.entry", "says")
    assert said.returncode == 1 and said.stderr.strip() == "engine says no"
    usage = _run(tmp_path, "-m", "smx.engine.entry")
    assert usage.returncode == 1 and "usage: python -m smx.engine.entry MODULE" in usage.stderr
