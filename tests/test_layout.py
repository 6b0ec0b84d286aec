"""The package's shape: stage wings, and no import cycle between modules or between wings.

Imports are read from the source (every `import`, at the top or inside a function), so a cycle that
a function-level import hides from Python is still a cycle here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lnpeft"
WINGS = ("data", "model", "train", "analysis", "plan", "report")
TOP_MODULES = {"__init__", "cli", "errors", "numerics"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The lnpeft modules a file imports (`from pkg import submodule` counts as the submodule)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(path, known) - {name} for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph, as a list of nodes, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def unit(module: str) -> str:
    """The top-level unit of a module: its wing, or the top-level module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_cycle_between_wings():
    edges: dict[str, set[str]] = {}
    for src, dsts in graph().items():
        edges.setdefault(unit(src), set()).update(unit(d) for d in dsts if unit(d) != unit(src))
    cycle = find_cycle(edges)
    assert cycle is None, "wings import each other: " + " -> ".join(cycle)
    # the stage order: data below model below train and analysis, report on top
    assert "data" in edges["model"] and not edges["data"] & {"model", "train", "analysis", "plan", "report"}


def test_top_level_holds_only_the_wings_and_shared_modules():
    top = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()
                                                      and (p / "__init__.py").exists()}
    assert top == TOP_MODULES | set(WINGS)


def test_cli_commands_name_existing_modules():
    from lnpeft.cli import COMMANDS

    mods = modules()
    for command, (module, _) in COMMANDS.items():
        assert module in mods, f"lnpeft {command}: no module {module}"


@pytest.mark.parametrize("wing", WINGS)
def test_every_wing_says_what_it_holds(wing):
    doc = ast.get_docstring(ast.parse((PACKAGE / wing / "__init__.py").read_text()))
    assert doc and len(doc) > 40
