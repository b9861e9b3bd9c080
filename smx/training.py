"""`smx train` end to end: check everything, prepare data if needed, create/lock/snapshot the run dir, launch.

    status = run(TrainRequest(recipe_path=Path("recipes/tiny.yaml"), overrides=("seed=2",)))

All user input is checked in plan() before anything is written: a bad recipe, an existing run directory, a missing
checkpoint to resume from, an unknown dataset, a missing GPU or engine each raise one UserError and leave the disk
untouched. Then the dataset is prepared if it is not (data_prep.prepare, the code behind `smx data prep`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from smx import launch, rundir
from smx.errors import UserError
from smx.launch import Distributed
from smx.recipes import Recipe, load, loads, to_dict

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


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    run_path: Path
    resume: bool
    orig_text: str | None  # the recipe file as written (new runs)
    device: str  # cpu | cuda
    notes: tuple[str, ...]


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


def _plan_resume(req: TrainRequest, notes: list[str]) -> tuple[Recipe, Path]:
    if req.run_dir is not None:
        raise UserError("--resume RUN already names the run directory; drop --run-dir")
    path = req.resume
    assert path is not None
    if not path.exists() and (req.runs_root / path).exists():
        path = req.runs_root / path
    run = rundir.check_resume(path)
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
    return recipe, path


def plan(req: TrainRequest) -> Plan:
    """Check every input; raises UserError; writes nothing."""
    notes: list[str] = []
    if req.resume is not None:
        recipe, path = _plan_resume(req, notes)
        orig = None
    else:
        if req.recipe_path is None:
            raise UserError("missing RECIPE (a recipes/*.yaml file), or --resume RUN")
        recipe = load(req.recipe_path, _overrides(req), estimator=req.estimator, notes=notes)
        orig = req.recipe_path.read_text(encoding="utf-8")
        path = req.run_dir if req.run_dir is not None else rundir.default_path(recipe, req.runs_root)
        if req.dist.node_rank == 0:
            rundir.check_new(path)
    device = launch.resolve_device(recipe.train.device)
    if recipe.train.fp16 is True and device != "cuda":
        raise UserError("train.fp16: true needs a GPU, but none is visible (use fp16: auto)")
    if recipe.data.dir is not None:
        bin_dir = Path(recipe.data.dir)
        if not bin_dir.is_dir():
            raise UserError(f"data.dir: {bin_dir} is not a directory")
        if not any(bin_dir.glob("dict*.txt")):
            raise UserError(f"data.dir: {bin_dir} holds no fairseq dictionary (dict*.txt); point it at a binarized "
                            "directory (e.g. data/<dataset>/bin)")
    launch.check_engine()
    return Plan(recipe, path, req.resume is not None, orig, device, tuple(notes))


def data_dir(recipe: Recipe, console: Console | None = None, progress: bool = True) -> Path:
    """The binarized data directory; prepares the dataset first when it is not (raises UserError if it cannot).

    Preparation is data_prep.prepare, the code behind `smx data prep`, with the dataset's defaults.
    """
    if recipe.data.dir is not None:
        return Path(recipe.data.dir)
    import data_prep

    name, root = recipe.data.dataset, Path(recipe.data.root)
    if not data_prep.is_prepared(name, root):
        command = f"smx data prep {name}" + (f" --out {root}" if root != Path("data") else "")
        if console is not None:
            console.print(f"dataset {name} is not prepared under {root}: preparing it ({command})", highlight=False)
        try:
            data_prep.prepare(name, root=root, progress=progress)
        except ValueError as e:
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
    p = plan(req)
    for note in p.notes:
        warn(note)
    data = data_dir(p.recipe, console, progress=req.progress)
    if req.dist.node_rank > 0:  # a worker node: the node-rank-0 launcher owns the run directory
        return launch.train_worker(p.recipe, p.run_path, data, resume=p.resume, device=p.device, dist=req.dist)
    run_dir = rundir.RunDir(p.run_path) if p.resume else rundir.create(p.run_path)
    with rundir.Lock(run_dir.lock, warn=warn):
        if p.resume:  # a resume may have been started concurrently: re-check under the lock
            rundir.check_resume(run_dir.path)
        extra = {"device": p.device, "world_size": req.dist.world_size,
                 "engine_env": launch.engine_env_additions(p.recipe, p.device)}
        rundir.snapshot(run_dir, p.recipe, p.orig_text, req.argv, resumed=p.resume, extra=extra)
        console.print(f"run directory: {run_dir.path}", highlight=False)
        status = launch.train(p.recipe, run_dir, data, resume=p.resume, device=p.device, dist=req.dist,
                              console=console, progress=req.progress)
    if status == "failed":
        console.print(f"training failed; last lines of {run_dir.log}:", style="red", highlight=False, markup=False)
        console.print(_tail(run_dir.log), highlight=False, markup=False)
    else:
        console.print(f"training {status}: {run_dir.path}", highlight=False)
    return status
