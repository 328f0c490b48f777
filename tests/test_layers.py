"""The packages import one way (README "Layout"): data → models → attacks → methods → train; eval never imports
train; report reads run directories and imports neither train nor the drivers; only compare/workflow/cli drive."""

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
    "eval": ("train", "compare", "workflow", "cli"),
    "report": ("train", "compare", "workflow", "cli"),
    "train": ("compare", "workflow", "cli"),
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n.split(".")[1] for n in names if n.startswith("advtrain.") and n.count(".") >= 1}


def test_packages_import_one_way():
    broken = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / package).rglob("*.py")):
            bad = _imports(path) & set(forbidden)
            broken += [f"{path.relative_to(PACKAGE)} imports advtrain.{name}" for name in sorted(bad)]
    assert broken == []


def test_the_check_sees_an_import():
    # The checker itself: a module that imports advtrain.train is caught.
    assert "train" in _imports(PACKAGE / "compare.py")
