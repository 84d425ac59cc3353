"""Helpers that mask a score matrix in place: `mask_(scores, maskval=-inf, mask_diagonal=False)`.

Attention code often hides the future with a small function kept in a utilities file, called on
the scores for its side effect. `in_place_triangle` follows such a call into the project's
definition (this file or another) and reads its body: when the body only fills one triangle of the
last two axes with a value, the call is the masked_fill of a causal (or diagonal-hiding) mask, aligned
top-left for any number of rows and columns. Anything else in the body makes it unknown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.helpers import bind_arguments, resolve_call
from tf_migrate.analysis.names import int_value, method_call, number_value

if TYPE_CHECKING:
    from tf_migrate.analysis.modules import ModuleClass
    from tf_migrate.engine.context import FileContext


_NEG_INF = ("float('-inf')", "-float('inf')", "-math.inf", "-torch.inf", "-np.inf", "-numpy.inf",
            "float('-infinity')")


@dataclass
class HelperTriangle:
    """What an in-place helper call does to the matrix it is given."""

    region: str  # hidden (query row i, key column j) pairs: "j>i" (the future) or "j>=i"
    value: cst.BaseExpression  # the fill value (the caller's argument, or the helper's default)
    value_is_callers: bool  # False: `value` is the helper's default or literal, a node of its file
    where: str  # `path line N` of the helper's definition
    value_code: str = ""  # the value's code, read in the file that holds it

    def hides_by_itself(self) -> bool:
        """A value written in the helper's file: a number <= -1e4 or a spelling of -inf."""
        number = number_value(self.value)
        if number is not None:
            return number <= -1e4
        return "".join(self.value_code.split()).replace('"', "'") in _NEG_INF


@dataclass
class UnknownHelper:
    """A helper whose body is not one triangle fill: `where` names its definition."""

    name: str
    where: str


def in_place_triangle(ctx: "FileContext", call: cst.Call, cls: "ModuleClass | None" = None):
    """HelperTriangle when `call` (whose first argument is the matrix) reaches a project function
    that fills one triangle of it in place; UnknownHelper when it reaches one that does something
    else; None when the call reaches nothing the project defines."""
    callee = resolve_call(ctx, call, cls)
    if callee is None or callee.method:
        return None
    where = f"{_shown(ctx, callee.path)} line {callee.line}"
    unknown = UnknownHelper(ctx.code(call.func), where)
    bound = bind_arguments(callee.function, call)
    params = callee.function.params
    if bound is None or not params.params or isinstance(params.star_arg, cst.Param) or params.star_kwarg is not None:
        return unknown
    matrix = params.params[0].name.value
    read = _Body(callee.ctx, matrix, bound)
    region, value = read.triangle(callee.function)
    if region is None or value is None:
        return unknown
    caller_values = {id(a.value) for a in call.args}
    mine = id(value) in caller_values
    return HelperTriangle(region, value, mine, where, (ctx if mine else callee.ctx).code(value))


