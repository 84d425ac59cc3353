"""A cheap necessary condition for "this class base resolves to torch.nn.*", from imports alone.

Full name resolution (libcst's scope analysis) costs seconds on a large file: 15 s of the 16 s
spent on torch/_inductor/utils.py. A base can resolve to `torch.nn.X` only through an import of
`torch...`, so when no base of any class can, the resolver is never built. This only filters:
the resolver still decides every base that passes.
"""

from __future__ import annotations

import libcst as cst

_TARGET = "torch.nn."


def _dotted(node: cst.BaseExpression) -> str | None:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr.value}" if inner else None
    return None


class _Imports(cst.CSTVisitor):
    """Bound name -> the absolute `torch...` paths it may stand for."""

    def __init__(self) -> None:
        self.bound: dict[str, set[str]] = {}

    def visit_Import(self, node: cst.Import) -> None:
        for alias in node.names:
            path = _dotted(alias.name) or ""
            if path.split(".")[0] == "torch":
                name = alias.asname.name.value if alias.asname and isinstance(alias.asname.name, cst.Name) else None
                self.bound.setdefault(name or path.split(".")[0], set()).add(path if name else "torch")

    def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
        module = _dotted(node.module) if node.module is not None else None
        if node.relative or not module or module.split(".")[0] != "torch":
            return
        if isinstance(node.names, cst.ImportStar):
            self.bound.setdefault("*", set()).add(module)
            return
        for alias in node.names:
            name = alias.asname.name.value if alias.asname and isinstance(alias.asname.name, cst.Name) else alias.name.value
            self.bound.setdefault(name, set()).add(f"{module}.{_dotted(alias.name)}")


def torch_bindings(module: cst.Module) -> dict[str, set[str]]:
    visitor = _Imports()
    _visit_imports(module, visitor)
    return visitor.bound


def _visit_imports(node: cst.CSTNode, visitor: _Imports) -> None:
    """Imports are statements: expressions (most of a large file) are never entered."""
    for child in node.children:
        if isinstance(child, cst.Import):
            visitor.visit_Import(child)
        elif isinstance(child, cst.ImportFrom):
            visitor.visit_ImportFrom(child)
        elif not isinstance(child, (cst.BaseExpression, cst.Expr, cst.Assign, cst.AugAssign,
                                    cst.AnnAssign, cst.Return)):
            _visit_imports(child, visitor)


def may_be_torch_nn(base: cst.BaseExpression, bindings: dict[str, set[str]]) -> bool:
    if "*" in bindings:
        return True
    dotted = _dotted(base)
    if dotted is None:  # a subscript, a call...: any torch-bound name inside keeps it
        finder = _Names()
        base.visit(finder)
        return bool(finder.names & bindings.keys())
    root, _, rest = dotted.partition(".")
    for path in bindings.get(root, ()):
        full = f"{path}.{rest}" if rest else path
        if full.startswith(_TARGET) or _TARGET.startswith(full + "."):
            return True
    return False


class _Names(cst.CSTVisitor):
    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_Name(self, node: cst.Name) -> None:
        self.names.add(node.value)
