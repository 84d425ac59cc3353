"""What one file defines and imports at module level, read from Python's `ast` tree.

A summary is the unit of the whole-tree index: built from the tree the engine already made for
the file it migrates, or from a parse of another project file the first time a question reaches it.
A module-level name can be bound several times (`try: from apex... import FusedLayerNorm as
LayerNorm` / `except ImportError: class LayerNorm(nn.Module)`): every binding is kept.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Iterator, Union


@dataclass(frozen=True)
class Imported:
    """`import module [as name]` (obj None) or `from [.]module import obj [as name]`."""

    module: str
    obj: str | None
    level: int = 0


@dataclass(frozen=True)
class Defined:
    """A class, function or assignment at module level (or a class nested in a class)."""

    kind: str  # "class" | "function" | "assign"
    qualname: str
    node: ast.AST = field(compare=False, hash=False)

    @property
    def line(self) -> int:
        return getattr(self.node, "lineno", 0)


Binding = Union[Imported, Defined]


@dataclass(frozen=True)
class Reference:
    """A place a name is used as an attribute (`x.attn_drop`) or a string constant ("attn_drop")."""

    path: str
    line: int
    kind: str  # "attribute" | "string"
    node: ast.AST = field(compare=False, hash=False)


def module_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements executed at module level: nested `if`/`try`/`with` blocks, not defs or classes."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With, getattr(ast, "TryStar", ast.Try))):
            for name in ("body", "orelse", "finalbody"):
                yield from module_statements(getattr(node, name, []))
            for handler in getattr(node, "handlers", []):
                yield from module_statements(handler.body)


class FileSummary:
    def __init__(self, path: str, tree: ast.Module) -> None:
        self.path = path
        self.tree = tree
        self.bindings: dict[str, list[Binding]] = {}
        self.star_imports: list[Imported] = []
        self.classes: dict[str, ast.ClassDef] = {}  # qualname -> node, nested classes included
        self._references: dict[str, list[Reference]] | None = None
        for node in module_statements(tree.body):
            self._bind(node)

    def _bind(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    self._add(alias.asname, Imported(alias.name, None))
                else:
                    root = alias.name.split(".")[0]
                    self._add(root, Imported(root, None))
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                imported = Imported(node.module or "", alias.name, node.level)
                if alias.name == "*":
                    self.star_imports.append(imported)
                else:
                    self._add(alias.asname or alias.name, imported)
        elif isinstance(node, ast.ClassDef):
            self._add(node.name, Defined("class", node.name, node))
            self._classes(node, node.name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self._add(node.name, Defined("function", node.name, node))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    self._add(target.id, Defined("assign", target.id, node))

    def _classes(self, node: ast.ClassDef, qualname: str) -> None:
        self.classes[qualname] = node
        for inner in node.body:
            if isinstance(inner, ast.ClassDef):
                self._classes(inner, f"{qualname}.{inner.name}")

    def _add(self, name: str, binding: Binding) -> None:
        self.bindings.setdefault(name, []).append(binding)

    def references(self, name: str) -> list[Reference]:
        """Every `<expr>.name` and every string constant equal to `name` (or containing it as a
        dotted part, as in "encoder.0.attn_drop.weight") in the file."""
        if self._references is None:
            self._references = {}
            for node in ast.walk(self.tree):
                if isinstance(node, ast.Attribute):
                    self._note(node.attr, node, "attribute")
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 200:
                    for part in set(node.value.split(".")):
                        self._note(part, node, "string")
        return self._references.get(name, [])

    def _note(self, name: str, node: ast.AST, kind: str) -> None:
        assert self._references is not None
        self._references.setdefault(name, []).append(Reference(self.path, getattr(node, "lineno", 0), kind, node))
