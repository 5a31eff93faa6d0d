"""Modules and classes stay small enough to read: no module in ``greenflow/`` over
`MAX_LINES` lines, no class over `MAX_METHODS` methods (``def``s in its body, properties
included). What is over today is listed below, by name, so nothing new joins it; split a
module by concern, or a class into collaborating objects, rather than grow the list."""
from __future__ import annotations

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "greenflow")

MAX_LINES = 450
MAX_METHODS = 25

#: Modules (path under greenflow/) allowed over MAX_LINES for now.
LONG_MODULES: set[str] = set()
#: Classes (module path:class) allowed over MAX_METHODS for now.
BIG_CLASSES: set[str] = set()


def _modules() -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in filenames:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                out[os.path.relpath(path, ROOT).replace(os.sep, "/")] = path
    return out


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    lines, methods = {}, {}
    for rel, path in _modules().items():
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        lines[rel] = text.count("\n")
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, ast.ClassDef):
                methods[f"{rel}:{node.name}"] = sum(
                    isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) for b in node.body)
    return lines, methods


def test_no_module_is_longer_than_the_limit():
    lines, _ = _sizes()
    over = {m: n for m, n in lines.items() if n > MAX_LINES and m not in LONG_MODULES}
    assert not over, (f"modules over {MAX_LINES} lines (split them by concern): "
                      + ", ".join(f"greenflow/{m} ({n})" for m, n in sorted(over.items())))


def test_no_class_has_more_methods_than_the_limit():
    _, methods = _sizes()
    over = {c: n for c, n in methods.items() if n > MAX_METHODS and c not in BIG_CLASSES}
    assert not over, (f"classes over {MAX_METHODS} methods (split them into collaborating "
                      "objects): " + ", ".join(f"greenflow/{c} ({n})" for c, n in sorted(over.items())))


def test_the_allow_lists_name_what_exists():
    """An entry whose module or class is gone (renamed, split) is dropped from the list."""
    lines, methods = _sizes()
    assert not LONG_MODULES - set(lines), LONG_MODULES - set(lines)
    assert not BIG_CLASSES - set(methods), BIG_CLASSES - set(methods)