class _Body:
    """Reads a helper body of the form

        h, w = m.size(-2), m.size(-1)             (or m.shape[-2], two statements, ...)
        idx = torch.triu_indices(h, w, offset=K)
        m[..., idx[0], idx[1]] = value
    """

    def __init__(self, ctx: "FileContext", matrix: str, bound: dict[str, cst.BaseExpression]) -> None:
        self.ctx, self.matrix, self.bound = ctx, matrix, bound
        self.axes: dict[str, int] = {}  # local name -> the axis of the matrix whose size it holds
        self.indices: str | None = None
        self.offset: int | None = None

    def triangle(self, function: cst.FunctionDef) -> tuple[str | None, cst.BaseExpression | None]:
        body = list(function.body.body) if isinstance(function.body, cst.IndentedBlock) else []
        if body and _docstring(body[0]):
            body = body[1:]
        region = value = None
        for statement in body:
            if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
                return None, None
            small = statement.body[0]
            if isinstance(small, cst.Return) and small.value is None and statement is body[-1]:
                continue
            if not isinstance(small, cst.Assign) or len(small.targets) != 1 or value is not None:
                return None, None
            target = small.targets[0].target
            if self._sizes(target, small.value) or self._triu_indices(target, small.value):
                continue
            filled = self._fill(target, small.value)
            if filled is None:
                return None, None
            region, value = filled
        return region, value

    def _sizes(self, target, value) -> bool:
        """`h, w = m.size(-2), m.size(-1)` or `h = m.shape[-2]`: remember which axis each holds."""
        pairs = []
        if isinstance(target, cst.Tuple) and isinstance(value, cst.Tuple) \
                and len(target.elements) == len(value.elements):
            pairs = [(t.value, v.value) for t, v in zip(target.elements, value.elements)]
        elif isinstance(target, cst.Name):
            pairs = [(target, value)]
        axes = [self._axis(v) for _, v in pairs]
        if not pairs or None in axes or not all(isinstance(t, cst.Name) for t, _ in pairs):
            return False
        self.axes.update({t.value: a for (t, _), a in zip(pairs, axes)})
        return True

    def _axis(self, expr) -> int | None:
        receiver = method_call(expr, "size")
        if receiver is not None and len(expr.args) == 1:
            axis = int_value(expr.args[0].value)
        elif isinstance(expr, cst.Subscript) and isinstance(expr.value, cst.Attribute) \
                and expr.value.attr.value == "shape" and len(expr.slice) == 1 \
                and isinstance(expr.slice[0].slice, cst.Index):
            receiver, axis = expr.value.value, int_value(expr.slice[0].slice.value)
        else:
            return None
        return axis if _is_name(receiver, self.matrix) and axis in (-2, -1) else None

    def _triu_indices(self, target, value) -> bool:
        """`idx = torch.triu_indices(rows, cols, offset=K)`: remember the name and K."""
        offset = self._triu_offset(value)
        if not isinstance(target, cst.Name) or offset is None:
            return False
        self.indices, self.offset = target.value, offset
        return True

    def _triu_offset(self, value) -> int | None:
        """K of `torch.triu_indices(rows, cols, K)` over the matrix's last two axes, else None.
        `rows` may be the column count too (`n = m.size(-1)` for both): on every input where the
        original indexes in range (at least as many rows as columns) the hidden region is the same."""
        if not (isinstance(value, cst.Call) and self.ctx.names.is_call(value, "torch.triu_indices")):
            return None
        positional = [a.value for a in value.args if a.keyword is None]
        keywords = {a.keyword.value: a.value for a in value.args if a.keyword is not None}
        if len(positional) == 3:
            keywords.setdefault("offset", positional.pop())
        if len(positional) != 2 or set(keywords) - {"offset"}:
            return None
        rows, cols = positional
        if not (isinstance(rows, cst.Name) and self.axes.get(rows.value) in (-2, -1)
                and isinstance(cols, cst.Name) and self.axes.get(cols.value) == -1):
            return None
        offset = self._constant(keywords["offset"]) if "offset" in keywords else 0
        if not isinstance(offset, int) or isinstance(offset, bool):
            return None
        return offset

    def _fill(self, target, value):
        """`m[..., idx[0], idx[1]] = value` after the indices (or with `torch.triu_indices(...)[0]`
        written in place of `idx[0]`): (hidden region, value)."""
        if not (isinstance(target, cst.Subscript) and _is_name(target.value, self.matrix)):
            return None
        parts = [e.slice for e in target.slice]
        if len(parts) != 3 or not (isinstance(parts[0], cst.Index) and isinstance(parts[0].value, cst.Ellipsis)):
            return None
        for position, part in enumerate(parts[1:]):
            if not (isinstance(part, cst.Index) and isinstance(part.value, cst.Subscript)
                    and len(part.value.slice) == 1 and isinstance(part.value.slice[0].slice, cst.Index)
                    and int_value(part.value.slice[0].slice.value) == position):
                return None
            indices = part.value.value
            if self.indices is not None and _is_name(indices, self.indices):
                continue
            inline = self._triu_offset(indices)
            if inline is None or self.offset not in (None, inline):
                return None
            self.offset = inline
        regions = {0: "j>=i", 1: "j>i"}  # triu_indices(offset=K) lists the pairs with j - i >= K
        if self.offset not in regions:
            return None
        if isinstance(value, cst.Name) and value.value in self.bound:
            value = self.bound[value.value]
        elif isinstance(value, cst.Name):
            return None  # a global or local the caller cannot see
        return regions[self.offset], value

    def _constant(self, expr):
        """An int or bool from literals and the helper's parameters (`0 if diag else 1`)."""
        if isinstance(expr, cst.Name):
            if expr.value in ("True", "False"):
                return expr.value == "True"
            if expr.value in self.bound and self.bound[expr.value] is not expr:
                return self._constant(self.bound[expr.value])
            return None
        if isinstance(expr, cst.IfExp):
            test = self._constant(expr.test)
            if not isinstance(test, bool):
                return None
            return self._constant(expr.body if test else expr.orelse)
        return int_value(expr)


def _shown(ctx: "FileContext", path: str) -> str:
    """A path under the project root is shown relative to it."""
    project = ctx.project
    if project is not None and os.path.isabs(path) and project.inside(path):
        return os.path.relpath(path, project.root)
    return path


def _docstring(statement: cst.BaseStatement) -> bool:
    return (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1
            and isinstance(statement.body[0], cst.Expr)
            and isinstance(statement.body[0].value, (cst.SimpleString, cst.ConcatenatedString)))


def _is_name(node: cst.CSTNode, name: str) -> bool:
    return isinstance(node, cst.Name) and node.value == name
