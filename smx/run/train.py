"""`smx train` end to end: check everything, prepare data if needed, create/lock/snapshot the run dir, run.

    status = run(TrainRequest(recipe_path=Path("recipes/tiny.yaml"), overrides=("seed=2",)))

All user input is checked in plan() before anything is written: a bad recipe, an existing run directory, a missing
checkpoint to resume from (or one whose sha256 does not match the one recorded when it was saved: checkpoints are
pickles, see smx.run.paths.verify_checkpoint), a data directory of the wrong task or from an unfinished prep, an unknown
dataset, a missing GPU or engine each raise one UserError and leave the disk untouched. Then the dataset is prepared
if it is not (data_prep.prepare, the code behind `smx data prep`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from smx.engine import process
from smx.run import dataid, session
from smx.run import paths as rundir
from smx.run import lock as runlock
from smx.run.writable import check_dir
from smx.errors import UserError
from smx.engine.process import Distributed
from smx.recipe.recipes import Recipe, load, loads, to_dict
import data_prep
from data_prep.steps.indexed import read_sizes

# Keys a resumed run may change (everything else would not match the checkpoint or the run's identity).
RESUMABLE = ("train.*", "eval.*", "data.root", "data.dir")


@dataclass(frozen=True)
class TrainRequest:
    recipe_path: Path | None = None
    overrides: tuple[str, ...] = ()
    estimator: str | None = None
    seed: int | None = None
    runs_root: Path = Path("runs")
    run_dir: Path | None = None
    resume: Path | None = None
    device: str | None = None  # auto | cpu | cuda: overrides train.device
    dist: Distributed = field(default_factory=Distributed)
    progress: bool = True
    argv: tuple[str, ...] = ()
    trust_checkpoint: bool = False  # resume from a checkpoint whose sha256 is not the recorded one
    stop_after_minutes: float | None = None  # this invocation's wall budget: then save, stop (interrupted), resumable


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    run_path: Path
    resume: bool
    orig_text: str | None  # the recipe file as written (new runs)
    device: str  # cpu | cuda
    notes: tuple[str, ...]
    checkpoint_sha256: str | None = None  # resume: the verified (or trusted) sha256 of the checkpoint it restores
    finished: str | None = None  # resume of a done run with the same budget: nothing to do (this message says so)
    restore: str | None = "checkpoint_last.pt"  # resume: the checkpoint restored; None: nothing saved, restart at 0


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "options":
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _changed_keys(old: Recipe, new: Recipe) -> list[str]:
    a, b = _flat(to_dict(old)), _flat(to_dict(new))
    free = lambda key: any(key == r or (r.endswith(".*") and key.startswith(r[:-1])) for r in RESUMABLE)  # noqa: E731
    return [k for k in a if a[k] != b.get(k) and not free(k)]


def _overrides(req: TrainRequest) -> list[str]:
    extra = list(req.overrides)
    if req.seed is not None:
        extra.append(f"seed={req.seed}")
    if req.device is not None:
        extra.append(f"train.device={req.device}")
    return extra


def _plan_resume(req: TrainRequest, notes: list[str]) -> tuple[Recipe, Path, str | None]:
    if req.run_dir is not None:
        raise UserError("--resume RUN already names the run directory; drop --run-dir")
    path = req.resume
    assert path is not None
    if not path.exists() and (req.runs_root / path).exists():
        path = req.runs_root / path
    run = rundir.check_resume(path)
    check_dir(run.path, "--resume")
    runlock.Lock(run.lock).check_free()  # a second writer is refused before anything else is said about the run
    saved = loads(run.recipe.read_text(encoding="utf-8"), source=str(run.recipe))
    if req.recipe_path is not None:
        recipe = load(req.recipe_path, _overrides(req), estimator=req.estimator, notes=notes)
    else:
        recipe = loads(run.recipe.read_text(encoding="utf-8"), _overrides(req), source=str(run.recipe),
                       estimator=req.estimator, notes=notes)
    changed = _changed_keys(saved, recipe)
    if changed:
        raise UserError(
            f"--resume {path}: cannot change {', '.join(changed)} of an existing run (only "
            f"{', '.join(RESUMABLE)} may change); start a new run instead"
        )
    if run.status() == "done":
        old, new = _budget(saved), _budget(recipe)
        if new == old:
            return recipe, path, (f"--resume {path}: the run is done ({old}); nothing to resume (a larger "
                                  "train.max_update, max_epoch or max_wall_minutes extends it)")
        notes.append(f"--resume {path}: the run is done ({old}); extending it to {new}")
    return recipe, path, None


def _budget(recipe: Recipe) -> str:
    t = recipe.train
    return ", ".join(f"train.{k}={getattr(t, k)}" for k in ("max_update", "max_epoch", "max_wall_minutes")
                     if getattr(t, k))


def check_data_dir(task: str, bin_dir: Path) -> None:
    """data.dir must hold binarized data of the recipe's task, from a finished prep (UserError otherwise)."""
    if not bin_dir.is_dir():
        raise UserError(f"data.dir: {bin_dir} is not a directory")
    dicts = sorted(p.name for p in bin_dir.glob("dict*.txt"))
    if not dicts:
        raise UserError(f"data.dir: {bin_dir} holds no fairseq dictionary (dict*.txt); point it at a binarized "
                        "directory (e.g. data/<dataset>/bin)")
    translation = any(p.name.count(".") == 3 and "-" in p.name.split(".")[1] for p in bin_dir.glob("train.*.idx"))
    lm = (bin_dir / "dict.txt").is_file() and (bin_dir / "train.idx").is_file()
    if task == "translation" and not translation:
        kind = "language-modeling data (dict.txt, train.idx)" if lm else "no train.<src>-<tgt>.<lang>.idx files"
        raise UserError(f"data.dir: {bin_dir} holds {kind}, but task is translation")
    if task == "language_modeling" and not lm:
        kind = "translation data (train.<src>-<tgt>.*)" if translation else "no dict.txt + train.idx"
        raise UserError(f"data.dir: {bin_dir} holds {kind}, but task is language_modeling")
    manifest = bin_dir.parent / "manifest.json"
    if manifest.is_file():  # a data_prep output: it must be finished
        try:
            complete = json.loads(manifest.read_text(encoding="utf-8")).get("complete") is True
        except (OSError, ValueError, AttributeError):
            complete = False
        if not complete:
            raise UserError(f"data.dir: {bin_dir} belongs to an unfinished prep ({manifest} is not complete); "
                            f"finish it with smx data prep {bin_dir.parent.name} --out {bin_dir.parent.parent}")


