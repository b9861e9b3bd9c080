"""The parsing half of smx.recipe.recipes: YAML with duplicate-key detection, typed coercion, `--set` overrides, hints.

Everything here is pure (text in, values or problem strings out). A "problem" is one line `key.path: message`;
smx.recipe.recipes collects them all and raises one UserError.
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from typing import Any, Literal, Union

import yaml

# YAML 1.1 (PyYAML) reads `1e-7` as a string; recipes write learning rates that way, so floats without a dot count.
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Loader(yaml.SafeLoader):
    """SafeLoader whose float resolver also accepts `1e-7` (no dot)."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _ch in list("-+0123456789."):
    _Loader.yaml_implicit_resolvers[_ch] = [
        (tag, rx) for tag, rx in _Loader.yaml_implicit_resolvers.get(_ch, []) if tag != "tag:yaml.org,2002:float"
    ]
    _Loader.yaml_implicit_resolvers[_ch].insert(0, ("tag:yaml.org,2002:float", _FLOAT_RE))


def _duplicates(node: yaml.Node, path: str, out: list[str]) -> None:
    """Append one problem per duplicate mapping key anywhere under `node`."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            sub = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in seen:
                out.append(f"{sub}: duplicate key (line {line}; first set on line {seen[key]})")
            else:
                seen[key] = line
            _duplicates(value_node, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicates(item, f"{path}[{i}]", out)


MAX_ALIASES = 32  # a recipe has no use for more; an aliased node holding another aliased node is refused


def _children(n: yaml.Node) -> list[yaml.Node]:
    if isinstance(n, yaml.MappingNode):
        return [c for kv in n.value for c in kv]
    return list(n.value) if isinstance(n, yaml.SequenceNode) else []


def _alias_problem(node: yaml.Node) -> str | None:
    """A problem when the document uses more than MAX_ALIASES aliases, or an aliased node that itself holds an
    aliased node (the nesting behind an exponential "billion laughs" expansion). Each node is visited once."""
    refs: dict[int, int] = {}
    order: list[yaml.Node] = []
    stack = [node]
    while stack:
        n = stack.pop()
        refs[id(n)] = refs.get(id(n), 0) + 1
        if refs[id(n)] == 1:
            order.append(n)
            stack.extend(_children(n))
    aliases = sum(r - 1 for r in refs.values())
    if aliases > MAX_ALIASES:
        return f"YAML: {aliases} aliases (more than {MAX_ALIASES}): refused"
    holds_shared: dict[int, bool] = {}
    for n in reversed(order):  # children before parents (a node's first visit comes after its parent's)
        holds_shared[id(n)] = any(refs[id(c)] > 1 or holds_shared.get(id(c), False) for c in _children(n))
        if refs[id(n)] > 1 and holds_shared[id(n)]:
            return (f"YAML: the aliased node at line {n.start_mark.line + 1} holds another alias; nested aliases "
                    "are refused")
    return None


def parse_yaml(text: str) -> tuple[Any, list[str]]:
    """YAML text -> (python value, problems). Syntax errors and duplicate keys are problems, never exceptions."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None, []
            bomb = _alias_problem(node)
            if bomb:
                return None, [bomb]
            problems: list[str] = []
            _duplicates(node, "", problems)
            return loader.construct_document(node), problems
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        return None, [f"YAML syntax error: {where}{what}"]


def parse_scalar(text: str) -> Any:
    """A `--set` value as a YAML scalar, list or flow mapping (`1e-4`, `true`, `null`, `[0, 2]`, `{a: 1}`)."""
    value, problems = parse_yaml(text)
    if problems:
        raise ValueError(problems[0])
    return value


def hint(word: str, choices: typing.Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# ---------------------------------------------------------------- typed coercion


def type_name(tp: Any) -> str:
    """A readable name for a field type: `an integer`, `a number or null`, `one of 'a', 'b'`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        names = [type_name(a) for a in args if a is not type(None)]
        tail = " or null" if type(None) in args else ""
        return " or ".join(names) + tail
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {type_name(args[0]).split(' ', 1)[1]}s"
        return f"a list of {len(args)} numbers"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}.get(
        tp, str(tp)
    )


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "null"


def coerce(value: Any, tp: Any) -> Any:
    """Check `value` against the field type `tp` and return it normalized (ints -> floats, lists -> tuples).

    Raises ValueError("expected <type>, got <value>") when it does not fit. bool is never accepted as a number.
    """
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except ValueError:
                pass
        raise ValueError(f"expected {type_name(tp)}, got {_show(value)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, str) and value in choices:
            return value
        extra = hint(value, [str(c) for c in choices]) if isinstance(value, str) else ""
        raise ValueError(f"expected {type_name(tp)}, got {_show(value)}{extra}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected {type_name(tp)}, got {_show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise ValueError(f"expected {type_name(tp)}, got {_show(value)}")
        return tuple(coerce(v, a) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):  # 1e400 reads as inf; .nan passes every `x <= 0` check
                shown = _show(value if isinstance(value, float) else number)
                raise ValueError(f"expected a finite number, got {shown}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
    else:  # pragma: no cover - a schema bug, not user input
        raise TypeError(f"unsupported field type {tp!r}")
    raise ValueError(f"expected {type_name(tp)}, got {_show(value)}")


# ---------------------------------------------------------------- --set overrides


def split_override(item: str) -> tuple[list[str], Any]:
    """`moe.k=2` -> (['moe', 'k'], 2). Raises ValueError on a missing '=' or an unparsable value."""
    if "=" not in item:
        raise ValueError(f"--set {item}: expected KEY=VALUE, e.g. --set moe.k=2")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set {item}: expected KEY=VALUE with a dotted key, e.g. --set optim.lr=1e-4")
    try:
        value = parse_scalar(text)
    except ValueError as e:
        raise ValueError(f"--set {item}: {e}") from None
    return key.split("."), value


def apply_override(raw: dict, path: list[str], value: Any) -> None:
    """Set raw[path[0]][path[1]]... = value, creating intermediate mappings (the caller checked the path)."""
    node = raw
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
