"""Building small multi-file projects in a temporary folder and a FileContext over one of them."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import libcst as cst

from tf_migrate.analysis.modules import ModuleClass
from tf_migrate.analysis.project import ProjectIndex
from tf_migrate.engine.context import FileContext


def write_project(root: Path, files: dict[str, str]) -> ProjectIndex:
    (root / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return ProjectIndex.for_files(sorted(root.rglob("*.py")))


def context(project: ProjectIndex, path: Path) -> FileContext:
    text = path.read_text()
    project.add(path, text, ast.parse(text))
    return FileContext(cst.parse_module(text), str(path), text, project, str(path))


def module_class(ctx: FileContext, name: str) -> ModuleClass:
    return next(c for c in ctx.module_classes if c.qualname == name)


def expression(ctx: FileContext, cls: ModuleClass, method: str, source: str) -> cst.CSTNode:
    """The node in `cls.<method>` whose code is `source` (the first one)."""
    from tf_migrate.analysis.nodes import find

    found = find(cls.methods[method], lambda n: isinstance(n, cst.BaseExpression) and ctx.code(n) == source)
    assert found, f"{source!r} not in {cls.qualname}.{method}"
    return found[0]
