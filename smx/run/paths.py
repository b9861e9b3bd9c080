"""Run directories (DESIGN.md section 6): create, resume, lock, snapshot, checkpoint hashes.

    runs/<name>-<estimator>-s<seed>/
      recipe.yaml  recipe.orig.yaml  meta.json  fairseq_argv.txt  metrics.jsonl  train.log
      tb/  checkpoints/{checkpoint_last.pt, checkpoint_best.pt, SHA256SUMS}  eval/  run.lock (while training)

A run directory is never overwritten: create() refuses an existing path, resume() needs checkpoints/checkpoint_last.pt,
and a lock (smx.run.lock: pid + host + process start time) refuses a second writer.

Checkpoint hashes: the engine records each checkpoint's sha256 in checkpoints/SHA256SUMS when it saves it
(smx.fairseq_plugin.guards); verify_checkpoint() refuses, before anything unpickles it, a checkpoint whose hash does
not match or was never recorded, unless the user trusts it (--trust-checkpoint).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from smx.errors import UserError
from smx.engine import checksums
from smx.recipe.protocol import arm_settings
from smx.recipe.recipes import Recipe, dump
import smx

LOCK_NAME = "run.lock"
RESERVE_NAME = ".smx-reserve"  # room kept for the last meta.json write while the engine runs (smx.run.session)
SUMS_NAME = checksums.SUMS_NAME


@dataclass(frozen=True)
class RunDir:
    path: Path

    recipe = property(lambda self: self.path / "recipe.yaml")
    recipe_orig = property(lambda self: self.path / "recipe.orig.yaml")
    meta = property(lambda self: self.path / "meta.json")
    argv = property(lambda self: self.path / "fairseq_argv.txt")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    log = property(lambda self: self.path / "train.log")
    tb = property(lambda self: self.path / "tb")
    checkpoints = property(lambda self: self.path / "checkpoints")
    eval = property(lambda self: self.path / "eval")
    lock = property(lambda self: self.path / LOCK_NAME)

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "checkpoint_last.pt"

    def read_meta(self) -> dict | None:
        """meta.json as a dict; None when it is missing, unreadable or not a JSON object. The ONE reader of it."""
        return _read_json(self.meta)

    def read_eval(self, kind: str) -> dict | None:
        """eval/<kind>.json (kind: bleu, ppl) as a dict; None when missing or unreadable."""
        return _read_json(self.eval / f"{kind}.json")

    def status(self) -> str:
        """meta.json's status ("" when there is no readable meta.json)."""
        return str((self.read_meta() or {}).get("status", ""))


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_name(recipe: Recipe) -> str:
    """`<recipe name>-<estimator>-s<seed>`."""
    return f"{recipe.name}-{recipe.router.estimator}-s{recipe.seed}"


def default_path(recipe: Recipe, runs_root: str | Path = "runs") -> Path:
    return Path(runs_root) / run_name(recipe)


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------- create / resume


def check_new(path: Path) -> None:
    """Raise UserError when `path` exists (a run directory is never overwritten)."""
    if path.exists() or path.is_symlink():
        raise UserError(
            f"run directory {path} already exists; resume it with --resume {path}, or choose another with "
            "--run-dir DIR / --set seed=N"
        )


# What create() and snapshot() write before the engine starts; a directory holding nothing else never trained.
_SKELETON_FILES = ("recipe.yaml", "recipe.orig.yaml", "meta.json", "meta.json.tmp", "fairseq_argv.txt", "train.log",
                   "metrics.jsonl", LOCK_NAME, RESERVE_NAME)


def never_trained(path: str | Path) -> bool:
    """True for a run directory that a failure at its very start (disk full, a kill) left before any training:
    nothing but create()/snapshot()'s own files, empty subdirectories, and a train.log without engine output."""
    run = RunDir(Path(path))
    if not run.path.is_dir() or run.path.is_symlink():
        return False
    for p in run.path.iterdir():
        if p.is_dir() and not p.is_symlink() and p.name in ("checkpoints", "tb", "eval"):
            if any(p.iterdir()):
                return False
        elif not (p.is_file() and p.name in _SKELETON_FILES):
            return False
    for name in ("train.log", "metrics.jsonl"):
        try:
            lines = (run.path / name).read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            continue
        if any(line.strip() and not line.startswith("# smx ") for line in lines):
            return False
    return True


