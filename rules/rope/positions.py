"""Recognition of sinusoidal absolute position tables and of where they meet the token embeddings.

    table = sin/cos(arange(T)[:, None] * inv_freq)   (a registered buffer, or computed in a method)
    x = embed(tokens) + table[:T]                     (inline, or inside a PositionalEncoding module)

A table counts only when it is built from `arange` positions with a 10000-style base and sin plus
cos (or the single-sin `sin(a + pi/2 * k)` form), and is added unscaled. Relative-distance
tables, tables scaled by a learned factor and timestep embeddings (built from a tensor argument)
are not absolute token positions and are not recognised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import libcst as cst

from tf_migrate.analysis.dataflow import read_names
from tf_migrate.analysis.names import method_call, number_value, self_attribute
from tf_migrate.analysis.nodes import find_types, walk

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

_WRAPPERS = ("requires_grad_", "detach", "to", "type_as", "clone", "float")
_SHAPE_READS = ("device", "dtype", "shape", "size")


@dataclass
class Table:
    """A sinusoidal table: the statements that build it (removed with it), and its buffer."""

    function: cst.FunctionDef
    statements: list[cst.SimpleStatementLine]
    buffer: str | None = None  # the registered buffer's name, when the table is one


@dataclass
class Addition:
    """`other + table` (either order) in a method of `cls`."""

    cls: "ModuleClass"
    method: cst.FunctionDef
    node: cst.BinaryOperation
    statement: cst.SimpleStatementLine
    other: cst.BaseExpression
    table: Table


def file_additions(ctx: "FileContext") -> list[Addition]:
    """Every addition of the file, found once per file version (the rule's check asks twice)."""
    return ctx.memo("rope.additions", lambda: list(find_additions(ctx)))


def find_additions(ctx: "FileContext") -> Iterator[Addition]:
    for cls in ctx.module_classes:
        for method in cls.methods.values():
            for node in find_types(method.body, cst.BinaryOperation, into_scopes=False):
                if not isinstance(node.operator, cst.Add):
                    continue
                for table_side, other in ((node.right, node.left), (node.left, node.right)):
                    table = _table_of(ctx, cls, method, table_side)
                    if table is not None:
                        statement = _statement(ctx, node)
                        if statement is not None:
                            yield Addition(cls, method, node, statement, other, table)
                        break


def _statement(ctx: "FileContext", node: cst.CSTNode) -> cst.SimpleStatementLine | None:
    current = node
    while current is not None and not isinstance(current, cst.SimpleStatementLine):
        current = ctx.parents.get(current)
    return current


def _unwrap(ctx: "FileContext", expr: cst.BaseExpression) -> cst.BaseExpression:
    """`self.pe[:, :T].requires_grad_(False)`, `Variable(self.pe[...])` -> `self.pe`."""
    while True:
        receiver = method_call(expr, *_WRAPPERS)
        if receiver is not None:
            expr = receiver
        elif isinstance(expr, cst.Call) and expr.args and (ctx.names.callee(expr) or "").endswith(".Variable"):
            expr = expr.args[0].value
        elif isinstance(expr, cst.Subscript) and all(_positional(e.slice) for e in expr.slice):
            expr = expr.value
        else:
            return expr


def _positional(index: cst.BaseSlice) -> bool:
    """`[:T]`, `[start:start + T]`, `[0]`, `[None]`, `[...]` read rows in position order; a tensor
    index (`table[t]` with diffusion timesteps, `table[positions]`) looks rows up by value."""
    if isinstance(index, cst.Slice):
        return True
    value = index.value
    return isinstance(value, (cst.Integer, cst.Ellipsis)) or (
        isinstance(value, cst.Name) and value.value == "None")


def _table_of(ctx, cls, method, expr) -> Table | None:
    base = _unwrap(ctx, expr)
    buffer = self_attribute(base)
    if buffer is not None and buffer in cls.buffers and "__init__" in cls.methods:
        init = cls.methods["__init__"]
        registration = cls.buffers[buffer].statement
        statements = table_statements(init, registration, cls.buffers[buffer].value)
        if statements is not None and is_sinusoid(ctx, init, [*statements, registration], tensor_params=False):
            return Table(init, [*statements, registration], buffer)
    if isinstance(base, cst.Name):
        statement = _statement(ctx, expr)
        statements = table_statements(method, statement, base)
        if statements and is_sinusoid(ctx, method, statements, tensor_params=True):
            return Table(method, statements)
    return None


def _top_level(function: cst.FunctionDef) -> list[cst.BaseStatement]:
    return list(function.body.body) if isinstance(function.body, cst.IndentedBlock) else []


def _defines(statement: cst.BaseStatement) -> set[str] | None:
    """Names a simple `name = ...` / `name[...] = ...` / `name op= ...` statement binds; else None."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    small = statement.body[0]
    if isinstance(small, cst.Assign) and len(small.targets) == 1:
        target = small.targets[0].target
    elif isinstance(small, cst.AugAssign):
        target = small.target
    else:
        return None
    if isinstance(target, cst.Subscript):
        target = target.value
    return {target.value} if isinstance(target, cst.Name) else None


def table_statements(function, user: cst.CSTNode | None, seed: cst.CSTNode) -> list | None:
    """Top-level statements of `function` that only feed `seed` (read at statement `user`).

    A name is removable when every statement that binds or reads it is itself removable; the
    result is the largest such set, in source order. None when `user` is not a top-level statement.
    """
    body = _top_level(function)
    if user not in body:
        return None
    reads: dict[int, set[str]] = {}  # each statement's names, read once (the shrink asks per name)

    def read(statement) -> set[str]:
        if id(statement) not in reads:
            reads[id(statement)] = read_names(statement)
        return reads[id(statement)]

    names = read_names(seed) - {"self"}
    while True:  # grow: everything the seed names are computed from
        more = set(names)
        for statement in body[:body.index(user)]:
            if (_defines(statement) or set()) & names:
                more |= read(statement) - {"self"}
        if more == names:
            break
        names = more
    while True:  # shrink: drop names that something else binds or reads
        chosen = [s for s in body if s is not user and (_defines(s) or {""}) <= names]
        chosen_ids = {id(s) for s in chosen}
        keep = {n for n in names if all(
            id(s) in chosen_ids or (n not in read(s) and n not in (_defines(s) or set()))
            for s in body if s is not user)}
        if keep == names:
            return chosen
        names = keep


def is_sinusoid(ctx: "FileContext", function, statements, tensor_params: bool) -> bool:
    """sin with cos (or a pi/2 phase), of arange positions, with a 10000 base; no tensor argument read."""
    nodes = [n for s in statements for n in walk(s)]
    callees = {_function_name(ctx, n) for n in nodes if isinstance(n, cst.Call)}
    has_phase = any(isinstance(n, cst.Attribute) and n.attr.value == "pi" for n in nodes)
    has_base = any(number_value(n) in (10000.0,) for n in nodes if isinstance(n, (cst.Integer, cst.Float)))
    if not ("sin" in callees and ("cos" in callees or has_phase) and "arange" in callees and has_base):
        return False
    return not (tensor_params and _reads_tensor_argument(ctx, function, nodes))


def _function_name(ctx: "FileContext", call: cst.Call) -> str:
    name = ctx.names.callee(call) or ""
    if name.startswith("torch.") or name.startswith("numpy."):
        return name.rsplit(".", 1)[-1]
    if isinstance(call.func, cst.Attribute) and not name:
        return call.func.attr.value  # `angles.sin()`
    return ""


def _reads_tensor_argument(ctx: "FileContext", function, nodes) -> bool:
    """A method argument used as a value (timesteps, positions passed in), not for its size."""
    params = {p.name.value for p in function.params.params} - {"self"}
    for node in nodes:
        if isinstance(node, cst.Name) and node.value in params:
            parent = ctx.parents.get(node)
            if not (isinstance(parent, cst.Attribute) and parent.value is node and parent.attr.value in _SHAPE_READS):
                return True
    return False
