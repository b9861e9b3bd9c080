"""The tree is the map: dependencies run one way, no import cycle, no function-level import of smx modules.

cli -> (study, eval, run, data_prep) -> engine -> recipe -> errors; fairseq_plugin -> moe -> estimators. The
engine's contract and checksums modules are leaves (names and sha256 records shared with the fairseq plugin), and so
is its children module (child processes that die with smx, shared with data prep's fairseq-preprocess).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEAVES = {"smx", "smx.errors", "smx.engine.contract", "smx.engine.checksums",  # smx: its version only
          "smx.engine.children"}  # child processes that die with smx: the launcher's and data prep's
# package -> the packages (besides itself and the leaves) it may import
ALLOWED = {
    "smx.estimators": set(),
    "smx.moe": {"smx.estimators"},
    "smx.recipe": {"smx.estimators", "data_prep"},
    "smx.engine": {"smx.recipe"},
    "smx.run": {"smx.engine", "smx.recipe", "data_prep"},
    "smx.eval": {"smx.run", "smx.engine", "smx.recipe"},
    "smx.study": {"smx.run", "smx.engine", "smx.recipe"},
    "smx.fairseq_plugin": {"smx.moe", "smx.estimators", "smx"},
    "data_prep": set(),
}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in ("smx", "data_prep"):
        for f in sorted((REPO / pkg).rglob("*.py")):
            parts = f.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODS = modules()


def resolve(name: str) -> str:
    while name and name not in MODS:
        name = name.rpartition(".")[0]
    return name


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported smx/data_prep module, inside a function?) for every import statement of the file."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [f"{child.module}.{a.name}" for a in child.names]
            for n in names:
                if n.split(".")[0] in ("smx", "data_prep") and resolve(n):
                    found.append((resolve(n), in_function))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def package_of(module: str) -> str:
    for pkg in sorted(ALLOWED, key=len, reverse=True):
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    return module


def test_no_import_cycle():
    graph = {m: {t for t, _ in imports(f) if t != m} for m, f in MODS.items()}
    state: dict[str, int] = {}

    def cycle_from(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return path + [m, t]
            if t not in state and (found := cycle_from(t, path + [m])):
                return found
        state[m] = 2
        return None

    for m in MODS:
        if m not in state:
            assert (found := cycle_from(m, [])) is None, " -> ".join(found)


def test_dependencies_run_one_way():
    bad = []
    for m, f in MODS.items():
        pkg = package_of(m)
        if pkg not in ALLOWED:
            continue
        for target, _ in imports(f):
            tpkg = package_of(target)
            if target in LEAVES or tpkg == pkg or tpkg in ALLOWED[pkg] or target == pkg:
                continue
            if pkg == "smx.fairseq_plugin" and target == "smx":  # its __init__ checks which smx it belongs to
                continue
            bad.append(f"{m} imports {target}")
    assert bad == []


def test_no_function_level_imports_of_smx_modules():
    inside = [f"{m} imports {t}" for m, f in MODS.items() for t, fn in imports(f) if fn]
    # the plugin's __init__ routes fairseq's `--user-dir` import to smx.fairseq_plugin: it must import lazily
    assert [x for x in inside if not x.startswith("smx.fairseq_plugin imports")] == []


def test_only_the_plugin_imports_fairseq():
    users = []
    for m, f in MODS.items():
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] in ("fairseq", "fairseq_cli") for n in names):
                users.append(m)
    assert sorted({u for u in users if not u.startswith("smx.fairseq_plugin")}) == []
