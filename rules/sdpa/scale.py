"""Attention scaling: is a chain's scale SDPA's default 1/sqrt(head_dim), and how to spell it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.dataflow import Binding, read_names
from tf_migrate.analysis.names import method_call, number_value
from tf_migrate.analysis.nodes import atom_code

if TYPE_CHECKING:
    from tf_migrate.analysis.attention import Attention


def _is_sqrt(ctx, expr: cst.BaseExpression) -> cst.BaseExpression | None:
    """`math.sqrt(d)`, `np.sqrt(d)`, `d ** 0.5` -> d."""
    if isinstance(expr, cst.Call) and ctx.names.callee(expr) in ("math.sqrt", "numpy.sqrt") and len(expr.args) == 1:
        return expr.args[0].value
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Power):
        if number_value(expr.right) == 0.5:
            return expr.left
    return None


def _is_inverse_sqrt(ctx, expr: cst.BaseExpression) -> cst.BaseExpression | None:
    """`d ** -0.5`, `1 / math.sqrt(d)` -> d."""
    if isinstance(expr, cst.BinaryOperation):
        if isinstance(expr.operator, cst.Power) and number_value(expr.right) == -0.5:
            return expr.left
        if isinstance(expr.operator, cst.Divide) and number_value(expr.left) == 1:
            return _is_sqrt(ctx, expr.right)
    return None


def _resolved(found: "Attention", expr: cst.BaseExpression, at) -> tuple[cst.BaseExpression, object]:
    """Look through a local name or a `self.x` set once in `__init__` to its value."""
    if isinstance(expr, cst.Name) and found.flow.contains(at):
        definition = found.flow.definition(expr.value, at)
        if isinstance(definition, Binding):
            return definition.value, definition.statement
    return expr, at


def _same_tensor(ctx, found: "Attention", expr: cst.BaseExpression, at, operand) -> bool:
    """`expr` at `at` is the operand: same code, and every name in it bound by the same statement
    (`d = q.size(-1)` read before `q = q.view(...)` is another tensor's size)."""
    if ctx.code(expr) != ctx.code(operand.expr):
        return False
    flow = found.flow
    if not (flow.contains(at) and flow.contains(operand.at)):
        return False
    return all(getattr(flow.definition(n, at), "statement", None) is getattr(flow.definition(n, operand.at), "statement", None)
               for n in read_names(expr) - {"self"})


def _is_head_dim(ctx, found: "Attention", dim: cst.BaseExpression, at) -> bool:
    dim, at = _resolved(found, dim, at)
    for operand in (found.query, found.key):
        receiver = method_call(dim, "size")
        if receiver is not None and ctx.code(dim.args[0].value) == "-1" and _same_tensor(ctx, found, receiver, at, operand):
            return not operand.suffix
        if isinstance(dim, cst.Subscript) and isinstance(dim.value, cst.Attribute) and dim.value.attr.value == "shape":
            if ctx.code(dim.slice[0].slice) == "-1" and _same_tensor(ctx, found, dim.value.value, at, operand):
                return not operand.suffix
        last = found.shapes.last_dim(operand.expr, operand.at)
        if last is not None and last == ctx.code(dim):
            return True
    return False


def is_default(ctx, found: "Attention") -> bool:
    if len(found.scale) != 1:
        return False
    op, factor, at = found.scale[0]
    factor, at = _resolved(found, factor, at)
    dim = _is_sqrt(ctx, factor) if op == "/" else _is_inverse_sqrt(ctx, factor)
    return dim is not None and _is_head_dim(ctx, found, dim, at)


def spelled(ctx, found: "Attention") -> str:
    """The `scale=` value: the product of the factors (1.0 when the chain does not scale)."""
    top = [atom_code(ctx, f, numbers=True) for op, f, _ in found.scale if op == "*"]
    bottom = [atom_code(ctx, f, numbers=True) for op, f, _ in found.scale if op == "/"]
    numerator = " * ".join(top) or "1"
    if not bottom:
        return numerator if top else "1.0"
    denominator = bottom[0] if len(bottom) == 1 else "(" + " * ".join(bottom) + ")"
    return f"{numerator} / {denominator}"