def plan(req: TrainRequest) -> Plan:
    """Check every input; raises UserError; writes nothing."""
    notes: list[str] = []
    finished = None
    if req.resume is not None:
        recipe, path, finished = _plan_resume(req, notes)
        orig = None
    else:
        if req.recipe_path is None:
            raise UserError("missing RECIPE (a recipes/*.yaml file), or --resume RUN")
        recipe = load(req.recipe_path, _overrides(req), estimator=req.estimator, notes=notes)
        orig = req.recipe_path.read_text(encoding="utf-8")
        path = req.run_dir if req.run_dir is not None else rundir.default_path(recipe, req.runs_root)
        check_dir(path, "run directory")
        if req.dist.node_rank == 0 and rundir.never_trained(path):
            runlock.Lock(rundir.RunDir(path).lock).check_free()
            notes.append(f"run directory {path} was made but never trained (a failure at its start); making it again")
        elif req.dist.node_rank == 0:
            rundir.check_new(path)
    device = process.resolve_device(recipe.train.device)
    if recipe.train.fp16 is True and device != "cuda":
        raise UserError("train.fp16: true needs a GPU, but none is visible (use fp16: auto)")
    if recipe.data.dir is not None:
        check_data_dir(recipe.task, Path(recipe.data.dir))
    process.check_engine()
    digest, restore = None, rundir.resume_point(rundir.RunDir(path)) if req.resume is not None else None
    if req.resume is not None and restore is None:
        notes.append(f"--resume {path}: the run stopped before its first checkpoint; training again from update 0 "
                     "in the same directory")
    elif req.resume is not None:  # last: hashing a large checkpoint takes a moment
        if restore != "checkpoint_last.pt":
            notes.append(f"--resume {path}: no checkpoint_last.pt; resuming from {restore}")
        digest = rundir.verify_checkpoint(rundir.RunDir(path).checkpoints / restore, req.trust_checkpoint,
                                          notes.append)
    return Plan(recipe, path, req.resume is not None, orig, device, tuple(notes), digest, finished, restore)


