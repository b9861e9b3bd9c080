"""Recipes: YAML -> typed, frozen dataclasses (DESIGN.md sections 2 and 7).

    recipe = load("recipes/wmt14_switch.yaml", overrides=["router.estimator=topk", "seed=2"])
    text = dump(recipe)            # resolved YAML; loads(text) == recipe

Every problem in a recipe (unknown keys with did-you-mean hints, wrong types, out-of-range values, cross-section
rules, unknown estimators or estimator options, duplicate keys, YAML syntax) is collected and raised as ONE
smx.errors.UserError, one `file: key.path: message` line per problem. The section dataclasses live in
smx.recipe.schema; YAML and coercion helpers in smx.recipe.parse.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from smx.recipe import protocol
from smx.errors import Problems, UserError
from smx.recipe.parse import apply_override, coerce, hint, parse_yaml, split_override
from smx.recipe.rules import TASK_DEFAULTS, cross_problems
from smx.recipe.schema import (
    SECTIONS,
    DataConfig,
    EvalConfig,
    ModelConfig,
    MoESection,
    OptimConfig,
    RouterConfig,
    TrainConfig,
)
from smx import estimators

__all__ = ["Recipe", "load", "loads", "dump", "to_dict", "problems_of", "valid_keys"]

REFERENCED = {"topk", *protocol.REFERENCES}  # estimators the protocols can resolve (every registered one)
_TOP: dict[str, Any] = {"name": str, "task": Literal["translation", "language_modeling"], "seed": int}
_REQUIRED_TOP = ("name", "task")
_REQUIRED = (("data", "dataset"),)


@dataclass(frozen=True)
class Recipe:
    name: str  # run names are <name>-<estimator>-s<seed>
    task: Literal["translation", "language_modeling"]
    data: DataConfig
    seed: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    moe: MoESection = field(default_factory=MoESection)
    router: RouterConfig = field(default_factory=RouterConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        problems = cross_problems(self.name, self.task, self.seed, {s: getattr(self, s) for s in SECTIONS})
        if problems:
            raise UserError(problems)


# ---------------------------------------------------------------- building


def valid_keys() -> list[str]:
    """Every dotted key a recipe or `--set` may name."""
    keys = list(_TOP)
    for sec, cls in SECTIONS.items():
        keys += [f"{sec}.{f.name}" for f in fields(cls)]
    return keys


def _check_override_path(path: list[str]) -> str | None:
    dotted = ".".join(path)
    if len(path) == 1 and path[0] in _TOP:
        return None
    if len(path) == 2 and path[0] in SECTIONS and path[1] in {f.name for f in fields(SECTIONS[path[0]])}:
        return None
    if len(path) == 3 and path[:2] == ["router", "options"]:
        return None
    if len(path) in (3, 4) and path[:2] == ["router", "per_estimator"]:
        return None
    if len(path) == 1 and path[0] in SECTIONS:  # `--set moe=3`: a whole section is not one value
        keys = ", ".join(f"{path[0]}.{f.name}" for f in fields(SECTIONS[path[0]])[:3])
        return f"--set {dotted}: {dotted} is a section, not a key; set one of its keys, e.g. {keys}, ..."
    return f"--set {dotted}: unknown key{hint(dotted, valid_keys())}"


def _build_section(sec: str, raw: Any, task: Any) -> tuple[Any, list[str]]:
    cls = SECTIONS[sec]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, [f"{sec}: expected a mapping of keys, got {type(raw).__name__} {raw!r}"]
    hints = typing.get_type_hints(cls)
    p: list[str] = []
    kwargs: dict[str, Any] = {}
    bad: set[str] = set()
    for key, value in raw.items():
        if key not in hints:
            p.append(f"{sec}.{key}: unknown key{hint(str(key), hints)}")
            continue
        try:
            kwargs[key] = coerce(value, hints[key])
        except ValueError as e:
            p.append(f"{sec}.{key}: {e}")
            bad.add(key)
    for (s, key), value in TASK_DEFAULTS.get(task, {}).items():
        if s == sec and key not in raw:
            kwargs[key] = value
    for s, key in _REQUIRED:
        if s == sec and key not in kwargs:
            if key not in bad:
                p.append(f"{sec}.{key}: missing (required)")
            bad.add(key)
            kwargs[key] = "?"
    try:
        obj = cls(**kwargs)
    except Problems as e:
        p += [f"{sec}.{key}: {message}" for key, message in e.problems if key not in bad]
        obj = None
    # A section built from good values (unknown keys aside) still takes part in the cross-section checks.
    return (obj if not bad else None), p


def _build(raw: dict, notes: list[str]) -> tuple[Recipe | None, list[str]]:
    p: list[str] = []
    for key in raw:
        if key not in _TOP and key not in SECTIONS:
            p.append(f"{key}: unknown key{hint(str(key), list(_TOP) + list(SECTIONS))}")
    top: dict[str, Any] = {}
    for key, tp in _TOP.items():
        if key in raw:
            try:
                top[key] = coerce(raw[key], tp)
            except ValueError as e:
                p.append(f"{key}: {e}")
        elif key in _REQUIRED_TOP:
            p.append(f"{key}: missing (required)")
    sections: dict[str, Any] = {}
    for sec in SECTIONS:
        obj, more = _build_section(sec, raw.get(sec), top.get("task"))
        p += more
        if obj is not None:
            sections[sec] = obj
    if p:
        p += cross_problems(top.get("name"), top.get("task"), top.get("seed"), sections)
        return None, p
    if "router" in sections and "moe" in sections and sections["router"].estimator in REFERENCED:
        sections["router"], sections["moe"], more = protocol.resolve(sections["router"], sections["moe"])
        notes.extend(more)
    try:
        return Recipe(**top, **sections), []
    except UserError as e:
        return None, e.problems


def problems_of(text: str, overrides: Sequence[str] = (), *, estimator: str | None = None,
                notes: list[str] | None = None) -> tuple[Recipe | None, list[str]]:
    """(recipe, []) or (None, every problem): the non-raising core of loads()."""
    notes = [] if notes is None else notes
    raw, p = parse_yaml(text)  # duplicate keys are problems too, but the document still loads (last value wins)
    if raw is None and p:
        return None, p
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, [f"top level: expected a mapping (name, task, data, model, moe, ...), got {type(raw).__name__}"]
    explicit_options: list[str] = []  # router.options keys set by --set: the --estimator may not drop them
    for item in overrides:
        try:
            path, value = split_override(item)
        except ValueError as e:
            p.append(str(e))
            continue
        problem = _check_override_path(path)
        if problem:
            p.append(problem)
        else:
            apply_override(raw, path, value)
            if len(path) == 3 and path[:2] == ["router", "options"]:
                explicit_options.append(path[2])
    if estimator is not None:
        notes.extend(_switch_estimator(raw, estimator, explicit_options, p))
    recipe, more = _build(raw, notes)
    return (recipe if not p else None), p + more


def _switch_estimator(raw: dict, name: str, explicit: Sequence[str] = (),
                      problems: list[str] | None = None) -> list[str]:
    """Set router.estimator=name, dropping the recipe's router.options that estimator does not take (noted); an
    option given explicitly with --set that it does not take is a problem instead (an explicit request)."""
    router = raw.get("router")
    if router is None:
        router = raw["router"] = {}
    if not isinstance(router, dict):
        return []  # reported by _build
    router["estimator"] = name
    options = router.get("options")
    if name not in estimators.names() or not isinstance(options, dict):
        return []
    valid = set(estimators.get(name).option_names())
    for k in explicit:
        if k not in valid and problems is not None:
            problems.append(f"--set router.options.{k}: not an option of estimator {name!r} (--estimator); its "
                            f"options: {', '.join(sorted(valid)) or 'none'}")
    dropped = [k for k in options if k not in valid and k not in explicit]
    router["options"] = {k: v for k, v in options.items() if k in valid}
    return [f"router.options.{k}={options[k]!r} dropped: not an option of estimator {name!r}" for k in dropped]


def loads(text: str, overrides: Sequence[str] = (), source: str = "<recipe>", *, estimator: str | None = None,
          notes: list[str] | None = None) -> Recipe:
    """Recipe from YAML text plus `a.b=value` overrides; raises one UserError listing every problem.

    estimator: use this router estimator (the recipe's router.options it does not take are dropped and described
    in `notes`); a `--set router.estimator=...` override instead keeps every option and is strict.
    """
    recipe, p = problems_of(text, overrides, estimator=estimator, notes=notes)
    if p:
        raise UserError([f"{source}: {line}" for line in p])
    assert recipe is not None
    return recipe


MAX_RECIPE_BYTES = 1 << 20  # 1 MiB: a recipe is a few KB


def load(path: str | Path, overrides: Sequence[str] = (), *, estimator: str | None = None,
         notes: list[str] | None = None) -> Recipe:
    """Recipe from a YAML file plus `a.b=value` overrides; raises one UserError listing every problem."""
    path = Path(path)
    try:
        with open(path, "rb") as f:  # bounded: `smx recipe validate /dev/zero` must not read forever
            data = f.read(MAX_RECIPE_BYTES + 1)
        if len(data) > MAX_RECIPE_BYTES:
            raise UserError(f"{path}: larger than {MAX_RECIPE_BYTES // 1024} KiB; not a recipe")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read recipe: {e}") from None
    return loads(text, overrides, source=str(path), estimator=estimator, notes=notes)


# ---------------------------------------------------------------- dumping


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain YAML-ready data, sections in schema order."""
    out: dict[str, Any] = {"name": recipe.name, "task": recipe.task, "seed": recipe.seed}
    for sec in SECTIONS:
        obj = getattr(recipe, sec)
        out[sec] = {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    return out


def dump(recipe: Recipe) -> str:
    """Resolved YAML (every key explicit) that loads back to an equal Recipe."""
    return yaml.dump(to_dict(recipe), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, flow-style lists (`encoder_layers: [0, 2, 4]`)."""


_Dumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)
)
