"""Helpers of the reliability tests: directory-tree snapshots, fake run directories, smx as a subprocess."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from smx.engine import procfs

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny.yaml"
TINY_LM = REPO / "recipes" / "tiny_lm.yaml"
# metrics.jsonl fields that measure time, not training: excluded when runs are compared
WALL_CLOCK = frozenset({"wall", "engine_wall", "wps", "ups", "train_wall"})


# ------------------------------------------------------------------------------------------------ tree snapshots
def tree_state(*roots: Path) -> dict[str, tuple]:
    """Everything below each root: files -> ("f", size, mtime_ns, sha256), directories -> ("d", mtime_ns),
    symlinks -> ("l", target). The roots themselves are not included (only what is inside them)."""
    state: dict[str, tuple] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            state[str(root)] = ("missing",)
            continue
        for p in sorted(root.rglob("*")):
            st = p.lstat()
            if p.is_symlink():
                state[str(p)] = ("l", os.readlink(p))
            elif p.is_dir():
                state[str(p)] = ("d", st.st_mtime_ns)
            else:
                state[str(p)] = ("f", st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return state


def diff_states(before: dict, after: dict) -> list[str]:
    out = [f"created {k}" for k in after.keys() - before.keys()]
    out += [f"removed {k}" for k in before.keys() - after.keys()]
    out += [f"changed {k}: {before[k]} -> {after[k]}" for k in before.keys() & after.keys() if before[k] != after[k]]
    return sorted(out)


# --------------------------------------------------------------------------------------------------- fake inputs
def write_gz(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(text.encode("utf-8"))
    return path


def multi30k_source(dest: Path, counts: dict[str, int] | None = None) -> Path:
    """A Multi30k --source directory ({train,val,test_2016_flickr}.{en,de}.gz) with `counts` lines per split."""
    counts = counts or {"train": 30, "val": 6, "test_2016_flickr": 5}
    for stem, n in counts.items():
        write_gz(dest / f"{stem}.en.gz", "".join(f"A dog number {i} runs across the grass.\n" for i in range(n)))
        write_gz(dest / f"{stem}.de.gz", "".join(f"Ein Hund Nummer {i} läuft über das Gras.\n" for i in range(n)))
    return dest


def fake_run(path: Path, recipe_path: Path, overrides: list[str], *, checkpoints: tuple[str, ...] = ("best", "last"),
             sums: bool = True, status: str = "done") -> Path:
    """A finished-looking run directory: recipe.yaml, meta.json, metrics.jsonl, checkpoints (+ SHA256SUMS)."""
    from smx.recipe import recipes
    from smx.run import paths as rundir

    recipe = recipes.load(recipe_path, overrides)
    run = rundir.create(path)
    run.recipe.write_text(recipes.dump(recipe))
    run.meta.write_text(json.dumps({"name": path.name, "status": status, "task": recipe.task,
                                    "dataset": recipe.data.dataset, "estimator": recipe.router.estimator,
                                    "seed": recipe.seed}))
    run.metrics.write_text("".join(json.dumps({"step": s, "split": split, "epoch": 1, "loss": 9.0 - s / 10,
                                               "ppl": 2 ** (9.0 - s / 10), "wall": float(s)}) + "\n"
                                   for s in (10, 20) for split in ("train", "valid")))
    for name in checkpoints:
        (run.checkpoints / f"checkpoint_{name}.pt").write_bytes(f"not a real checkpoint: {name}".encode())
    if sums:
        rundir.write_checksums(run.checkpoints)
    return run.path


# ---------------------------------------------------------------------------------------------- smx subprocesses
def smx_process(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """`smx ARGS` as a child process (stdout/stderr piped, text)."""
    cmd = [sys.executable, "-c", "import sys; from smx.cli import run; sys.exit(run(sys.argv[1:]))", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env={**os.environ, **(env or {})})


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(predicate())
        time.sleep(poll)
    return False


def dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet."""
    return procfs.state(pid) in (None, "Z", "X")


def saved_updates(log: Path) -> list[int]:
    """The update counts of the `Saved checkpoint ...` lines of a train.log."""
    from smx.run import metrics

    if not log.is_file():
        return []
    return [e.updates for e in map(metrics.parse_event, log.read_text(errors="replace").splitlines())
            if e is not None and e.kind == "saved"]


def act_after_first_save(proc: subprocess.Popen, run_dir: Path, act, timeout: float = 180) -> str:
    """Wait for the first checkpoint of the `smx train` child `proc` writing run_dir, call act(proc), wait for its
    end; returns its stderr (the child is killed if it outlives the wait)."""
    try:
        assert wait_for(lambda: saved_updates(run_dir / "train.log"), 240, proc), proc.communicate()
        act(proc)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err


def comparable(entries: list[dict]) -> dict[tuple, dict]:
    """metrics entries keyed by (split, subset, epoch_end, step), without the wall-clock fields."""
    from smx.run.metrics import entry_key

    return {entry_key(e): {k: v for k, v in e.items() if k not in WALL_CLOCK} for e in entries}


def raw_keys(metrics_file: Path) -> list[tuple]:
    """The (split, subset, epoch_end, step) of every line of metrics.jsonl, duplicates kept."""
    from smx.run.metrics import entry_key

    return [entry_key(json.loads(line)) for line in metrics_file.read_text().splitlines()]


def sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- small filesystems
@contextlib.contextmanager
def tmpfs(mnt: Path, size: str = "64m"):
    """A tmpfs of `size` mounted at mnt (made if missing) for the block; fails saying what it needs."""
    mnt.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if res.returncode:
        raise AssertionError(f"these tests mount a tmpfs ({res.stderr.strip()}): run them as root, as CI does, or "
                             "where `mount -t tmpfs` is allowed")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path) -> Path:
    """Fill the filesystem at mnt to the last byte with mnt/filler; returns the filler (delete it to free space)."""
    filler = mnt / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            block = b"\0" * chunk
            while True:
                try:
                    f.write(block)
                except OSError:
                    break
    return filler
