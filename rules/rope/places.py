"""The parts of a whole-tree TFM401 component (across.py) and how its reasons name them: a module
class of a project file, what builds a table, one addition of a table; the class a place names;
paths relative to the run's root."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tf_migrate.analysis.attention import Refused

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass


@dataclass(frozen=True)
class Where:
    """A module class of a project file."""

    path: str
    qualname: str


@dataclass(frozen=True)
class Source:
    """What builds a table: a module-level function, or a module class whose forward returns rows."""

    path: str
    name: str
    kind: str  # "function" | "class"
    line: int


@dataclass(frozen=True)
class Added:
    """One addition of a table (census lines): its file, statement line and method."""

    path: str
    line: int
    cls: str
    method: str
    source: Source
    ordinal: int = 0  # which addition of `source` in `method`, in source order (lines move when
    # an earlier rule rewrote the file: the file's own run finds its additions by this)


def _context(project, path: str) -> "FileContext":
    fctx = project.context(path)
    if fctx is None:
        raise Refused(0, f"{_rel(project, path)} cannot be read", "")
    return fctx


def class_named(fctx, qualname: str) -> "ModuleClass":
    for cls in fctx.module_classes:
        if cls.qualname == qualname:
            return cls
    raise Refused(0, f"`{qualname}` is not an nn.Module class tf-migrate can read", "")


def _rel(project, path: str) -> str:
    try:
        return os.path.relpath(path, project.root)
    except ValueError:
        return path


def _names(wheres: list[Where]) -> str:
    return ", ".join(f"`{w.qualname}`" for w in wheres) or "no class"


def _listed(names: set[str]) -> str:
    return ", ".join(f"`{n}`" for n in sorted(names))


def _short(fctx, node) -> str:
    return " ".join(fctx.code(node).split())