def check_batch_fits(recipe: Recipe, data: Path) -> None:
    """Translation: train.max_tokens must hold the longest training pair (fairseq would stop at its first batch)."""
    if recipe.task != "translation":
        return  # language modeling: validated against data.tokens_per_sample (smx.recipe.rules)
    src, tgt = dataid.translation_pair(data, "train", recipe)
    longest = 0
    for lang in (src, tgt):
        idx = data / f"train.{src}-{tgt}.{lang}.idx"
        if idx.is_file():
            sizes = read_sizes(idx)  # (sentences,) tokens with EOS
            longest = max(longest, int(sizes.max()) if sizes.size else 0)
    if recipe.train.max_tokens < longest:
        raise UserError(f"train.max_tokens: {recipe.train.max_tokens} is smaller than the longest training sentence "
                        f"of {data} ({longest} tokens with EOS); use at least {longest}")


def data_dir(recipe: Recipe, console: Console | None = None, progress: bool = True, prepare: bool = True) -> Path:
    """The binarized data directory; prepares the dataset first when it is not (raises UserError if it cannot, or
    when `prepare` is false: a worker node never prepares, since two nodes would write the same files).

    Preparation is data_prep.prepare, the code behind `smx data prep`, with the dataset's defaults.
    """
    if recipe.data.dir is not None:
        return Path(recipe.data.dir)
    name, root = recipe.data.dataset, Path(recipe.data.root)
    if not data_prep.is_prepared(name, root):
        command = f"smx data prep {name}" + (f" --out {root}" if root != Path("data") else "")
        if not prepare:
            raise UserError(f"dataset {name} is not prepared under {root}: a worker node (--node-rank > 0) does not "
                            f"prepare data; run {command} first where every node sees it")
        check_dir(root / name, "data.root")
        if console is not None:
            console.print(f"dataset {name} is not prepared under {root}: preparing it ({command})", highlight=False)
        try:
            data_prep.prepare(name, root=root, progress=progress)
        except UserError as e:
            how = command if data_prep.info(name).offline else f"{command} --source DIR_OR_URL"
            raise UserError(f"dataset {name} is not prepared under {root} and preparing it here failed ({e}); "
                            f"run: {how}") from None
    return data_prep.bin_dir(name, root)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def run(req: TrainRequest, console: Console | None = None, warn: Callable[[str], None] | None = None) -> str:
    """Train per `req`; returns done | failed | interrupted. Bad input raises UserError before any write."""
    console = console or Console(stderr=True)
    warn = warn or (lambda msg: console.print(f"[yellow]warning:[/] {msg}", highlight=False))
    if req.stop_after_minutes is not None and not (math.isfinite(req.stop_after_minutes)
                                                   and req.stop_after_minutes > 0):
        raise UserError(f"--stop-after-minutes {req.stop_after_minutes}: must be a number > 0")
    p = plan(req)
    for note in p.notes:
        warn(note)
    if p.finished is not None:  # a done run resumed with the same budget: a no-op, nothing written
        console.print(p.finished, highlight=False, markup=False, soft_wrap=True)
        return "done"
    data = data_dir(p.recipe, console, progress=req.progress, prepare=req.dist.node_rank == 0)
    if req.dist.node_rank > 0:  # a worker node: the node-rank-0 launcher owns the run directory
        return session.train_worker(p.recipe, p.run_path, data, resume=p.resume and p.restore is not None,
                                    restore=p.restore or "checkpoint_last.pt", device=p.device, dist=req.dist)
    ident = dataid.identity(data)
    for note in ident.notes:
        warn(note)
    if p.resume:
        dataid.check(rundir.read_meta(rundir.RunDir(p.run_path)).get("data"), ident, f"--resume {p.run_path}")
    check_batch_fits(p.recipe, data)
    if not p.resume and rundir.never_trained(p.run_path):
        rundir.clear_skeleton(p.run_path)
    run_dir = rundir.RunDir(p.run_path) if p.resume else rundir.create(p.run_path)
    if not p.resume:
        dataid.record_use(data, run_dir.path, ident.id)
    with runlock.Lock(run_dir.lock, warn=warn):
        verified = None
        if p.resume:  # a resume may have been started concurrently: re-check under the lock
            rundir.check_resume(run_dir.path)
            rundir.ensure_layout(run_dir)  # a directory made before a crash (disk full) may lack its subdirectories
        if p.resume and p.restore is not None:
            restored = run_dir.checkpoints / p.restore
            verified = {restored: rundir.verify_checkpoint(restored, req.trust_checkpoint, lambda msg: None)}
        elif p.resume:  # a restart from update 0: the dead session's metrics are logged again (train.log keeps them)
            run_dir.metrics.unlink(missing_ok=True)
        extra = {"device": p.device, "world_size": req.dist.world_size, "data": ident.to_meta(),
                 "engine_env": process.train_env_additions(p.recipe.train.cpu_threads, p.device)}
        info = {"checkpoint_sha256": p.checkpoint_sha256, "trusted": req.trust_checkpoint} if p.resume else None
        previous = rundir.read_meta(run_dir) if p.resume else None
        previous_recipe = run_dir.recipe.read_text(encoding="utf-8") if p.resume else None
        if p.resume and not previous.get("name"):
            warn(f"{run_dir.meta}: missing or unreadable; rebuilt from recipe.yaml and train.log"
                 + (" (the old file is kept as meta.json.unreadable)" if run_dir.meta.exists() else ""))
            previous = None
        rundir.snapshot(run_dir, p.recipe, p.orig_text, req.argv, resumed=p.resume, extra=extra, resume_info=info)
        console.print(f"run directory: {run_dir.path}", highlight=False)
        status = session.train(p.recipe, run_dir, data, resume=p.restore is not None and p.resume,
                               restore=p.restore or "checkpoint_last.pt", device=p.device, dist=req.dist,
                              console=console, progress=req.progress, verified=verified,
                              stop_after_s=None if req.stop_after_minutes is None else 60.0 * req.stop_after_minutes,
                              previous=previous)
    failure = rundir.read_meta(run_dir).get("failure") if status == "failed" else None
    kept = rundir.read_meta(run_dir).get("status")
    if status == "failed" and kept != "failed":  # nothing trained: the run's recipe stays as it was too
        rundir.write_atomic(run_dir.recipe, previous_recipe)
        console.print(f"the resume failed before training any update; {run_dir.path} stays {kept} (the attempt is "
                      "listed in meta.json resumes)", style="red", highlight=False, markup=False, soft_wrap=True)
    if failure and failure.get("reason") == "no space":
        raise UserError(failure["message"])  # the machine's state, not a training failure: one line, exit 2
    if failure and failure.get("message"):
        console.print(f"error: {failure['message']} (log: {run_dir.log})", style="red", highlight=False,
                      markup=False, soft_wrap=True)
    elif status == "failed":
        console.print(f"training failed; last lines of {run_dir.log}:", style="red", highlight=False, markup=False)
        console.print(_tail(run_dir.log), highlight=False, markup=False)
    elif status == "interrupted":
        console.print(f"training interrupted: {run_dir.path} (continue with: smx train --resume {run_dir.path})",
                      highlight=False, markup=False, soft_wrap=True)
    else:
        console.print(f"training {status}: {run_dir.path}", highlight=False)
    return status
