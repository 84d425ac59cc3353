"""Facts about tensor shapes that can be read off the code of one method.

Where a tensor comes from (through reshapes and projections), its rank after a `view`, and
whether a length was read off a given tensor. Each answer is "proven" or None; never a guess.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.dataflow import Binding, FunctionFlow, OpaqueBinding
from tf_migrate.analysis.names import argument, int_value, method_call, number_value, self_attribute

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

# Methods that keep a tensor's sequence dimension (and its length) where it was.
_LENGTH_KEEPING = ("view", "reshape", "transpose", "permute", "contiguous", "split", "chunk",
                   "unbind", "unsqueeze", "float", "half", "bfloat16", "to", "type_as", "clone")
_LENGTH_KEEPING_MODULES = ("torch.nn.Linear", "torch.nn.Dropout", "torch.nn.LayerNorm",
                           "torch.nn.Identity")
# Module-level helpers other rules insert that keep their first argument's shape (TFM401's rotary).
_SHAPE_KEEPING_HELPERS = ("apply_rotary",)


class Shapes:
    def __init__(self, ctx: "FileContext", cls: "ModuleClass", flow: FunctionFlow) -> None:
        self.ctx, self.cls, self.flow = ctx, cls, flow

    def kept_argument(self, expr: cst.BaseExpression) -> cst.BaseExpression | None:
        """x in `apply_rotary(x, ...)`, when this file defines that helper at module level."""
        if not (isinstance(expr, cst.Call) and isinstance(expr.func, cst.Name) and expr.args
                and expr.func.value in _SHAPE_KEEPING_HELPERS and expr.args[0].keyword is None):
            return None
        defined = any(isinstance(s, cst.FunctionDef) and s.name.value == expr.func.value
                      for s in self.ctx.module.body)
        return expr.args[0].value if defined else None

    def peek(self, expr: cst.BaseExpression, at: cst.BaseStatement, unpack: bool = True
             ) -> tuple[cst.BaseExpression, cst.BaseStatement] | None:
        """The expression a local name was bound to.

        With `unpack`, also the right-hand side of a tuple unpacking that binds it (whose shape
        is not the name's shape: only for questions about origin, not rank).
        """
        if not isinstance(expr, cst.Name) or not self.flow.contains(at):
            return None
        found = self.flow.definition(expr.value, at)
        if isinstance(found, Binding):
            return found.value, found.statement
        if unpack and isinstance(found, OpaqueBinding) and isinstance(found.statement, cst.SimpleStatementLine):
            small = found.statement.body[0]
            if isinstance(small, cst.Assign) and len(small.targets) == 1:
                target = small.targets[0].target
                if isinstance(target, (cst.Tuple, cst.List)):
                    names = [getattr(e.value, "value", None) for e in target.elements]
                    if names.count(expr.value) == 1:
                        value = small.value
                        if isinstance(value, (cst.Tuple, cst.List)) and len(value.elements) == len(names):
                            value = value.elements[names.index(expr.value)].value
                        return value, found.statement
        return None

    def root(self, expr: cst.BaseExpression, at: cst.BaseStatement) -> str:
        """A key for the tensor an expression was computed from without changing its length.

        Two expressions have the same key only when they are computed from the same binding (or
        parameter, or expression node) through length-keeping steps alone.
        """
        for _ in range(50):
            step = self._through(expr, at)
            if step is None:
                break
            expr, at = step
        if isinstance(expr, cst.Name) and self.flow.contains(at):
            definition = self.flow.definition(expr.value, at)
            if definition is None:
                return f"param:{expr.value}"
            return f"binding:{id(definition.statement)}"
        return f"node:{id(expr)}"

    def _through(self, expr: cst.BaseExpression, at: cst.BaseStatement):
        peeked = self.peek(expr, at)
        if peeked is not None:
            return peeked
        receiver = method_call(expr, *_LENGTH_KEEPING) or self.kept_argument(expr)
        if receiver is not None:
            return receiver, at
        if isinstance(expr, cst.Subscript) and len(expr.slice) == 1:
            if int_value(getattr(expr.slice[0].slice, "value", None)) is not None:
                return expr.value, at  # qkv[0]
        if isinstance(expr, cst.Call):
            if self.cls.submodule_of(expr.func, *_LENGTH_KEEPING_MODULES) and expr.args:
                return expr.args[0].value, at
            passed = self._helper_argument(expr)
            if passed is not None:
                return passed, at
            if self.ctx.names.is_call(expr, "torch.einsum", "torch.nn.functional.linear"):
                tensors = [a.value for a in expr.args[1:] if self_attribute(a.value) is None]
                if self.ctx.names.is_call(expr, "torch.nn.functional.linear"):
                    tensors = [expr.args[0].value]
                if len(tensors) == 1:
                    return tensors[0], at
        if (isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.MatrixMultiply)
                and self_attribute(expr.right) is not None):
            return expr.left, at
        return None

    def _helper_argument(self, call: cst.Call) -> cst.BaseExpression | None:
        """For `self.helper(x)` whose body only reshapes its argument: x."""
        name = self_attribute(call.func)
        helper = self.cls.methods.get(name or "")
        if helper is None or helper is self.flow.function or len(call.args) != 1 or call.args[0].keyword:
            return None
        params = helper.params.params
        body = helper.body.body if isinstance(helper.body, cst.IndentedBlock) else ()
        returns = [s for s in body if isinstance(s, cst.SimpleStatementLine)
                   and isinstance(s.body[0], cst.Return)]
        if len(params) != 2 or len(returns) != 1 or returns[0] is not body[-1]:
            return None
        returned = returns[0].body[0].value
        inner = Shapes(self.ctx, self.cls, FunctionFlow(self.ctx, helper))
        if returned is not None and inner.root(returned, returns[0]) == f"param:{params[1].name.value}":
            return call.args[0].value
        return None

    def rank(self, expr: cst.BaseExpression, at: cst.BaseStatement) -> int | None:
        """The rank proven by the `view`/`reshape` that produced a tensor, if any."""
        for _ in range(50):
            peeked = self.peek(expr, at, unpack=False)
            if peeked is not None:
                expr, at = peeked
                continue
            receiver = method_call(expr, "view", "reshape")
            if receiver is not None and isinstance(expr, cst.Call):
                if len(expr.args) == 1 and isinstance(expr.args[0].value, (cst.Tuple, cst.List)):
                    return len(expr.args[0].value.elements)
                if len(expr.args) == 1 and int_value(expr.args[0].value) is None:
                    return None  # `view(new_shape)`: a shape held in a variable, of unknown length
                if all(arg.keyword is None and not arg.star for arg in expr.args):
                    return len(expr.args)
                return None
            receiver = method_call(expr, "transpose", "contiguous", "permute") or self.kept_argument(expr)
            if receiver is None:
                return None
            expr = receiver
        return None

    def last_dim(self, expr: cst.BaseExpression, at: cst.BaseStatement) -> str | None:
        """Code of the size given to the last dimension by the `view` that made `expr`."""
        for _ in range(50):
            peeked = self.peek(expr, at, unpack=False)
            if peeked is not None:
                expr, at = peeked
                continue
            if method_call(expr, "view", "reshape") is not None and isinstance(expr, cst.Call):
                return self.ctx.code(expr.args[-1].value) if expr.args else None
            transposed = method_call(expr, "transpose")
            if transposed is not None and isinstance(expr, cst.Call):
                dims = [int_value(argument(expr, i, "dim" + str(i))) for i in (0, 1)]
                rank = self.rank(transposed, at)
                if None in dims or rank is None or (rank - 1) in [d % rank for d in dims]:
                    return None
                expr = transposed
                continue
            kept = method_call(expr, "contiguous") or self.kept_argument(expr)
            if kept is None:
                return None
            expr = kept
        return None

    def length_of(self, size: cst.BaseExpression, at: cst.BaseStatement,
                  tensors: list[tuple[cst.BaseExpression, cst.BaseStatement]]) -> bool:
        """Whether `size` is a non-last dimension read off one of `tensors` (or their root)."""
        read = self._size_read(size, at)
        if read is None or read[2] in (None, -1):
            return False
        tensor, statement, _ = read
        return self.root(tensor, statement) in {self.root(t, s) for t, s in tensors}

    def _size_read(self, size: cst.BaseExpression, at: cst.BaseStatement):
        """`x.size(1)`, `x.shape[1]`, or a name bound by `B, T, C = x.size()` -> (x, at, 1)."""
        receiver = method_call(size, "size")
        if receiver is not None and isinstance(size, cst.Call) and len(size.args) == 1:
            return receiver, at, int_value(size.args[0].value)
        if isinstance(size, cst.Subscript) and isinstance(size.value, cst.Attribute):
            if size.value.attr.value == "shape" and len(size.slice) == 1:
                return size.value.value, at, int_value(getattr(size.slice[0].slice, "value", None))
        if not isinstance(size, cst.Name) or not self.flow.contains(at):
            return None
        definition = self.flow.definition(size.value, at)
        if isinstance(definition, Binding):
            return self._size_read(definition.value, definition.statement)
        if isinstance(definition, OpaqueBinding) and isinstance(definition.statement, cst.SimpleStatementLine):
            small = definition.statement.body[0]
            target = small.targets[0].target if isinstance(small, cst.Assign) else None
            if isinstance(target, (cst.Tuple, cst.List)) and not any(
                    isinstance(e, cst.StarredElement) for e in target.elements):  # `*batch, T, C = ...`
                names = [getattr(e.value, "value", None) for e in target.elements]
                value = small.value
                source = method_call(value, "size")
                if source is None and isinstance(value, cst.Attribute) and value.attr.value == "shape":
                    source = value.value
                if source is not None and names.count(size.value) == 1:
                    index = names.index(size.value)
                    return source, definition.statement, -1 if index == len(names) - 1 else index
        return None

    def is_number(self, expr: cst.BaseExpression, at: cst.BaseStatement, depth: int = 0) -> bool:
        """Whether an expression is provably a Python number (not a tensor)."""
        if depth > 20:
            return False
        if number_value(expr) is not None:
            return True
        if isinstance(expr, cst.BinaryOperation):
            return self.is_number(expr.left, at, depth + 1) and self.is_number(expr.right, at, depth + 1)
        if isinstance(expr, cst.UnaryOperation):
            return self.is_number(expr.expression, at, depth + 1)
        if method_call(expr, "size") is not None:
            return bool(expr.args)
        if isinstance(expr, cst.Subscript) and isinstance(expr.value, cst.Attribute):
            return expr.value.attr.value == "shape"
        if isinstance(expr, (cst.BooleanOperation, cst.IfExp)):
            branches = [expr.left, expr.right] if isinstance(expr, cst.BooleanOperation) else [expr.body, expr.orelse]
            return all(self.is_number(b, at, depth + 1) for b in branches)
        if isinstance(expr, cst.Call):
            callee = self.ctx.names.callee(expr) or self.ctx.names.builtin(expr.func) or ""
            if callee.startswith("math.") or callee in ("builtins.int", "builtins.float"):
                return True  # these return Python numbers whatever they are given
            return callee.startswith("numpy.") and all(self.is_number(a.value, at, depth + 1) for a in expr.args)
        attribute = self_attribute(expr)
        if attribute is not None:
            return self._number_attribute(attribute, depth)
        if isinstance(expr, cst.Name) and self.flow.contains(at):
            definition = self.flow.definition(expr.value, at)
            if isinstance(definition, Binding):
                return self.is_number(definition.value, definition.statement, depth + 1)
            if isinstance(definition, OpaqueBinding) and self._size_read(expr, at) is not None:
                return True  # `B, T, C = x.shape`: sizes are Python ints
            # Constructor arguments are configuration (sizes, rates), taken as numbers.
            return definition is None and self.flow.function.name.value == "__init__"
        return False

    def _number_attribute(self, name: str, depth: int) -> bool:
        """`self.scale = <number>` made once, unconditionally, in `__init__` (`math.sqrt(d)` and
        `np.sqrt(d)` are calls, so the class lists them among its submodules: the value decides)."""
        cls = self.cls
        init = cls.methods.get("__init__")
        if name in cls.buffers or init is None:
            return False
        init_shapes = Shapes(self.ctx, cls, FunctionFlow(self.ctx, init))
        assignments = list(_assignments_to_self(init, name))
        return len(assignments) == 1 and assignments[0] is not None and init_shapes.is_number(
            assignments[0][0], assignments[0][1], depth + 1)


def _assignments_to_self(init: cst.FunctionDef, name: str):
    """`self.<name> = value` statements of `__init__`; None for one nested in a block."""
    body = init.body.body if isinstance(init.body, cst.IndentedBlock) else ()
    for statement in body:
        small = statement.body[0] if isinstance(statement, cst.SimpleStatementLine) else None
        if isinstance(small, cst.Assign) and len(small.targets) == 1 and len(statement.body) == 1:
            if self_attribute(small.targets[0].target) == name:
                yield small.value, statement
                continue
        if any(self_attribute(t) == name for t in _assigned(statement)):
            yield None


def _assigned(statement: cst.CSTNode) -> list[cst.BaseExpression]:
    found: list[cst.BaseExpression] = []

    class _Targets(cst.CSTVisitor):
        def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
            found.append(node.target)

        def visit_AugAssign(self, node: cst.AugAssign) -> None:
            found.append(node.target)

        def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
            found.append(node.target)

    statement.visit(_Targets())
    return found
