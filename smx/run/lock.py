"""The run directory's writer lock, run.lock: {"pid", "host", "since", "started"}.

A second writer (training, resuming) of the same run directory is refused with a one-line error naming the owner; a
lock left by a dead process on this host (or by a process whose pid has since been reused, told apart by the
owner's process start time) is taken over with a warning. A lock held on another host is never taken over.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from smx.errors import UserError
from smx.engine.procfs import process_start
from smx.run.paths import LOCK_NAME, now


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_alive(pid: int, started: Any) -> bool:
    """Is the lock's owner still running? A live pid with another start time is a reused pid: the owner is gone."""
    if pid <= 0 or not _alive(pid):
        return False
    now_started = process_start(pid)
    return not (isinstance(started, int) and now_started is not None and now_started != started)


class Lock:
    """An exclusive lock file `run.lock` holding {"pid", "host", "since", "started"} (started: the owner's process
    start time, which tells a dead owner from a live process that got its pid); use as a context manager."""

    def __init__(self, path: Path, warn: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
        self.held = False

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": now(),
                           "started": process_start(os.getpid())}, f)
        except BaseException:  # disk full: no half-written lock left behind
            self.path.unlink(missing_ok=True)
            raise
        return True

    def acquire(self) -> "Lock":
        for _ in range(3):
            if self._try_create():
                self.held = True
                return self
            try:
                owner = json.loads(self.path.read_text())
                pid, host, started = int(owner["pid"]), str(owner["host"]), owner.get("started")
            except FileNotFoundError:
                continue  # released meanwhile: retry
            except (ValueError, KeyError, TypeError):
                if time.time() - self.path.stat().st_mtime < 10:  # being written right now
                    time.sleep(0.5)
                    continue
                pid, host, started = -1, socket.gethostname(), None
            if host != socket.gethostname() or _owner_alive(pid, started):
                raise self._in_use(pid, host)
            stale = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
            try:
                os.rename(self.path, stale)  # atomic: only one taker wins
            except FileNotFoundError:
                continue
            stale.unlink(missing_ok=True)
            self.warn(f"took over the stale lock of dead process {pid} on {host} ({self.path})")
        raise UserError(f"could not lock {self.path.parent}: another process keeps taking the lock")

    def check_free(self) -> None:
        """Raise UserError when a live process holds the lock (read-only: takes nothing, removes nothing)."""
        try:
            owner = json.loads(self.path.read_text())
            pid, host, started = int(owner["pid"]), str(owner["host"]), owner.get("started")
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return
        if host != socket.gethostname() or _owner_alive(pid, started):
            raise self._in_use(pid, host)

    def _in_use(self, pid: int, host: str) -> UserError:
        return UserError(f"{self.path.parent} is in use by pid {pid} on host {host} (lock {self.path}); if that "
                         "process is gone, delete the lock file")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "Lock":
        return self.acquire() if not self.held else self

    def __exit__(self, *exc: Any) -> None:
        self.release()
