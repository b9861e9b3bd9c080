"""`smx sweep`: the estimator x seed grid of one recipe, trained sequentially into one study directory, resumable.

    plan = plan_sweep(Path("recipes/tiny.yaml"), ["topk", "sparsemixer"], [1, 2, 3], overrides=["optim.lr=1e-3"])
    results = run_sweep(plan)

Each grid cell is a run directory `<study dir>/<name>-<estimator>-s<seed>` (smx.run.paths.default_path). On every call:
a run whose meta.json says `done` is skipped, an unfinished one is resumed (from checkpoint_last.pt, else
checkpoint_best.pt, else from update 0 in place when it died before its first checkpoint: smx.run.train), a missing
one, or one that a failure at its very start left without any training, is started; a directory that is not a run
(no recipe.yaml, files smx did not write) is never overwritten: it is reported as blocked. <study dir>/study.json records the recipe and overrides; a study
directory refuses a sweep of another recipe name or other overrides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from smx.errors import UserError
from smx.run.paths import RunDir
from smx.recipe import recipes
from smx.run import paths as rundir
from smx.run import train as training
from smx.run.writable import check_dir

STUDY_FILE = "study.json"


@dataclass(frozen=True)
class Cell:
    estimator: str
    seed: int
    path: Path
    action: str  # start | resume | skip | blocked


@dataclass(frozen=True)
class SweepPlan:
    recipe_path: Path
    recipe_name: str
    overrides: tuple[str, ...]
    study_dir: Path
    cells: tuple[Cell, ...]


def parse_list(text: str, option: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise UserError(f"{option}: expected a comma-separated list, got {text!r}")
    if len(set(items)) != len(items):
        raise UserError(f"{option}: duplicate entries in {text!r}")
    return items


def parse_seeds(text: str) -> list[int]:
    seeds = parse_list(text, "--seeds")
    try:
        return [int(s) for s in seeds]
    except ValueError:
        raise UserError(f"--seeds: expected comma-separated integers, got {text!r}") from None


def _status(path: Path) -> str:
    return RunDir(path).status()


def cell_action(path: Path) -> str:
    if not path.exists():
        return "start"
    if _status(path) == "done":
        return "skip"
    if RunDir(path).recipe.is_file():
        return "resume"
    return "start" if rundir.never_trained(path) else "blocked"


def plan_sweep(recipe_path: Path, estimators: list[str], seeds: list[int], overrides: list[str] = (),
               study_dir: Path | None = None) -> SweepPlan:
    """Check the whole grid (every recipe loads with every estimator and seed) before anything runs; writes nothing."""
    if not Path(recipe_path).is_file():
        raise UserError(f"{recipe_path}: no such recipe file")
    for key in overrides:
        if key.split("=", 1)[0].strip() in ("seed", "router.estimator"):
            raise UserError(f"--set {key}: the sweep sets {key.split('=', 1)[0].strip()} itself "
                            "(--estimators / --seeds)")
    first = recipes.load(recipe_path, list(overrides), estimator=estimators[0] if estimators else None)
    study = Path(study_dir) if study_dir is not None else Path("studies") / first.name
    _check_study(study, first.name, tuple(overrides))
    cells = []
    for est in estimators:
        for seed in seeds:
            recipe = recipes.load(recipe_path, [*overrides, f"seed={seed}"], estimator=est)
            path = rundir.default_path(recipe, study)
            cells.append(Cell(est, seed, path, cell_action(path)))
    return SweepPlan(Path(recipe_path), first.name, tuple(overrides), study, tuple(cells))


def _check_study(study: Path, name: str, overrides: tuple[str, ...]) -> None:
    if study.exists() and not study.is_dir():
        raise UserError(f"--study-dir {study}: exists and is not a directory")
    check_dir(study, "--study-dir")
    f = study / STUDY_FILE
    if not f.is_file():
        return
    try:
        old = json.loads(f.read_text())
    except ValueError:
        raise UserError(f"{f}: not valid JSON; fix or delete it") from None
    if old.get("recipe_name") != name or tuple(old.get("overrides", ())) != overrides:
        raise UserError(f"--study-dir {study} holds the study of recipe {old.get('recipe_name')!r} with overrides "
                        f"{old.get('overrides')}; this sweep is {name!r} with {list(overrides)}: "
                        "use another --study-dir")


def write_study(plan: SweepPlan) -> Path:
    """Create the study directory and record (or extend) study.json with this sweep's grid."""
    plan.study_dir.mkdir(parents=True, exist_ok=True)
    f = plan.study_dir / STUDY_FILE
    old = json.loads(f.read_text()) if f.is_file() else {}
    ests = list(dict.fromkeys([*old.get("estimators", []), *(c.estimator for c in plan.cells)]))
    seeds = list(dict.fromkeys([*old.get("seeds", []), *(c.seed for c in plan.cells)]))
    data = {"recipe": str(plan.recipe_path), "recipe_name": plan.recipe_name, "overrides": list(plan.overrides),
            "estimators": ests, "seeds": seeds}
    f.write_text(json.dumps(data, indent=2) + "\n")
    return f


def run_sweep(plan: SweepPlan, train: Callable | None = None, device: str | None = None, progress: bool = True,
              console=None, argv: tuple[str, ...] = ()) -> dict[Path, str]:
    """Train the grid in order; each run's outcome: done | failed | interrupted | skipped | blocked | error: ....

    Stops at the first interrupted run (Ctrl-C); a failed run does not stop the others.
    """
    from rich.console import Console

    train = train or training.run  # looked up at call time (tests replace it)
    console = console or Console(stderr=True)
    write_study(plan)
    results: dict[Path, str] = {}
    for i, cell in enumerate(plan.cells, 1):
        head = f"[{i}/{len(plan.cells)}] {cell.estimator} seed {cell.seed}: {cell.path}"
        if cell.action in ("skip", "blocked"):
            results[cell.path] = "skipped" if cell.action == "skip" else "blocked"
            why = "done" if cell.action == "skip" else "unfinished, no checkpoint to resume: delete it to restart"
            console.print(f"{head}: {results[cell.path]} ({why})", markup=False, highlight=False)
            continue
        console.print(f"{head}: {'resuming' if cell.action == 'resume' else 'starting'}", markup=False, highlight=False)
        req = training.TrainRequest(recipe_path=None if cell.action == "resume" else plan.recipe_path,
                           overrides=plan.overrides, estimator=None if cell.action == "resume" else cell.estimator,
                           seed=None if cell.action == "resume" else cell.seed, runs_root=plan.study_dir,
                           resume=cell.path if cell.action == "resume" else None, device=device, progress=progress,
                           argv=argv)
        try:
            results[cell.path] = train(req, console=console)
        except UserError as e:
            results[cell.path] = f"error: {e}"
            console.print(f"{head}: error: {e}", markup=False, highlight=False)
        if results[cell.path] == "interrupted":
            break
    return results
