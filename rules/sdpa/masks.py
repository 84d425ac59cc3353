"""What an attention mask means: which (query i, key j) pairs it hides, and as what.

Recognises causal masks in their common spellings (a `tril` buffer, `triu(..., diagonal=1)`,
an `arange` comparison, `generate_square_subsequent_mask`) and turns `masked_fill` conditions
(True = hidden) into SDPA's boolean convention (True = may attend) without changing meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.dataflow import Binding
from tf_migrate.analysis.names import argument, int_value, method_call, number_value, self_attribute
from tf_migrate.analysis.nodes import atom_code

if TYPE_CHECKING:
    from tf_migrate.analysis.shapes import Shapes

# Regions of a square (i = query row, j = key column) matrix.
_COMPLEMENT = {"j>i": "i>=j", "i>=j": "j>i", "i>j": "j>=i", "j>=i": "i>j"}
_SHAPE_ONLY = ("view", "reshape", "unsqueeze", "to", "cuda", "expand", "type_as", "contiguous",
               "bool", "byte", "float", "int", "long", "half", "detach")
_NEGATED = {cst.Equal: "!=", cst.NotEqual: "==", cst.LessThan: ">=", cst.GreaterThan: "<=",
            cst.LessThanEqual: ">", cst.GreaterThanEqual: "<"}


@dataclass
class Triangle:
    """A square 0/1 (or bool) matrix, nonzero exactly on `region`, of side `size` (code)."""

    region: str
    size: str | None
    bindings: list[Binding] = field(default_factory=list)  # local names it was read through
    buffer: str | None = None


class MaskReader:
    def __init__(self, shapes: "Shapes") -> None:
        self.shapes = shapes
        self.ctx = shapes.ctx

    def triangle(self, expr: cst.BaseExpression, at: cst.BaseStatement) -> Triangle | None:
        names = self.ctx.names
        if isinstance(expr, cst.Name):
            peeked = self.shapes.flow.definition(expr.value, at) if self.shapes.flow.contains(at) else None
            if isinstance(peeked, Binding) and not self.shapes.flow.mutation_between(expr.value, peeked.statement, at):
                found = self.triangle(peeked.value, peeked.statement)
                if found:
                    found.bindings.append(peeked)
                return found
            return None  # `m[:, 0] = 1` after the tril: no longer a triangle
        buffer = self_attribute(expr)
        if buffer in self.shapes.cls.buffers and not _buffer_changed(self.ctx, self.shapes.cls, buffer):
            registered = self.shapes.cls.buffers[buffer]
            found = self._in_init().triangle(registered.value, registered.statement)
            if found:
                found.buffer = buffer
                found.bindings = []  # names of __init__ are not the method's to remove
            return found
        if isinstance(expr, cst.Subscript):
            return self._sliced(expr, at)
        if isinstance(expr, cst.Call) and names.is_call(expr, "torch.tril", "torch.triu"):
            return self._tri(expr, expr.args[0].value if expr.args else None,
                             names.callee(expr) == "torch.tril", 1)
        receiver = method_call(expr, "tril", "triu")
        if receiver is not None and isinstance(expr, cst.Call):
            return self._tri(expr, receiver, expr.func.attr.value == "tril", 0)
        receiver = method_call(expr, *_SHAPE_ONLY)
        if receiver is not None:
            return self.triangle(receiver, at)
        if isinstance(expr, cst.Comparison) and len(expr.comparisons) == 1:
            return self._compared(expr, at)
        inverted = self._inverted(expr)
        if inverted is not None:
            found = self.triangle(inverted, at)
            if found:
                found.region = _COMPLEMENT[found.region]
            return found
        return None

    def _in_init(self) -> "MaskReader":
        """A reader over `__init__`, where buffers are made."""
        from tf_migrate.analysis.dataflow import FunctionFlow
        from tf_migrate.analysis.shapes import Shapes

        cls = self.shapes.cls
        return MaskReader(Shapes(self.ctx, cls, FunctionFlow(self.ctx, cls.methods["__init__"])))

    def _tri(self, call: cst.Call, ones: cst.BaseExpression | None, lower: bool, offset: int) -> Triangle | None:
        diagonal = argument(call, offset, "diagonal")
        k = 0 if diagonal is None else int_value(diagonal)
        size = self._ones_size(ones)
        if size is None or k is None:
            return None
        regions = {(True, 0): "i>=j", (True, -1): "i>j", (False, 0): "j>=i", (False, 1): "j>i"}
        region = regions.get((lower, k))
        return Triangle(region, size) if region else None

    def _ones_size(self, expr: cst.BaseExpression | None) -> str | None:
        if not isinstance(expr, cst.Call) or not self.ctx.names.is_call(expr, "torch.ones"):
            return None
        dims = [a.value for a in expr.args if a.keyword is None]
        if len(dims) == 1 and isinstance(dims[0], (cst.Tuple, cst.List)):
            dims = [e.value for e in dims[0].elements]
        if len(dims) == 2 and self.ctx.code(dims[0]) == self.ctx.code(dims[1]):
            return self.ctx.code(dims[0])
        return None

    def _sliced(self, expr: cst.Subscript, at: cst.BaseStatement) -> Triangle | None:
        """`m[:, :, :T, :T]` keeps the triangle and makes it of side T."""
        elements = [e.slice for e in expr.slice]
        tail = elements[-2:]
        if len(tail) != 2 or not all(isinstance(s, cst.Slice) for s in elements):
            return None
        if any(s.lower or s.upper or s.step for s in elements[:-2]):
            return None
        if any(s.lower is not None or s.step is not None for s in tail):
            return None
        found = self.triangle(expr.value, at)
        if found is None:
            return None
        uppers = [None if s.upper is None else self.ctx.code(s.upper) for s in tail]
        if uppers[0] != uppers[1]:
            return None
        if uppers[0] is not None:
            found.size = uppers[0]
        return found

    def _compared(self, expr: cst.Comparison, at: cst.BaseStatement) -> Triangle | None:
        target = expr.comparisons[0]
        value = number_value(target.comparator)
        operator = type(target.operator)
        if value is not None:
            found = self.triangle(expr.left, at)
            if found is None:
                return None
            keeps = (operator is cst.Equal and value == 1) or (operator in (cst.NotEqual, cst.GreaterThan) and value == 0)
            if operator is cst.Equal and value == 0:
                found.region = _COMPLEMENT[found.region]
            elif not keeps:
                return None
            return found
        return self._arange_comparison(expr.left, operator, target.comparator, at)

    def _arange_comparison(self, left, operator, right, at) -> Triangle | None:
        sides = [self._index_vector(left, at), self._index_vector(right, at)]
        if None in sides or sides[0][1] != sides[1][1] or sides[0][0] == sides[1][0]:
            return None
        flipped = sides[0][0] == "j"  # normalise to "i OP j"
        symbols = {cst.GreaterThanEqual: "i>=j", cst.GreaterThan: "i>j",
                   cst.LessThan: "j>i", cst.LessThanEqual: "j>=i"}
        if operator not in symbols:
            return None
        region = symbols[operator]
        if flipped:
            region = {"i>=j": "j>=i", "i>j": "j>i", "j>i": "i>j", "j>=i": "i>=j"}[region]
        return Triangle(region, sides[0][1])

    def _index_vector(self, expr: cst.BaseExpression, at: cst.BaseStatement) -> tuple[str, str] | None:
        """`arange(T)[:, None]` -> ("i", "T"); `arange(T)[None, :]` or `arange(T)` -> ("j", "T")."""
        axis = "j"
        if isinstance(expr, cst.Subscript) and len(expr.slice) == 2:
            first = expr.slice[0].slice
            axis = "i" if isinstance(first, cst.Slice) else "j"
            expr = expr.value
        elif method_call(expr, "unsqueeze") is not None:
            axis = "i" if int_value(expr.args[0].value) in (1, -1) else "j"
            expr = expr.func.value
        peeked = self.shapes.peek(expr, at)
        if peeked is not None:
            expr = peeked[0]
        if not isinstance(expr, cst.Call) or not self.ctx.names.is_call(expr, "torch.arange"):
            return None
        stops = [a.value for a in expr.args if a.keyword is None]
        return (axis, self.ctx.code(stops[0])) if len(stops) == 1 else None

    def _inverted(self, expr: cst.BaseExpression) -> cst.BaseExpression | None:
        if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.BitInvert):
            return expr.expression
        receiver = method_call(expr, "logical_not")
        if receiver is not None:
            return receiver
        if isinstance(expr, cst.Call) and self.ctx.names.is_call(expr, "torch.logical_not"):
            return expr.args[0].value
        return None

    def additive_causal(self, expr: cst.BaseExpression, at: cst.BaseStatement) -> Triangle | None:
        """A float mask with -inf strictly above the diagonal and 0 elsewhere."""
        if isinstance(expr, cst.Call) and self.ctx.names.is_call(
                expr, "torch.nn.Transformer.generate_square_subsequent_mask"):
            size = argument(expr, 0, "sz")
            return Triangle("j>i", self.ctx.code(size)) if size is not None else None
        if isinstance(expr, cst.Name):
            peeked = self.shapes.flow.definition(expr.value, at) if self.shapes.flow.contains(at) else None
            if isinstance(peeked, Binding) and not self.shapes.flow.mutation_between(expr.value, peeked.statement, at):
                found = self.additive_causal(peeked.value, peeked.statement)
                if found:
                    found.bindings.append(peeked)
                return found
        return None


def _buffer_changed(ctx, cls, name: str) -> bool:
    """`self.<name>[...] = ...`, `self.<name>.fill_(...)` or `self.<name> = ...` anywhere in the
    class: the registered value no longer says what the buffer holds."""
    for ref in cls.self_references(name):
        node, parent = ref, ctx.parents.get(ref)
        while isinstance(parent, (cst.Subscript, cst.Attribute)) and parent.value is node:
            if isinstance(parent, cst.Attribute) and parent.attr.value.endswith("_") \
                    and not parent.attr.value.startswith("_") and isinstance(ctx.parents.get(parent), cst.Call):
                return True  # an in-place method
            node, parent = parent, ctx.parents.get(parent)
        if isinstance(parent, (cst.AssignTarget, cst.AugAssign, cst.AnnAssign)) and parent.target is node:
            return True
    return False


def allowed(ctx, hidden: cst.BaseExpression) -> str:
    """Code for SDPA's boolean mask (True = may attend) from a masked_fill condition."""
    if isinstance(hidden, cst.Comparison) and len(hidden.comparisons) == 1:
        target = hidden.comparisons[0]
        negated = _NEGATED.get(type(target.operator))
        if negated:
            return f"{ctx.code(hidden.left)} {negated} {ctx.code(target.comparator)}"
    if isinstance(hidden, cst.UnaryOperation) and isinstance(hidden.operator, cst.BitInvert):
        return ctx.code(hidden.expression)  # masked_fill demands bool, so `~m` hid where m was False
    receiver = method_call(hidden, "bool")
    if receiver is not None:
        return f"{atom_code(ctx, receiver)} == 0"
    return f"{atom_code(ctx, hidden)}.logical_not()"
