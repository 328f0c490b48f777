"""Size limits of the source: no module over 400 lines, no function in `advtrain.train` over 80 lines (methods and
nested functions included), so that each file and each training step can be read as a whole."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import advtrain

PACKAGE = Path(advtrain.__file__).parent
MAX_FILE_LINES = 400
MAX_TRAIN_FUNCTION_LINES = 80


def _source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _long_functions(source: str, limit: int) -> list[tuple[str, int, int]]:
    """(name, first line, length in lines) of every function or method in `source` longer than `limit` lines,
    decorators included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - first + 1
            if length > limit:
                found.append((node.name, first, length))
    return sorted(found, key=lambda f: f[1])


def test_the_package_has_source_files_to_check():
    files = {path.relative_to(PACKAGE).as_posix() for path in _source_files()}
    assert {"cli/commands.py", "train/loop.py", "train/trainer.py", "data/sources/__init__.py"} <= files


def test_no_source_file_is_over_400_lines():
    sizes = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in _source_files()}
    offenders = [f"{path.relative_to(PACKAGE)} ({n} lines)" for path, n in sizes.items() if n > MAX_FILE_LINES]
    assert not offenders, f"over {MAX_FILE_LINES} lines, split by what the code is: {', '.join(offenders)}"


def test_no_function_in_train_is_over_80_lines():
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line} {name} ({length} lines)"
        for path in sorted((PACKAGE / "train").rglob("*.py"))
        for name, line, length in _long_functions(path.read_text(encoding="utf-8"), MAX_TRAIN_FUNCTION_LINES)
    ]
    assert not offenders, f"train/ functions over {MAX_TRAIN_FUNCTION_LINES} lines: {', '.join(offenders)}"


def test_the_function_check_sees_methods_nested_functions_and_decorators():
    source = textwrap.dedent("""\
        @decorator
        def outer():
            a = 1
            def inner():
                b = 2
                return b
            return a
        class Model:
            def forward(self, x):
                y = x + 1
                return y
        def short():
            return 1
        """)
    # outer: lines 1-7 with its decorator; inner: 4-6; forward: 9-11; short (2 lines) is within any limit here
    assert _long_functions(source, 2) == [("outer", 1, 7), ("inner", 4, 3), ("forward", 9, 3)]
    assert _long_functions(source, 3) == [("outer", 1, 7)]
    assert _long_functions(source, 7) == []
