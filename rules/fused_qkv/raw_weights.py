"""Recognising raw `nn.Parameter` projection weights: their shape, the product that applies them,
and the `nn.init` calls that initialise them.

A weight is `self.w = nn.Parameter(torch.empty(d_in, d_out))` (or randn/rand/zeros/ones/Tensor,
the shape as separate sizes or one tuple, optionally scaled). It is applied as
`torch.einsum("btd,de->bte", x, self.w)`, `x @ self.w`, `torch.matmul(x, self.w)` or
`F.linear(x, self.w)`; each form says which dimension of the weight becomes the output's. An
einsum may also apply a weight of more dimensions whose other letters the input and the output
share (per-head weights `(heads, out, in)` in `"bthk,hik->bthi"`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis import einsum
from tf_migrate.analysis.ffn import PARAMETER, projection
from tf_migrate.rules.fused_qkv.qkv_split import Blocked

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass, Submodule

_FACTORIES = ("torch.empty", "torch.randn", "torch.rand", "torch.zeros", "torch.ones", "torch.Tensor")
_INIT = "torch.nn.init."


@dataclass
class Product:
    """One application of a raw weight; `node` is the whole product expression."""

    node: cst.BaseExpression
    input: cst.BaseExpression
    weight_dim: int  # the weight dimension that becomes an output dimension
    output_dim: int  # where it lands in the product (-1: last)
    bias: cst.Attribute | None = None  # `self.b` in `<product> + self.b` (then `node` is the sum)


def shape(ctx: "FileContext", sub: "Submodule", any_rank: bool = False) -> list[cst.BaseExpression]:
    """The two size expressions of a raw 2-D weight (with `any_rank`, of a weight of 2 or more
    dimensions, which an einsum applies); Blocked when it is built another way."""
    sizes = _sizes(ctx, sub)
    if len(sizes) != 2 and not (any_rank and len(sizes) > 2):
        raise Blocked(f"`self.{sub.name}` (line {ctx.line(sub.statement)}) is not a 2-D weight")
    return sizes


def bias_size(ctx: "FileContext", sub: "Submodule") -> cst.BaseExpression:
    """The one size expression of a raw 1-D bias; Blocked when it is built another way."""
    sizes = _sizes(ctx, sub)
    if len(sizes) != 1:
        raise Blocked(f"`self.{sub.name}` (line {ctx.line(sub.statement)}) is not a 1-D bias")
    return sizes[0]


def _sizes(ctx: "FileContext", sub: "Submodule") -> list[cst.BaseExpression]:
    where = f"`self.{sub.name}` (line {ctx.line(sub.statement)})"
    args = sub.call.args
    if len(args) != 1 or args[0].keyword is not None or args[0].star:
        raise Blocked(f"{where} passes nn.Parameter more than a tensor")
    value = args[0].value
    if isinstance(value, cst.BinaryOperation) and isinstance(value.operator, (cst.Multiply, cst.Divide)):
        value = value.left  # `torch.randn(d, d) * 0.02`: the scale is kept as it is
    if not isinstance(value, cst.Call) or not ctx.names.is_call(value, *_FACTORIES):
        raise Blocked(f"{where} is not built from torch.empty/randn/rand/zeros/ones/Tensor of a shape")
    positional = [a for a in value.args if a.keyword is None]
    if any(a.star for a in value.args):
        raise Blocked(f"{where} passes its shape with a star")
    sizes = [a.value for a in positional]
    if len(sizes) == 1 and isinstance(sizes[0], (cst.Tuple, cst.List)):
        if any(isinstance(e, cst.StarredElement) for e in sizes[0].elements):
            raise Blocked(f"{where} passes its shape with a star")
        sizes = [e.value for e in sizes[0].elements]
    return sizes


def product(ctx: "FileContext", cls: "ModuleClass", ref: cst.Attribute) -> Product | None:
    """The product that applies the weight `ref` refers to, or None when `ref` is not one."""
    parent = ctx.parents.get(ref)
    node = ctx.parents.get(parent) if isinstance(parent, cst.Arg) else parent
    if isinstance(node, cst.Call) and ctx.names.is_call(node, "torch.einsum"):
        found = _einsum(node, parent)
    elif isinstance(node, (cst.Call, cst.BinaryOperation)):
        found = _matmul(ctx, cls, node, ref)
    else:
        return None
    if found is not None:
        found = _with_bias(ctx, cls, found)
    return found


def _matmul(ctx, cls, node, ref: cst.Attribute) -> Product | None:
    applied = projection(ctx, cls, node)
    if applied is None or not applied.raw or applied.weight != ref.attr.value:
        return None
    if applied.bias is not None:
        raise Blocked(f"`self.{applied.bias}` is a raw bias passed to F.linear (line {ctx.line(node)}); "
                      "F.linear bias triples are not fused yet")
    if ctx.names.is_call(node, "torch.nn.functional.linear"):
        return Product(node, applied.input, 0, -1)  # F.linear weights are (out, in)
    return Product(node, applied.input, 1, -1)


def _einsum(call: cst.Call, weight_arg: cst.Arg) -> Product | None:
    args = call.args
    if len(args) != 3 or any(a.keyword is not None or a.star for a in args):
        return None
    if not isinstance(args[0].value, cst.SimpleString) or weight_arg not in args[1:]:
        return None
    spec = einsum.parse(args[0].value.evaluated_value)
    if spec is None or len(spec.inputs) != 2:
        return None
    at = args.index(weight_arg) - 1
    weight, other, out = spec.inputs[at], spec.inputs[1 - at], spec.output
    # one letter kept (the output size), one contracted with the input, any others shared by
    # input, weight and output (per-head weights `"bthk,hik->bthi"`: stacked along i all the same)
    if "." in weight or len(set(weight)) != len(weight) or len(weight) < 2:
        return None
    kept = [c for c in weight if c in out and c not in other]
    contracted = [c for c in weight if c in other and c not in out]
    shared = [c for c in weight if c in other and c in out]
    if len(kept) != 1 or len(contracted) != 1 or len(kept) + len(contracted) + len(shared) != len(weight):
        return None
    position = out.index(kept[0])
    if position != len(out) - 1 and "." in out[:position]:
        return None
    output_dim = -1 if position == len(out) - 1 else position
    return Product(call, args[2 - at].value, weight.index(kept[0]), output_dim)


def _with_bias(ctx, cls, found: Product) -> Product:
    """`<product> + self.b` (or `self.b + <product>`) with a raw parameter `b`: the sum is the
    application, `self.b` its bias."""
    outer = ctx.parents.get(found.node)
    if isinstance(outer, cst.BinaryOperation) and isinstance(outer.operator, cst.Add):
        other = outer.right if outer.left is found.node else outer.left
        if cls.submodule_of(other, PARAMETER) is not None:
            return Product(outer, found.input, found.weight_dim, found.output_dim, other)
    return found


def init_site(ctx: "FileContext", ref: cst.Attribute) -> cst.BaseExpression | None:
    """What to rewrite when `ref` is initialised: `ref` itself in `nn.init.X_(self.w, ...)`, or the
    tuple/list a `for w in (...): nn.init.X_(w, ...)` loop initialises; None otherwise."""
    parent = ctx.parents.get(ref)
    if isinstance(parent, cst.Arg):
        call = ctx.parents.get(parent)
        return ref if _init_call(ctx, call, lambda arg: arg is parent) else None
    sequence = ctx.parents.get(parent) if isinstance(parent, cst.Element) else None
    loop = ctx.parents.get(sequence) if isinstance(sequence, (cst.Tuple, cst.List)) else None
    if not (isinstance(loop, cst.For) and loop.iter is sequence and isinstance(loop.target, cst.Name)):
        return None
    target = loop.target.value
    body = loop.body.body if isinstance(loop.body, cst.IndentedBlock) else [loop.body]
    for statement in body:
        small = statement.body if isinstance(statement, cst.SimpleStatementLine) else None
        if not small or not all(isinstance(s, cst.Expr) and _init_call(
                ctx, s.value, lambda arg: isinstance(arg.value, cst.Name) and arg.value.value == target)
                for s in small):
            return None
    return sequence


def _init_call(ctx, call, first) -> bool:
    """`nn.init.X_(<first>, ...)` as a statement of its own."""
    return (isinstance(call, cst.Call) and (ctx.names.callee(call) or "").startswith(_INIT)
            and bool(call.args) and call.args[0].keyword is None and first(call.args[0])
            and isinstance(ctx.parents.get(call), cst.Expr))
