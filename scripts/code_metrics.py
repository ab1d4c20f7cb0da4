"""Size of the code's units, for the limits the project keeps: no function over 60 lines of code and no public
constructor over 10 parameters (a settings object counts as one), outside ``examples/``.

Lines of code: the lines of a function (nested functions included) that are neither blank, nor comments only, nor
part of a docstring. Public constructors: ``__init__`` of the classes of ``optical_st`` whose names do not start with
``_``, and the fields of its public dataclasses (their generated ``__init__``), without ``self``; ``*args`` and
``**kwargs`` are listed but not counted.

Settings objects are the grouped settings that count as one parameter where they are passed (``OTConfig``,
``HardNegativeConfig``, ``ExperimentConfig``, ``Recipe``), so their fields have no limit. The rule: a public
dataclass whose name ends with ``Config``, ``Settings`` or ``Recipe`` and whose every ``__init__`` field has a default
(a value in the class body; a ``field(...)`` only with ``default=`` or ``default_factory=``): it can be built with no
argument and changed one setting at a time (``dataclasses.replace``). They are listed apart and ``--check`` leaves
them out; a dataclass with a required field, or named otherwise, is a constructor like any other.

Usage::

    python scripts/code_metrics.py                 # optical_st, benchmarks, scripts, tests: top 15 of each
    python scripts/code_metrics.py --top 30 optical_st
    python scripts/code_metrics.py --check         # exit 1 when a limit is exceeded
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATHS = ("optical_st", "benchmarks", "scripts", "tests")
EXCLUDED = {"examples", ".venv", "build", "__pycache__"}
MAX_FUNCTION_LINES = 60
MAX_CONSTRUCTOR_PARAMETERS = 10
SETTINGS_SUFFIXES = ("Config", "Settings", "Recipe")


@dataclass(frozen=True)
class Function:
    path: str
    line: int
    name: str
    lines: int


@dataclass(frozen=True)
class Constructor:
    path: str
    line: int
    name: str
    parameters: int
    kind: str  # "__init__", "dataclass" or "settings" (a settings object: see the module docstring)
    varargs: str = ""


def python_files(paths: list[str]) -> Iterator[Path]:
    for name in paths:
        path = (ROOT / name).resolve()
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for file in files:
            if not EXCLUDED & set(file.relative_to(ROOT).parts):
                yield file


def _docstring_lines(node: ast.AST) -> set[int]:
    """Lines of the docstrings of ``node`` and of every function or class inside it."""
    lines: set[int] = set()
    for inner in ast.walk(node):
        if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)) and inner.body:
            first = inner.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def lines_of_code(node: ast.AST, source: list[str]) -> int:
    """Lines of ``node`` (from its ``def`` to its last line) that hold code: no blank, comment-only or docstring line."""
    docstrings = _docstring_lines(node)
    count = 0
    for number in range(node.lineno, node.end_lineno + 1):
        text = source[number - 1].strip()
        if text and not text.startswith("#") and number not in docstrings:
            count += 1
    return count


def _qualified(parents: list[str], name: str) -> str:
    return ".".join([*parents, name])


def functions(tree: ast.Module, source: list[str], path: str) -> Iterator[Function]:
    def visit(node: ast.AST, parents: list[str]) -> Iterator[Function]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield Function(path, child.lineno, _qualified(parents, child.name), lines_of_code(child, source))
                yield from visit(child, [*parents, child.name])
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, [*parents, child.name])
            else:
                yield from visit(child, parents)

    yield from visit(tree, [])


def _is_dataclass(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (isinstance(target, ast.Name) and target.id == "dataclass") or (
            isinstance(target, ast.Attribute) and target.attr == "dataclass"
        ):
            return True
    return False


def _is_field_call(value: ast.expr | None) -> bool:
    """``field(...)`` or ``dataclasses.field(...)``."""
    return isinstance(value, ast.Call) and ast.unparse(value.func) in ("field", "dataclasses.field")


def _dataclass_fields(node: ast.ClassDef) -> tuple[int, bool]:
    """``(count, all have defaults)`` of the annotated class attributes that reach ``__init__`` (not ``ClassVar``,
    not ``field(init=False)``)."""
    count, all_defaults = 0, True
    for statement in node.body:
        if not isinstance(statement, ast.AnnAssign) or not isinstance(statement.target, ast.Name):
            continue
        if "ClassVar" in ast.unparse(statement.annotation):
            continue
        value = statement.value
        keywords = {k.arg: k.value for k in value.keywords} if _is_field_call(value) else {}
        init = keywords.get("init")
        if isinstance(init, ast.Constant) and init.value is False:
            continue
        count += 1
        if value is None or (_is_field_call(value) and not {"default", "default_factory"} & set(keywords)):
            all_defaults = False
    return count, all_defaults


def is_settings_object(node: ast.ClassDef) -> bool:
    """A public dataclass named ``*Config`` / ``*Settings`` / ``*Recipe`` whose ``__init__`` fields all have defaults
    (the module docstring says why these count as one parameter)."""
    return _is_dataclass(node) and node.name.endswith(SETTINGS_SUFFIXES) and _dataclass_fields(node)[1]


def constructors(tree: ast.Module, path: str) -> Iterator[Constructor]:
    if any(part.startswith("_") and part != "__init__.py" for part in Path(path).parts[1:]):
        return  # a private module: no public constructor
    for node in tree.body:
        if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
            continue
        init = next(
            (s for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name == "__init__"),
            None,
        )
        if init is not None:
            args = init.args
            named = [*args.posonlyargs, *args.args, *args.kwonlyargs][1:]  # without self
            varargs = " ".join(f"{p}{a.arg}" for p, a in (("*", args.vararg), ("**", args.kwarg)) if a is not None)
            yield Constructor(path, init.lineno, node.name, len(named), "__init__", varargs)
        elif _is_dataclass(node):
            kind = "settings" if is_settings_object(node) else "dataclass"
            yield Constructor(path, node.lineno, node.name, _dataclass_fields(node)[0], kind)


def collect(paths: list[str]) -> tuple[list[Function], list[Constructor]]:
    found_functions: list[Function] = []
    found_constructors: list[Constructor] = []
    for file in python_files(paths):
        text = file.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(file))
        relative = file.relative_to(ROOT).as_posix()
        found_functions += functions(tree, text.splitlines(), relative)
        if relative.startswith("optical_st/"):
            found_constructors += constructors(tree, relative)
    return found_functions, found_constructors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=list(DEFAULT_PATHS), help="folders or files, from the repo root")
    parser.add_argument("--top", type=int, default=15, help="rows per table")
    parser.add_argument("--check", action="store_true", help="exit 1 if a function or constructor is over its limit")
    args = parser.parse_args(argv)
    found_functions, found_constructors = collect(args.paths)
    found_functions.sort(key=lambda f: (-f.lines, f.path, f.line))
    found_constructors.sort(key=lambda c: (-c.parameters, c.path, c.line))

    long = [f for f in found_functions if f.lines > MAX_FUNCTION_LINES]
    print(f"Largest functions (lines of code; limit {MAX_FUNCTION_LINES}, {len(long)} over it):")
    for f in found_functions[: args.top]:
        print(f"  {f.lines:4d}  {f.path}:{f.line}  {f.name}")
    settings = [c for c in found_constructors if c.kind == "settings"]
    found_constructors = [c for c in found_constructors if c.kind != "settings"]
    wide = [c for c in found_constructors if c.parameters > MAX_CONSTRUCTOR_PARAMETERS]
    print(f"\nPublic constructors of optical_st (parameters; limit {MAX_CONSTRUCTOR_PARAMETERS}, {len(wide)} over it):")
    for c in found_constructors[: args.top]:
        extra = f" + {c.varargs}" if c.varargs else ""
        print(f"  {c.parameters:4d}  {c.path}:{c.line}  {c.name} ({c.kind}{extra})")
    print("\nSettings objects of optical_st (fields; passed as one parameter, no limit):")
    for c in settings:
        print(f"  {c.parameters:4d}  {c.path}:{c.line}  {c.name}")
    if args.check:
        for f in long:
            print(f"over the limit: {f.path}:{f.line} {f.name}: {f.lines} lines of code", file=sys.stderr)
        for c in wide:
            print(f"over the limit: {c.path}:{c.line} {c.name}: {c.parameters} parameters", file=sys.stderr)
    return 1 if args.check and (long or wide) else 0


if __name__ == "__main__":
    sys.exit(main())
