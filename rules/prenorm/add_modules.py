"""Residual sums written with an add module (`add = self.add([h, input_tensor])`, a class whose
forward returns `torch.add(*inputs)`), as explainability code writes them so that a relevance
pass can replay every operation: the census finds such a sum flowing into a norm, and the rule
refuses it, naming the method that replays the post-norm order when there is one."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.names import self_attribute
from tf_migrate.analysis.nn_bases import dotted_text
from tf_migrate.analysis.nodes import find, find_types

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

_TORCH_NORMS = ("torch.nn.LayerNorm", "torch.nn.RMSNorm", "torch.nn.modules.normalization.LayerNorm",
                "torch.nn.modules.normalization.RMSNorm")


def is_add_class(project, path: str, name: str) -> bool:
    """`name` (at module level of `path`) is a project class whose forward adds up the items of
    its one list argument: `return torch.add(*inputs)`, `inputs[0] + inputs[1]`, `sum(inputs)`."""
    return project.memo(("prenorm.add_class", path, name), lambda: _is_add_class(project, path, name))


def _is_add_class(project, path: str, name: str) -> bool:
    symbols = project.resolve_dotted(path, name)
    if len(symbols) != 1 or symbols[0].kind != "class" or not isinstance(symbols[0].node, ast.ClassDef):
        return False
    forward = next((n for n in symbols[0].node.body if isinstance(n, ast.FunctionDef) and n.name == "forward"), None)
    if forward is None or len(forward.args.args) != 2:
        return False
    param = forward.args.args[1].arg
    returns = [n for n in ast.walk(forward) if isinstance(n, ast.Return)]
    if len(returns) != 1 or returns[0].value is None:
        return False
    value = returns[0].value
    if isinstance(value, ast.Call) and dotted_text(value.func) in ("torch.add", "sum") and len(value.args) == 1:
        arg = value.args[0]
        inner = arg.value if isinstance(arg, ast.Starred) else arg
        return isinstance(inner, ast.Name) and inner.id == param
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add):
        return all(isinstance(s, ast.Subscript) and isinstance(s.value, ast.Name) and s.value.id == param
                   for s in (value.left, value.right))
    return False


def is_norm_subclass(project, path: str, name: str) -> bool:
    """A project class deriving from a torch norm (`class LayerNorm(nn.LayerNorm, RelProp)`)."""
    return project.memo(("prenorm.norm_subclass", path, name), lambda: _is_norm_subclass(project, path, name))


def _is_norm_subclass(project, path: str, name: str) -> bool:
    symbols = project.resolve_dotted(path, name)  # a class defined twice in its file: every definition
    return bool(symbols) and all(
        symbol.kind == "class" and isinstance(symbol.node, ast.ClassDef) and any(
            s.kind == "external" and s.qualified in _TORCH_NORMS
            for b in map(dotted_text, symbol.node.bases) if b for s in project.resolve_dotted(symbol.path, b))
        for symbol in symbols)


def add_module_refusal(ctx: "FileContext", cls: "ModuleClass", forward: cst.FunctionDef,
                       is_norm) -> tuple[int, str] | None:
    """(line, reason) when forward applies a norm to a sum made by an add module."""
    adds = [n for n in find_types(forward, cst.Call) if len(n.args) == 1
            and isinstance(n.args[0].value, cst.List) and self_attribute(n.func) is not None]
    adds = [add for add in adds if _built_by(ctx, cls, self_attribute(add.func), is_add_class)
            and _adds_passed_input(ctx, forward, add)]
    for add in adds:
        norm_call = _normed(ctx, forward, add)
        norm = self_attribute(norm_call.func) if norm_call is not None else None
        if norm is None or not (is_norm(norm_call.func) or _built_by(ctx, cls, norm, is_norm_subclass)):
            continue
        adder = self_attribute(add.func)
        replay = [(name, line) for name, method in cls.methods.items() if name not in ("forward", "__init__")
                  for line in [_first_use(ctx, method, norm)] if line is not None]
        if replay:
            name, line = replay[0]
            return ctx.line(norm_call), (
                f"the residual sum `self.{adder}(...)` (line {ctx.line(add)}) goes into `self.{norm}`, and "
                f"`{name}` (line {line}) replays that norm in post-norm order: moving the norm in "
                "forward would break it")
        return ctx.line(norm_call), (
            f"the residual sum is made by the add module `self.{adder}` (line {ctx.line(add)}) and goes "
            f"into `self.{norm}`: tf-migrate rewrites residuals written with `+`")
    return None


def _adds_passed_input(ctx, forward: cst.FunctionDef, add: cst.Call) -> bool:
    """A residual: two items, one of them a parameter of forward that forward never rebinds (the
    stream the caller passes in), the other something else (a sum of embeddings is no residual)."""
    items = add.args[0].value.elements
    params = {p.name.value for p in forward.params.params} - {"self"}
    rebound = {n.value for t in find(forward, lambda n: isinstance(n, (cst.AssignTarget, cst.AugAssign)))
               for n in find(t.target, lambda n: isinstance(n, cst.Name))}
    passed = [i for i in items if isinstance(i.value, cst.Name) and i.value.value in params - rebound]
    return len(items) == 2 and len(passed) == 1


def _normed(ctx, forward, add: cst.Call) -> cst.Call | None:
    """The one-argument call of `self.X` that takes the add's result: directly, or through the name
    the add's statement binds (its next read)."""
    parent = ctx.parents.get(add)
    if isinstance(parent, cst.Arg):
        call = ctx.parents.get(parent)
        return call if isinstance(call, cst.Call) and len(call.args) == 1 else None
    assign = parent if isinstance(parent, cst.Assign) else None
    if assign is None or len(assign.targets) != 1 or not isinstance(assign.targets[0].target, cst.Name):
        return None
    name, line = assign.targets[0].target.value, ctx.line(add)
    reads = sorted((n for n in find(forward, lambda n: isinstance(n, cst.Name) and n.value == name)
                    if ctx.line(n) > line and not isinstance(ctx.parents.get(n), cst.AssignTarget)), key=ctx.line)
    arg = ctx.parents.get(reads[0]) if reads else None
    call = ctx.parents.get(arg) if isinstance(arg, cst.Arg) else None
    return call if isinstance(call, cst.Call) and len(call.args) == 1 else None


def _built_by(ctx, cls, attr: str, test) -> bool:
    sub = cls.submodules.get(attr)
    if sub is None:
        return False
    func = sub.call.func
    text = func.value if isinstance(func, cst.Name) else None
    return text is not None and test(ctx.project, ctx.project_key, text)


def _first_use(ctx, method: cst.FunctionDef, attr: str) -> int | None:
    uses = find(method, lambda n: self_attribute(n) == attr)
    return ctx.line(uses[0]) if uses else None
