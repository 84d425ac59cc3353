"""Is this a softmax, a layer norm, a dropout? In the spellings projects use: functional, method,
module attribute, inline module (`nn.Softmax(dim=-1)(x)`), a project class (a subclass that does
not change `forward`; a hand-written LayerNorm; an apex FusedLayerNorm with a fallback class), a
project function that only wraps one.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.names import argument, self_attribute
from tf_migrate.analysis.project import Symbol
from tf_migrate.analysis.project.facts import (LAYER_NORM_CLASSES, forward_passes_through, layer_norm_forward,
                                               uncast as _uncast)
from tf_migrate.analysis.project.index import dotted_text
from tf_migrate.analysis.symbols import init_values, symbols_of

if TYPE_CHECKING:
    from tf_migrate.analysis.modules import ModuleClass
    from tf_migrate.engine.context import FileContext

SOFTMAX_FUNCTIONS = ("torch.softmax", "torch.nn.functional.softmax")
DROPOUT_FUNCTIONS = ("torch.nn.functional.dropout",)


@dataclass
class Layer:
    """An application (`argument` set) or a module / callable value of a recognised kind."""

    construct: str  # "function", "method", "module attribute", "inline module", "subclass X", "wrapper f"...
    argument: cst.BaseExpression | None = None
    dim: cst.BaseExpression | None = None  # softmax: the dim argument, when given
    call: cst.Call | None = None  # the construction (modules) or the application


def is_softmax(ctx: "FileContext", cls: "ModuleClass | None", call: cst.CSTNode) -> Layer | None:
    """`F.softmax(x, dim)`, `torch.softmax`, `x.softmax(dim)`, `self.softmax(x)` with an
    `nn.Softmax(dim)` attribute, `nn.Softmax(dim=-1)(x)`, a project function that returns one."""
    if not isinstance(call, cst.Call) or not call.args or call.args[0].star:
        return None
    func = call.func
    if isinstance(func, cst.Attribute) and func.attr.value == "softmax" and not _is_self(func.value) \
            and not symbols_of(ctx, func):
        return Layer("method", func.value, argument(call, 0, "dim"), call)
    kind = _callable_kind(ctx, cls, func, _SOFTMAX)
    if kind is None:
        return None
    construct, built = kind
    dim = argument(call, 1, "dim") if construct in ("function", "wrapper") else (
        argument(built, 0, "dim") if built is not None else None)
    return Layer(construct, call.args[0].value, dim, call)


def is_dropout(ctx: "FileContext", cls: "ModuleClass | None", call: cst.CSTNode) -> Layer | None:
    """`F.dropout(x, p, training)`, `self.drop(x)` with an `nn.Dropout` (or a subclass that keeps its
    forward) attribute, `nn.Dropout(p)(x)`, a project function returning one."""
    if not isinstance(call, cst.Call) or not call.args or call.args[0].star or call.args[0].keyword:
        return None
    kind = _callable_kind(ctx, cls, call.func, _DROPOUT)
    return Layer(kind[0], call.args[0].value, None, kind[1] or call) if kind else None


def is_layer_norm(ctx: "FileContext", cls: "ModuleClass | None", node: cst.CSTNode) -> Layer | None:
    """`self.norm(x)` / `self.norm` / a construction, where the module is `nn.LayerNorm`, apex's
    FusedLayerNorm (also under `try: from apex... except ImportError: class LayerNorm`), or a project
    class whose forward is mean/variance normalisation with a weight and a bias. `F.layer_norm(x, ...)`
    too."""
    if isinstance(node, cst.Call) and symbols_of(ctx, node.func) and all(
            s.qualified == "torch.nn.functional.layer_norm" for s in symbols_of(ctx, node.func)):
        return Layer("function", node.args[0].value if node.args else None, None, node)
    if isinstance(node, cst.Call) and node.args and (self_attribute(node.func) or isinstance(node.func, cst.Call)):
        kind = _callable_kind(ctx, cls, node.func, _LAYER_NORM)
        return Layer(kind[0], node.args[0].value, None, kind[1]) if kind else None
    kind = _callable_kind(ctx, cls, node, _LAYER_NORM)
    return Layer(kind[0], None, None, kind[1]) if kind else None


def _is_self(node: cst.CSTNode) -> bool:
    return isinstance(node, cst.Name) and node.value == "self"


class _Kind:
    def __init__(self, functions: tuple[str, ...], classes: tuple[str, ...], project_class) -> None:
        self.functions, self.classes, self.project_class = functions, classes, project_class


def _layer_norm_class(ctx: "FileContext", symbol: Symbol) -> bool:
    return forward_passes_through(ctx.project, symbol, "torch.nn.LayerNorm") \
        or layer_norm_forward(ctx.project, symbol)


_SOFTMAX = _Kind(SOFTMAX_FUNCTIONS, ("torch.nn.Softmax",),
                 lambda ctx, s: forward_passes_through(ctx.project, s, "torch.nn.Softmax"))
_DROPOUT = _Kind(DROPOUT_FUNCTIONS, ("torch.nn.Dropout",),
                 lambda ctx, s: forward_passes_through(ctx.project, s, "torch.nn.Dropout"))
_LAYER_NORM = _Kind((), tuple(LAYER_NORM_CLASSES), _layer_norm_class)


def _callable_kind(ctx: "FileContext", cls, func: cst.CSTNode, kind: _Kind) -> tuple[str, cst.Call | None] | None:
    """(construct, construction call) when calling `func` applies `kind`."""
    attribute = self_attribute(func)
    if attribute is not None and cls is not None:
        values = init_values(cls, attribute)
        found = [_construction(ctx, v, kind) if isinstance(v, cst.Call) else None for v in values]
        if found and all(found):
            return f"module attribute ({found[0]})", values[0]
        return None
    if isinstance(func, cst.Call):
        found = _construction(ctx, func, kind)
        return (f"inline module ({found})", func) if found else None
    symbols = symbols_of(ctx, func)
    if symbols and all(s.kind == "external" and s.qualified in kind.functions for s in symbols):
        return "function", None
    if len(symbols) == 1 and symbols[0].kind == "function" and _wraps(ctx, symbols[0], kind):
        return "wrapper", None
    return None


def _construction(ctx: "FileContext", call: cst.Call, kind: _Kind) -> str | None:
    """Which construct `call` builds, when it builds a module of `kind`; every binding of the
    callee must qualify (an apex import and its fallback class)."""
    symbols = symbols_of(ctx, call.func)
    if not symbols:
        return None
    constructs = []
    for symbol in symbols:
        if symbol.kind == "external" and symbol.qualified in kind.classes:
            constructs.append(symbol.qualified.rsplit(".", 1)[-1])
        elif symbol.kind == "class" and kind.project_class(ctx, symbol):
            constructs.append(f"class {symbol.qualname}")
        else:
            return None
    return " or ".join(constructs)


def _wraps(ctx: "FileContext", symbol: Symbol, kind: _Kind) -> bool:
    """`def softmax(x, dim): return F.softmax(x, dim=dim)` (casts around it allowed)."""
    function = symbol.node
    if not isinstance(function, ast.FunctionDef):
        return False
    body = [s for s in function.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if len(body) != 1 or not isinstance(body[0], ast.Return) or not isinstance(body[0].value, ast.Call):
        return False
    value = body[0].value
    while isinstance(value.func, ast.Attribute) and value.func.attr in ("float", "type_as", "to") \
            and isinstance(value.func.value, ast.Call):
        value = value.func.value
    text = dotted_text(value.func)
    symbols = ctx.project.resolve_dotted(symbol.path, text) if text else []
    params = [a.arg for a in function.args.args]
    first = _uncast(value.args[0]) if value.args else None
    return bool(symbols) and all(s.kind == "external" and s.qualified in kind.functions for s in symbols) \
        and isinstance(first, ast.Name) and params[:1] == [first.id]
