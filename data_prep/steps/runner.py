"""The step runner: idempotent, resumable steps recorded in the manifest.

A step declares its inputs and outputs (paths relative to root/<name>, files or directories), its settings (everything
that changes the output) and a function that writes each output under a temporary name. The runner skips the step when
the manifest records it with the same settings and input hashes and every output is still there with its recorded
hash; otherwise it marks the manifest incomplete, runs the function, renames the outputs into place and records
hashes, line counts and the time taken. An interrupted step has no record, so it is redone on the next run.

Pinned steps (fetched sources) are never silently redone: an existing output whose hash differs from the manifest,
or a re-fetched file that differs from what was recorded, is a checksum-mismatch error naming the file.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from smx.errors import UserError

from data_prep.steps.files import FileDigest, commit, digest, files_under, partial, remove
from data_prep.steps.manifest import Manifest, normalized
from data_prep.steps.progress import Reporter

StepFn = Callable[[dict[str, Path]], None]


@contextmanager
def locked(root_dir: Path) -> Iterator[None]:
    """Refuse a second concurrent prep of the same directory (the lock dies with its process, even on SIGKILL)."""
    lock_path = root_dir / ".lock"
    with open(lock_path, "a") as f:  # "a": never truncates, so a no-op re-run leaves every mtime alone
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{root_dir} is being prepared by another process (lock {lock_path})") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Prep:
    """Everything one prep run needs: the dataset directory, its manifest, progress, workers and the cache."""

    name: str
    root_dir: Path
    manifest: Manifest
    reporter: Reporter
    workers: int = 1
    cache_dir: Path = Path(".cache")
    ran: list[str] = field(default_factory=list)  # steps that did work in this run
    planned: list[str] = field(default_factory=list)  # every step of this run, done or skipped
    _digests: dict = field(default_factory=dict)

    def path(self, rel: str) -> Path:
        return self.root_dir / rel

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root_dir).as_posix()

    def digest(self, path: Path) -> FileDigest:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = digest(path)
        return self._digests[key]

    def record(self, name: str) -> dict | None:
        return self.manifest.steps.get(name)

    def output_lines(self, rel: str) -> int:
        """Line count of a finished output, as recorded in the manifest (no re-reading)."""
        for rec in self.manifest.steps.values():
            entry = rec["outputs"].get(rel)
            if entry is not None and "lines" in entry:
                return int(entry["lines"])
        raise KeyError(rel)

    def _input_hashes(self, name: str, inputs: Sequence[str]) -> dict[str, str]:
        hashes = {}
        for rel in inputs:
            p = self.path(rel)
            if not p.exists():
                raise UserError(f"step {name}: missing input {p}")
            for f in files_under(p):
                hashes[self.rel(f)] = self.digest(f).sha256
        return hashes

    def _outputs_intact(self, rec: dict, outputs: Sequence[str], pinned: bool) -> bool:
        for rel in outputs:
            if not self.path(rel).exists():
                return False
        for rel, entry in rec["outputs"].items():
            p = self.path(rel)
            if not p.is_file():
                return False
            sha = self.digest(p).sha256
            if sha != entry["sha256"]:
                if pinned:
                    raise UserError(_mismatch(p, sha, entry["sha256"], self.root_dir))
                return False
        return True

    def step(
        self,
        name: str,
        outputs: Sequence[str],
        fn: StepFn,
        *,
        inputs: Sequence[str] = (),
        settings: Mapping | None = None,
        meta: Mapping | None = None,
        pinned: bool = False,
    ) -> bool:
        """Run one step unless it is already done; returns True if it did work."""
        assert name not in self.planned, f"step {name} declared twice"
        self.planned.append(name)
        settings_n = normalized(dict(settings or {}))
        in_hashes = self._input_hashes(name, inputs)
        rec = self.record(name)
        expected: dict[str, str] = {}
        if rec is not None and rec.get("settings") == settings_n:
            if rec.get("inputs") == in_hashes and self._outputs_intact(rec, outputs, pinned):
                return False
            if pinned:
                expected = {rel: e["sha256"] for rel, e in rec["outputs"].items()}
        self.manifest.mark_incomplete()
        if self.manifest.steps.pop(name, None) is not None:
            self.manifest.save()
        tmp = {rel: partial(self.path(rel)) for rel in outputs}
        for t in tmp.values():
            remove(t)
            t.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            fn(tmp)
            missing = [str(t) for t in tmp.values() if not t.exists()]
            assert not missing, f"step {name} did not write {missing}"
            self._check_pinned(expected, tmp)
        except BaseException:
            for t in tmp.values():
                remove(t)
            raise
        for rel, t in tmp.items():
            commit(t, self.path(rel))
        seconds = time.perf_counter() - start
        out = {}
        for rel in outputs:
            for f in files_under(self.path(rel)):
                out[self.rel(f)] = self.digest(f).as_json()
        self.manifest.steps[name] = {
            "settings": settings_n,
            "inputs": in_hashes,
            "outputs": out,
            "meta": normalized(dict(meta or {})),
            "seconds": round(seconds, 3),
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self.manifest.save()
        self.ran.append(name)
        self.reporter.note(f"done {name} ({seconds:.1f}s)")
        return True

    def _check_pinned(self, expected: dict[str, str], tmp: dict[str, Path]) -> None:
        if not expected:
            return
        for rel, t in tmp.items():
            for f in files_under(t):
                final_rel = rel + f.as_posix()[len(t.as_posix()):]
                want = expected.get(final_rel)
                if want is not None:
                    got = digest(f).sha256
                    if got != want:
                        raise UserError(_mismatch(self.path(final_rel), got, want, self.root_dir))


def _mismatch(path: Path, got: str, want: str, root_dir: Path) -> str:
    return (
        f"checksum mismatch: {path} has sha256 {got[:16]}... but {root_dir / 'manifest.json'} recorded "
        f"{want[:16]}...; restore the original file or delete {root_dir} to prepare from scratch"
    )
