"""The packages import one way (README "Layout"): data → models → attacks → methods → train; eval never imports
train nor report (eval computes, report presents); report reads run directories and eval's results and imports
neither train nor the drivers; only compare/workflow/cli drive. No two advtrain packages or modules import each
other, directly or through others, in any function."""

from __future__ import annotations

import ast
from pathlib import Path

import advtrain

PACKAGE = Path(advtrain.__file__).parent

# package → advtrain modules it must never import (directly; indirect imports go through one of these)
FORBIDDEN = {
    "data": ("models", "attacks", "methods", "train", "eval", "report", "compare", "workflow", "cli"),
    "models": ("attacks", "methods", "train", "eval", "report", "compare", "workflow", "cli"),
    "attacks": ("methods", "train", "eval", "report", "compare", "workflow", "cli"),
    "methods": ("train", "eval", "report", "compare", "workflow", "cli"),
    "eval": ("train", "report", "compare", "workflow", "cli"),
    "report": ("train", "compare", "workflow", "cli"),
    "train": ("compare", "workflow", "cli"),
}


def _imports(source: str, package: str) -> set[str]:
    """The advtrain packages or top-level modules that `source` (a module of `package`, e.g. "advtrain.eval")
    imports anywhere: at the top, inside functions (ast.walk visits every node), relatively or by name."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # from ..report import x, inside `package`
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*parent, module] if module else parent)
            # from advtrain import report: the names are the modules
            names.update([module] if module != "advtrain" else (f"advtrain.{a.name}" for a in node.names))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n.split(".")[1] for n in names if n.startswith("advtrain.")}


def _file_imports(path: Path) -> set[str]:
    package = ".".join(("advtrain", *path.parent.relative_to(PACKAGE).parts))  # also for an __init__.py
    return _imports(path.read_text(encoding="utf-8"), package)


def _import_graph() -> dict[str, set[str]]:
    """{advtrain package or top-level module: the others it imports} over every file under src/advtrain."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue
        unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        graph.setdefault(unit, set()).update(_file_imports(path) - {unit})
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as [a, b, ..., a], or None when it has none (depth-first search)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            if (found := visit(target, [*path, node])) is not None:
                return found
        done.add(node)
        return None

    for node in sorted(graph):
        if (found := visit(node, [])) is not None:
            return found
    return None


def test_packages_import_one_way():
    broken = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / package).rglob("*.py")):
            bad = _file_imports(path) & set(forbidden)
            broken += [f"{path.relative_to(PACKAGE)} imports advtrain.{name}" for name in sorted(bad)]
    assert broken == []


def test_no_import_cycle():
    graph = _import_graph()
    assert {"eval", "report", "train", "cli", "fileio"} <= set(graph)  # the graph covers packages and modules
    assert _cycle(graph) is None


def test_the_check_sees_an_import():
    # The checker itself: a module that imports advtrain.train is caught.
    assert "train" in _file_imports(PACKAGE / "compare.py")


def test_the_check_sees_function_level_relative_and_by_name_imports():
    source = (
        "import advtrain.data.sources\n"
        "from . import parts\n"
        "from ..models.registry import build_model\n"
        "from advtrain import compare, errors as e\n"
        "def f():\n"
        "    from advtrain.report.tables import fmt_acc\n"
        "    import advtrain.train\n"
    )
    assert _imports(source, "advtrain.eval") == {"data", "eval", "models", "compare", "errors", "report", "train"}


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"eval": {"report"}, "report": {"eval"}}) == ["eval", "report", "eval"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is not a cycle