def clear_skeleton(path: Path) -> None:
    """Remove what never_trained() accepts, so that create() makes the directory again from nothing."""
    for p in Path(path).iterdir():
        if p.is_dir():
            p.rmdir()
        else:
            p.unlink()
    Path(path).rmdir()


def create(path: str | Path) -> RunDir:
    """Make a new, empty run directory (parents as needed); an existing path is an error, never reused."""
    path = Path(path)
    check_new(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:  # lost a race with another writer
        raise UserError(f"run directory {path} already exists") from None
    run = RunDir(path)
    ensure_layout(run)
    return run


def ensure_layout(run: RunDir) -> None:
    """checkpoints/, tb/ and eval/ exist (create() makes them; a resume re-makes what a crash left out)."""
    for sub in (run.checkpoints, run.tb, run.eval):
        sub.mkdir(exist_ok=True)


def check_resume(path: str | Path) -> RunDir:
    """The run directory to resume; raises UserError unless it has recipe.yaml, and a checkpoint when it is done
    (a run that died before its first checkpoint restarts in place: resume_point)."""
    run = RunDir(Path(path))
    if not run.path.is_dir():
        raise UserError(f"--resume {path}: no such run directory")
    if not run.recipe.is_file():
        raise UserError(f"--resume {path}: not a run directory (no recipe.yaml)")
    if resume_point(run) is None and run.status() == "done":
        raise UserError(f"--resume {path}: nothing to resume from (no checkpoints/checkpoint_last.pt)")
    return run


def resume_point(run: RunDir) -> str | None:
    """The checkpoint a resume restores, by name in checkpoints/: checkpoint_last.pt; checkpoint_best.pt when the
    engine died between writing the two; None when nothing was saved (the run restarts from update 0)."""
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        if (run.checkpoints / name).is_file():
            return name
    return None


# ---------------------------------------------------------------- snapshot / meta


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {
        "smx": smx.__version__,
        "torch": _version("torch"),
        "fairseq": _version("fairseq-fixed") or _version("fairseq"),
        "python": platform.python_version(),
    }


def git_sha(where: Path | None = None) -> str | None:
    """HEAD of the git checkout smx runs from (None outside git or before the first commit); `+dirty` if modified."""
    where = where or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def read_meta(run: RunDir) -> dict:
    return run.read_meta() or {}


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` atomically (write, fsync, rename); on failure (disk full) the old file stays whole
    and no temporary is left behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_meta(run: RunDir, meta: dict) -> None:
    """Atomic replace of meta.json."""
    write_atomic(run.meta, json.dumps(meta, indent=2) + "\n")


def update_meta(run: RunDir, **changes: Any) -> dict:
    meta = read_meta(run)
    meta.update(changes)
    write_meta(run, meta)
    return meta


def snapshot(run: RunDir, recipe: Recipe, orig_text: str | None, argv: Sequence[str], resumed: bool = False,
             extra: dict | None = None, resume_info: dict | None = None) -> dict:
    """Write recipe.yaml (resolved), recipe.orig.yaml (first time only) and meta.json (status running).

    A resume appends {start, argv, previous_status, **resume_info} to meta["resumes"]; a previous status "running"
    (the last writer died without a word) also counts in meta["crashes"].
    """
    write_atomic(run.recipe, dump(recipe))
    if orig_text is not None and not run.recipe_orig.exists():
        write_atomic(run.recipe_orig, orig_text)
    meta = read_meta(run) if resumed else {}
    started = now()
    rebuilt = resumed and not meta.get("name")  # meta.json missing or unreadable: provenance from recipe.yaml
    if rebuilt and run.meta.exists():
        os.replace(run.meta, run.meta.with_name("meta.json.unreadable"))  # kept, never overwritten in place
    common = {
        "status": "running", "versions": versions(), "git_sha": git_sha(), "host": socket.gethostname(),
        "argv": list(argv), "end": None, **(extra or {}),
    }
    if resumed:
        previous = meta.get("status")
        failure = meta.pop("failure", None)  # the last session's; this one has not failed (yet)
        meta.setdefault("resumes", []).append({"start": started, "argv": list(argv), "previous_status": previous,
                                               **({"previous_failure": failure} if failure else {}),
                                               **(resume_info or {})})
        if previous == "running":  # the writer before us died without a word (kill -9, power loss)
            meta["crashes"] = meta.get("crashes", 0) + 1
        meta.update(common)
        if rebuilt:
            meta = {**provenance(run, recipe, first_start(run.log)), **meta,
                    "rebuilt": {"at": started, "from": "recipe.yaml and train.log",
                                "reason": "meta.json was missing or unreadable (kept as meta.json.unreadable)"
                                if run.meta.with_name("meta.json.unreadable").exists() else "meta.json was missing"}}
    else:
        meta = {**provenance(run, recipe, started), **common}
    write_meta(run, meta)
    return meta


def provenance(run: RunDir, recipe: Recipe, start: str | None) -> dict:
    """What meta.json says about a run's identity, from its resolved recipe."""
    return {"name": run.path.name, "recipe": recipe.name, "task": recipe.task, "dataset": recipe.data.dataset,
            "estimator": recipe.router.estimator, "seed": recipe.seed, "protocol": recipe.router.protocol,
            "arm": arm_settings(recipe), "start": start}


def first_start(log: Path) -> str | None:
    """The time of the first `# smx <time>: <command>` line of train.log (a run's first session), if any."""
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("# smx ") and ": " in line:
                    return line[len("# smx "):].split(": ", 1)[0]
    except OSError:
        pass
    return None


# ---------------------------------------------------------------- checkpoint hashes


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    return checksums.sha256_file(path, chunk)


def write_checksums(checkpoints: Path) -> dict[str, str]:
    """Hash every *.pt in `checkpoints` into SHA256SUMS (`sha256sum -c` format); returns {file name: hex}.

    This trusts whatever is in the directory now: smx itself never calls it on a run (the engine records each
    checkpoint when it writes it); it is for adopting checkpoints made elsewhere.
    """
    sums: dict[str, str] = {}
    for pt in sorted(checkpoints.glob("*.pt")):
        try:
            sums[pt.name] = sha256(pt)
        except FileNotFoundError:  # removed meanwhile
            continue
    checksums.write_sums(checkpoints, {name: [digest] for name, digest in sums.items()})
    return sums


def verify_checksums(checkpoints: Path) -> list[str]:
    """Problems (missing or mismatching files) against SHA256SUMS; [] when everything matches."""
    sums_file = checkpoints / SUMS_NAME
    if not sums_file.is_file():
        return [f"{sums_file}: missing"]
    problems = []
    for name, digests in checksums.read_sums(checkpoints).items():
        pt = checkpoints / name
        if not pt.is_file():
            problems.append(f"{name}: missing")
        elif sha256(pt) not in digests:
            problems.append(f"{name}: sha256 mismatch")
    return problems


def prune_checksums(checkpoints: Path) -> None:
    """Drop the SHA256SUMS lines of checkpoints that no longer exist (never adds a hash)."""
    if (checkpoints / SUMS_NAME).is_file():
        checksums.prune(checkpoints)


TRUST_HINT = ("checkpoints are pickles and loading one runs code; if you trust this file, pass --trust-checkpoint")


def verify_checkpoint(path: Path, trust: bool = False, warn: Callable[[str], None] | None = None,
                      recorded_as: Path | None = None, also: tuple[str, ...] = ()) -> str:
    """The sha256 of checkpoint `path` after checking it against the SHA256SUMS smx wrote when it saved it
    (for a pinned copy: the SHA256SUMS of `recorded_as`, the checkpoint it was taken from; checksums.check).

    Raises UserError (before anything unpickles the file) when the hash does not match or was never recorded,
    unless `trust`; then `warn` is told what was accepted.
    """
    try:
        problem, digest = checksums.check(path, recorded_as, also)
    except FileNotFoundError:  # a training run removed it (keep_last) or renamed a new one over it meanwhile
        raise UserError(f"{path}: removed while smx was reading it (the run is still training and replaced or "
                        "deleted it); run the command again") from None
    if problem is None:
        return digest
    if not trust:
        raise UserError(f"refusing to load {problem}; {TRUST_HINT}")
    (warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr)))(
        f"{problem}; loading it anyway (--trust-checkpoint)")
    return digest
