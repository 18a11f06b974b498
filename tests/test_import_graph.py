"""The package's import structure, read from the source (every ``import``, lazy ones too):
no cycles, the model builder knows nothing of weights, and no module of the library imports
the command line, benchmark or training code."""

from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "keras_effv2"
# Not the library: the command line (keras-effv2, python -m keras_effv2.train) and training.
APPLICATION = ("keras_effv2.cli", "keras_effv2.train", "keras_effv2.training")
OUTSIDE = ("bench", "weights_tools")


def module_files() -> dict[str, str]:
    """``{module name: file}`` for every module of the package (``__init__`` = the package)."""
    out = {}
    for folder, _, files in os.walk(os.path.join(REPO, PACKAGE)):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), REPO)[:-3].split(os.sep)
                out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(folder, f)
    return out


def imported(name: str, path: str, modules) -> set[str]:
    """Package modules and outside projects that ``name``'s source imports, anywhere in it."""
    with open(path, encoding="utf8") as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules
                            else base)
    return {t for t in targets if t.split(".")[0] in (PACKAGE, *OUTSIDE)}


def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or ``None``."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def closure(edges, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_is_read():
    edges = graph()
    assert "keras_effv2.weights.cache" in edges["keras_effv2.weights.load"]
    assert "keras_effv2.model" in edges["keras_effv2.applications"]
    assert "weights_tools" not in str(edges["keras_effv2.cli.convert"])  # found by name only


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_model_imports_nothing_of_weights():
    reached = closure(graph(), "keras_effv2.model")
    assert not [m for m in reached if under(m, ("keras_effv2.weights",))], sorted(reached)


def test_library_imports_no_command_line_benchmark_or_training():
    bad = {name: sorted(t for t in targets if under(t, APPLICATION + OUTSIDE))
           for name, targets in graph().items() if not under(name, APPLICATION)}
    assert not {k: v for k, v in bad.items() if v}
