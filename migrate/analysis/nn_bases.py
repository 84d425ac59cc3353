"""A cheap necessary condition for "this file defines an nn.Module subclass", from `ast` alone.

Every rule works inside `nn.Module` classes, and a class base can resolve to `torch.nn.X` only
through an import of `torch...`. Python's own parser is several times faster than libcst's,
so files where no class base can be `torch.nn.*` are never given to libcst. This only filters:
the name resolution in `scopes` still decides every class that passes.
"""

from __future__ import annotations

import ast
from typing import Iterator

_TARGET = "torch.nn."


def dotted_text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted_text(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement, nested ones included, without visiting expressions (most of a tree)."""
    stack = list(reversed(body))
    while stack:
        node = stack.pop()
        yield node
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(node, name, None)
            if isinstance(inner, list):
                stack.extend(reversed(inner))


def _torch_bindings(statements: list[ast.stmt]) -> dict[str, set[str]]:
    """Bound name -> the absolute `torch...` paths it may stand for ("*" for a star import)."""
    bound: dict[str, set[str]] = {}
    for node in statements:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torch":
                    name = alias.asname or "torch"
                    bound.setdefault(name, set()).add(alias.name if alias.asname else "torch")
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] != "torch":
                continue
            for alias in node.names:
                name = "*" if alias.name == "*" else alias.asname or alias.name
                bound.setdefault(name, set()).add(f"{node.module}.{alias.name}")
    return bound


def _may_be_torch_nn(base: ast.expr, bindings: dict[str, set[str]]) -> bool:
    dotted = dotted_text(base)
    if dotted is None:  # a subscript, a call...: any torch-bound name inside keeps it
        return any(isinstance(n, ast.Name) and n.id in bindings for n in ast.walk(base))
    root, _, rest = dotted.partition(".")
    for path in bindings.get(root, ()):
        full = f"{path}.{rest}" if rest else path
        if full.startswith(_TARGET) or _TARGET.startswith(full + "."):
            return True
    return False


def may_define_modules(source: str | ast.Module) -> bool:
    """False only when no class in `source` (text, or its parse) can derive from `torch.nn.*`."""
    try:
        tree = ast.parse(source) if isinstance(source, str) else source
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return True  # let the engine report it
    statements = list(_statements(tree.body))
    bindings = _torch_bindings(statements)
    if "*" in bindings:
        return True
    return any(
        _may_be_torch_nn(base, bindings)
        for node in statements if isinstance(node, ast.ClassDef) for base in node.bases
    )
