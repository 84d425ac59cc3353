"""Following a call into a function or method the project defines, in this file or another.

`resolve_call` answers which definition a call reaches (`attention(q, k, v, mask)` at module level,
`self.helper(x)` on the class or a project base, `Base.method(self, x)`), as the file's context
(libcst, parsed on demand for another file) and the `FunctionDef`; `bind_arguments` maps the
call's arguments onto the parameters the way Python does, defaults included.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.symbols import symbols_of

if TYPE_CHECKING:
    from tf_migrate.analysis.modules import ModuleClass
    from tf_migrate.engine.context import FileContext


@dataclass
class Callee:
    """A project function or method a call reaches."""

    ctx: "FileContext"  # the context of the file that defines it (the caller's own for this file)
    function: cst.FunctionDef
    qualname: str  # `attention`, `Encoder.helper`
    method: bool  # bound method: the call's receiver is the first parameter

    @property
    def path(self) -> str:
        return self.ctx.source_path

    @property
    def line(self) -> int:
        return self.ctx.line(self.function)


def resolve_call(ctx: "FileContext", call: cst.Call, cls: "ModuleClass | None" = None) -> Callee | None:
    """The project definition `call` reaches, when exactly one can be named."""
    func = call.func
    if isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name) and func.value.value == "self" \
            and cls is not None:
        return _method(ctx, cls, func.attr.value)
    symbols = symbols_of(ctx, func)
    if len(symbols) != 1 or symbols[0].kind != "function" or symbols[0].path is None:
        return None
    return _definition(ctx, symbols[0].path, symbols[0].qualname or "", method=False)


def _method(ctx: "FileContext", cls: "ModuleClass", name: str) -> Callee | None:
    if name in cls.methods:
        return Callee(ctx, cls.methods[name], f"{cls.qualname}.{name}", method=True)
    symbol = ctx.project.class_symbol(ctx.source_path, cls.qualname)
    found = ctx.project.method(symbol, name) if symbol else None
    if found is None:
        return None
    owner, _ = found
    return _definition(ctx, owner.path, f"{owner.qualname}.{name}", method=True)


def _definition(ctx: "FileContext", path: str, qualname: str, method: bool) -> Callee | None:
    other = ctx if path == ctx.project_key else ctx.project.context(path)
    if other is None:
        return None
    node: cst.CSTNode | None = other.module
    for part in qualname.split("."):
        body = node.body.body if isinstance(node, cst.ClassDef) else getattr(node, "body", [])
        node = next((s for s in body if isinstance(s, (cst.FunctionDef, cst.ClassDef)) and s.name.value == part), None)
        if node is None:
            return None
    return Callee(other, node, qualname, method) if isinstance(node, cst.FunctionDef) else None


def bind_arguments(function: cst.FunctionDef | ast.FunctionDef, call: cst.Call,
                   bound_self: bool = False) -> dict[str, cst.BaseExpression] | None:
    """Parameter name -> the argument expression (or the default, as an expression) for `call` of
    `function`; None when `*args`/`**kwargs` at the call or an unmatched argument make it unknowable.
    `bound_self`: the call is `obj.method(...)`, so the first parameter is the receiver."""
    names, defaults, kwonly = _signature(function)
    if bound_self:
        names = names[1:]
    bound: dict[str, cst.BaseExpression] = {}
    positional = [a for a in call.args if a.keyword is None]
    if any(a.star for a in call.args) or len(positional) > len(names):
        return None
    for name, arg in zip(names, positional):
        bound[name] = arg.value
    for arg in call.args:
        if arg.keyword is not None:
            if arg.keyword.value in bound or arg.keyword.value not in names + kwonly:
                return None
            bound[arg.keyword.value] = arg.value
    for name, default in defaults.items():
        bound.setdefault(name, default)
    if any(n not in bound for n in names + kwonly):
        return None
    return bound


def _signature(function) -> tuple[list[str], dict[str, cst.BaseExpression], list[str]]:
    if isinstance(function, cst.FunctionDef):
        params = function.params
        names = [p.name.value for p in [*params.posonly_params, *params.params]]
        kwonly = [p.name.value for p in params.kwonly_params]
        defaults = {p.name.value: p.default for p in [*params.posonly_params, *params.params, *params.kwonly_params]
                    if p.default is not None}
        return names, defaults, kwonly
    args = function.args
    names = [a.arg for a in args.posonlyargs + args.args]
    kwonly = [a.arg for a in args.kwonlyargs]
    defaults = {a.arg: cst.parse_expression(ast.unparse(d))
                for a, d in zip((args.posonlyargs + args.args)[len(names) - len(args.defaults):], args.defaults)}
    defaults.update({a.arg: cst.parse_expression(ast.unparse(d)) for a, d in zip(args.kwonlyargs, args.kw_defaults)
                     if d is not None})
    return names, defaults, kwonly
