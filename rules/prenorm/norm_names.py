"""Norms a project names its own way, in its file or imported from another one: a module-level
alias (`BertLayerNorm = torch.nn.LayerNorm`, apex's `FusedLayerNorm` imported under that name
with the torch class as its fallback) or a factory function whose every return builds a layer
norm (`def LayerNorm(shape, ...): ... return torch.nn.LayerNorm(shape, ...)`). Both build a torch
norm (or apex's drop-in copy of one), so the final norm a stack gets is the torch class itself."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.nn_bases import dotted_text
from tf_migrate.analysis.symbols import dotted

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

# torch norms and apex's fused drop-ins (same `normalized_shape`, `eps`, `weight`, `bias`)
_NORM_KINDS = {
    "torch.nn.LayerNorm": "LayerNorm", "torch.nn.modules.normalization.LayerNorm": "LayerNorm",
    "torch.nn.RMSNorm": "RMSNorm", "torch.nn.modules.normalization.RMSNorm": "RMSNorm",
    "apex.normalization.FusedLayerNorm": "LayerNorm",
    "apex.normalization.fused_layer_norm.FusedLayerNorm": "LayerNorm",
    "apex.normalization.FusedRMSNorm": "RMSNorm",
    "apex.normalization.fused_layer_norm.FusedRMSNorm": "RMSNorm",
}
_MAX_DEPTH = 4


def project_norm(fctx: "FileContext", cls: "ModuleClass", node: cst.CSTNode) -> str | None:
    """"LayerNorm" or "RMSNorm" when `self.<x>` (node) is built by a project alias or factory of
    that torch norm; None otherwise (a torch norm spelled directly is not this module's case)."""
    from tf_migrate.analysis.names import self_attribute

    name = self_attribute(node)
    return project_norm_named(fctx, cls, name) if name else None


def project_norm_named(fctx: "FileContext", cls: "ModuleClass", name: str) -> str | None:
    """`project_norm` for the submodule `self.<name>`."""
    sub = cls.submodules.get(name)
    if sub is None or sub.callee in _NORM_KINDS:
        return None
    text = dotted(sub.call.func)
    if text is None:
        return None
    project, path = fctx.project, fctx.project_key
    return project.memo(("prenorm.project_norm", path, text), lambda: _kind(project, path, text, 0))


def _kind(project, path: str, dotted: str, depth: int) -> str | None:
    """The one norm kind every thing `dotted` may stand for builds, else None."""
    symbols = project.resolve_dotted(path, dotted) if depth <= _MAX_DEPTH else []
    kinds = {_symbol_kind(project, symbol, depth) for symbol in symbols}
    return kinds.pop() if len(kinds) == 1 else None


def _symbol_kind(project, symbol, depth: int) -> str | None:
    if symbol.kind == "external":
        return _NORM_KINDS.get(symbol.qualified)
    if symbol.kind == "assign" and isinstance(symbol.node, ast.Assign):
        value = dotted_text(symbol.node.value)
        return _kind(project, symbol.path, value, depth + 1) if value else None
    if symbol.kind == "function" and isinstance(symbol.node, ast.FunctionDef):
        return _factory_kind(project, symbol.path, symbol.node, depth)
    return None


def _factory_kind(project, path: str, function: ast.FunctionDef, depth: int) -> str | None:
    """Every `return` of the function builds the same norm kind (a name imported inside the
    function, `from apex.normalization import FusedLayerNorm`, is followed too)."""
    local = {alias.asname or alias.name: f"{node.module}.{alias.name}"
             for node in ast.walk(function) if isinstance(node, ast.ImportFrom) and node.module and not node.level
             for alias in node.names}
    returns = [node for node in ast.walk(function) if isinstance(node, ast.Return)]
    if not returns or any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef))
                          for node in ast.walk(function) if node is not function):
        return None
    kinds = set()
    for node in returns:
        func = node.value.func if isinstance(node.value, ast.Call) else None
        text = dotted_text(func) if func is not None else None
        if text is None:
            return None
        if text in local:
            kinds.add(_NORM_KINDS.get(local[text]))
        else:
            kinds.add(_kind(project, path, text, depth + 1))
    return kinds.pop() if len(kinds) == 1 else None


def inherited_norm(fctx: "FileContext", cls: "ModuleClass", node: cst.CSTNode) -> bool:
    """`self.<x>` (node) is a norm that a base class of the project builds in its `__init__` (the
    class itself never assigns it): `class RelAttn(BaseAttn)` using `self.layer_norm`."""
    from tf_migrate.analysis.names import self_attribute
    from tf_migrate.rules.prenorm.tree import NORMS, resolve_class

    name = self_attribute(node)
    if name is None or name in cls.submodules or list(cls.self_references(name)) and any(
            isinstance(fctx.parents.get(r), cst.AssignTarget) for r in cls.self_references(name)):
        return False
    seen, queue = set(), [(fctx, cls, 0)]
    while queue:
        octx, ocls, depth = queue.pop(0)
        for base in ocls.node.bases:
            found = resolve_class(octx, base.value.value) if isinstance(base.value, cst.Name) else None
            if found is None or (found[0].project_key, found[1].qualname) in seen:
                continue
            seen.add((found[0].project_key, found[1].qualname))
            bctx, bcls = found
            if name in bcls.submodules:
                return bcls.submodule_of(node, *NORMS) is not None or project_norm(bctx, bcls, node) is not None
            if depth < 3:
                queue.append((bctx, bcls, depth + 1))
    return False
