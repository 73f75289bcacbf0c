"""The package's layout holds as ARCHITECTURE.md draws it: no import cycles, the layering rules,
and no module over 400 lines.

The import graph is read with ``ast`` from the source (nothing is imported). Every import
counts: module level, inside functions, and under ``if TYPE_CHECKING``. A function-level import
still ties two modules together (it only defers the cost), and a type-only import still means
one module must be read to understand the other; a cycle through either is a cycle in the
design. ``from package import name`` counts as an import of ``package.name`` when that is a
module, else of ``package``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"gliograde": REPO / "src" / "gliograde", "benchmarks": REPO / "benchmarks"}
MAX_LINES = 400

# Commands a user runs by name, at the root of the package: only they (and the entry scripts)
# may import one another or be imported.
COMMANDS = {"clean", "compare", "export", "prepare", "summarize", "synthetic"}

# What each part may import from the package (besides itself). A part not listed here is
# unconstrained beyond "no cycles" and "no command"; ARCHITECTURE.md states its role.
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "files": {"errors", "data"},  # data: data.errors only, see DATA_FROM_FILES
    "data.synthetic": {"errors", "files"},
    "data.discovery": {"errors", "files", "data", "data.synthetic"},
    "data.caching": {"errors", "files", "data", "data.discovery", "data.batches"},
    "data.batches": {"errors", "files", "data", "data.discovery", "data.caching"},
    "data.pipeline": {
        "errors", "files", "data", "data.discovery", "data.caching", "data.batches", "data.synthetic",
        "contract",
    },
    "data": {"errors", "files", "data.discovery", "data.caching", "data.batches", "data.pipeline"},
    "sweeps": {"errors", "files", "evaluation", "models"},
}
DATA_FROM_FILES = {"gliograde.data.errors"}
# Nothing in the package reaches for the benchmarks or the entry scripts.
NEVER_IMPORTED_BY_THE_PACKAGE = {"benchmarks"}


def _modules() -> dict[str, Path]:
    found = {}
    for top, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imported_names(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield full if full in MODULES else node.module


def _owner(name: str) -> str | None:
    """The module ``name`` lies in (a name may be a module's attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        targets = {_owner(name) for name in _imported_names(ast.parse(path.read_text(encoding="utf-8")))}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def _part(module: str) -> str:
    """The part of the package ``module`` belongs to: ``data.caching``, ``training``, a command
    name, ``errors``, or ``benchmarks``."""
    parts = module.split(".")
    if parts[0] == "benchmarks":
        return "benchmarks"
    if len(parts) == 1:
        return "gliograde"
    if parts[1] == "data" and len(parts) > 2 and (PACKAGES["gliograde"] / "data" / parts[2]).is_dir():
        return f"data.{parts[2]}"
    return parts[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order, the first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


GRAPH = _graph()


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_names_a_cycle_through_function_and_type_only_imports():
    """The check itself: a graph with a cycle is caught, and the cycle is named in order."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    source = "def f():\n    from gliograde.files import atomic\nif TYPE_CHECKING:\n    import gliograde.errors\n"
    assert set(_imported_names(ast.parse(source))) == {"gliograde.files.atomic", "gliograde.errors"}


def layering_problems(graph: dict[str, set[str]]) -> list[str]:
    """Each import of ``graph`` that the rules above forbid, as a line naming both modules."""
    wrong = []
    for module, targets in graph.items():
        part = _part(module)
        for target in targets:
            other = _part(target)
            if module.startswith("gliograde") and other in NEVER_IMPORTED_BY_THE_PACKAGE:
                wrong.append(f"{module} imports {target}")
            if other == part or not target.startswith("gliograde"):
                continue
            if other in COMMANDS and part not in COMMANDS:
                wrong.append(f"{module} imports the command {target}")
            if part in MAY_IMPORT and other not in MAY_IMPORT[part] | {"gliograde"}:
                wrong.append(f"{module} ({part}) imports {target} ({other})")
            if part == "files" and other == "data" and target not in DATA_FROM_FILES:
                wrong.append(f"{module} (files) imports {target}")
    return sorted(wrong)


def test_each_part_imports_only_what_the_map_allows():
    wrong = layering_problems(GRAPH)
    assert not wrong, "\n".join(wrong)


def test_the_layering_check_names_each_forbidden_import():
    graph = {
        "gliograde.data.caching.cache": {"gliograde.training.fit", "gliograde.data.errors"},
        "gliograde.training.fit": {"gliograde.clean", "benchmarks.bench"},
        "gliograde.files.tables": {"gliograde.data.datamodule"},
    }
    assert layering_problems(graph) == [
        "gliograde.data.caching.cache (data.caching) imports gliograde.training.fit (training)",
        "gliograde.files.tables (files) imports gliograde.data.datamodule",
        "gliograde.training.fit imports benchmarks.bench",
        "gliograde.training.fit imports the command gliograde.clean",
    ]


def test_the_root_holds_only_commands_and_subpackages():
    root = PACKAGES["gliograde"]
    loose = {p.stem for p in root.glob("*.py")} - {"__init__", "errors"}
    assert loose == COMMANDS, f"modules at the root that are not commands: {sorted(loose - COMMANDS)}"


def test_no_module_is_over_400_lines():
    sizes = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in MODULES.values()}
    over = [f"{path.relative_to(REPO)}: {n} lines" for path, n in sorted(sizes.items()) if n > MAX_LINES]
    assert not over, f"modules over {MAX_LINES} lines (split them along their seams): " + ", ".join(over)
    assert len(sizes) > 100  # the walk found the package and the benchmarks
