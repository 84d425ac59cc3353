"""From an expression in the file being migrated (libcst) to what it stands for in the project.

The bridge between a rule's libcst nodes and the whole-tree index: `symbols_of` resolves a name
or dotted chain read at module level (a local variable resolves to nothing), `init_values` finds
what `__init__` assigns to `self.<attribute>`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.names import self_attribute
from tf_migrate.analysis.nodes import cached, find_types
from tf_migrate.analysis.project import Symbol

if TYPE_CHECKING:
    from tf_migrate.analysis.modules import ModuleClass
    from tf_migrate.engine.context import FileContext


def dotted(node: cst.CSTNode) -> str | None:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        inner = dotted(node.value)
        return f"{inner}.{node.attr.value}" if inner else None
    return None


def symbols_of(ctx: "FileContext", node: cst.CSTNode) -> list[Symbol]:
    """What a name or dotted chain may stand for ([] for locals, parameters, unknown names)."""
    text = dotted(node)
    if text is None or not ctx.names.module_level(node):
        return []
    return ctx.project.resolve_dotted(ctx.source_path, text)


def externals(symbols: list[Symbol]) -> set[str]:
    return {s.qualified for s in symbols if s.kind == "external"}


def init_values(cls: "ModuleClass", attribute: str) -> list[cst.BaseExpression]:
    """Every value `__init__` assigns to `self.<attribute>` (both branches of an `if` included),
    from one table per `__init__` (questions come per attribute; kept beside the index)."""
    init = cls.methods.get("__init__")
    if init is None:
        return []
    return list(cached(init, "symbols.init_values", _init_values_table).get(attribute, ()))


def _init_values_table(init: cst.FunctionDef) -> dict[str, list[cst.BaseExpression]]:
    table: dict[str, list[cst.BaseExpression]] = {}
    for node in find_types(init, cst.Assign):
        for name in dict.fromkeys(self_attribute(t.target) for t in node.targets):
            if name is not None:
                table.setdefault(name, []).append(node.value)
    return table


def enclosing_function(ctx: "FileContext", node: cst.CSTNode) -> cst.FunctionDef | None:
    return ctx.index.enclosing(node, cst.FunctionDef) if node in ctx.index else None


def parameter_default(function: cst.FunctionDef, name: str) -> cst.BaseExpression | None:
    params = function.params
    for param in [*params.posonly_params, *params.params, *params.kwonly_params]:
        if param.name.value == name:
            return param.default
    return None


def is_parameter(ctx: "FileContext", node: cst.CSTNode) -> cst.FunctionDef | None:
    """The function whose parameter the Name `node` reads, if it is one."""
    if not isinstance(node, cst.Name):
        return None
    function = enclosing_function(ctx, node)
    if function is None:
        return None
    params = function.params
    names = {p.name.value for p in [*params.posonly_params, *params.params, *params.kwonly_params]}
    if node.value not in names:
        return None
    assigned = [n for n in find_types(function.body, (cst.AssignTarget, cst.AugAssign))
                if isinstance(getattr(n, "target", None), cst.Name) and n.target.value == node.value]
    return None if assigned else function
