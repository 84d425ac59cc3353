"""Def-use facts inside one function body.

Enough flow analysis for rewriting straight-line tensor code: which statement last bound a local
name before a point (following `if guard: x = ...` without else), and every place a binding can
be read from. `x op= y` and an in-place `x.masked_fill_(c, v)` statement count as rebinding `x`. When the code is more tangled than that (loops that rebind, tuple targets, `with
... as`), the answer is an `OpaqueBinding`, and rules treat the name as an opaque leaf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Union

import libcst as cst

from tf_migrate.analysis.nodes import body_nodes, cached, children, index_holding, visit

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext

_AUGMENTED = {
    cst.AddAssign: cst.Add, cst.SubtractAssign: cst.Subtract, cst.MultiplyAssign: cst.Multiply,
    cst.DivideAssign: cst.Divide, cst.MatrixMultiplyAssign: cst.MatrixMultiply,
}


@dataclass(frozen=True, eq=False)
class Binding:
    """`name = value` (or `name op= value`) alone on its line."""

    name: str
    value: cst.BaseExpression
    statement: cst.SimpleStatementLine


@dataclass(frozen=True, eq=False)
class GuardedBinding:
    """`if test: name = value` with no else: `binding` when `test` holds, `previous` otherwise."""

    name: str
    test: cst.BaseExpression
    binding: Binding
    statement: cst.If
    previous: "Definition | None"


@dataclass(frozen=True, eq=False)
class OpaqueBinding:
    """A binding this analysis does not look through."""

    name: str
    statement: cst.BaseStatement


Definition = Union[Binding, GuardedBinding, OpaqueBinding]
_Place = tuple[tuple[cst.BaseStatement, ...], int, cst.CSTNode]


# What `loads` reads of each node type that holds targets, keywords or nested bindings (the rest
# is read whole): (field, is a target) in source order. A target binds plain names; subscripts and
# attributes in it read their base.
_LOAD_PARTS: dict[type, tuple[tuple[str, bool], ...]] = {
    cst.Attribute: (("value", False),),
    cst.Arg: (("value", False),),
    cst.NamedExpr: (("value", False),),
    cst.AssignTarget: (("target", True),),
    cst.AnnAssign: (("target", True), ("annotation", False), ("value", False)),
    cst.For: (("target", True), ("iter", False), ("body", False), ("orelse", False)),
    cst.CompFor: (("target", True), ("iter", False), ("ifs", False), ("inner_for_in", False)),
    cst.Param: (("default", False),),
    cst.FunctionDef: (("params", False), ("body", False)),
    cst.ClassDef: (("body", False),),
    cst.AsName: (), cst.Import: (), cst.ImportFrom: (), cst.Global: (), cst.Nonlocal: (),
}


class _Binds(cst.CSTVisitor):
    """Whether a statement binds `name` anywhere in this scope."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.found = False
        self.bound: set[str] = set()  # every name it binds, whatever `name` is

    def _check(self, target: cst.CSTNode | None) -> None:
        if isinstance(target, cst.Name):
            self.bound.add(target.value)
            if target.value == self.name:
                self.found = True
        elif isinstance(target, (cst.Tuple, cst.List)):
            for element in target.elements:
                self._check(element.value)
        elif isinstance(target, cst.StarredElement):
            self._check(target.value)

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        self._check(node.target)

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        self._check(node.target)

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        self._check(node.target)

    def visit_Expr(self, node: cst.Expr) -> None:
        if _in_place_fill(node.value) is not None:
            self._check(node.value.func.value)

    def visit_For(self, node: cst.For) -> None:
        self._check(node.target)

    def visit_AsName(self, node: cst.AsName) -> None:
        self._check(node.name)

    def visit_NamedExpr(self, node: cst.NamedExpr) -> None:
        self._check(node.target)

    def visit_ExceptHandler(self, node: cst.ExceptHandler) -> None:
        if node.name is not None:
            self._check(node.name.name)

    def visit_Del(self, node: cst.Del) -> None:
        self._check(node.target)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self._check(node.name)
        return False

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        self._check(node.name)
        return False

    def visit_Lambda(self, node: cst.Lambda) -> bool:
        return False

    def visit_CompFor(self, node: cst.CompFor) -> bool:
        return False


def loads(node: cst.CSTNode, name: str | None) -> list[cst.Name]:
    """The `Name` nodes that read `name` (not targets, attribute names or keywords), in source
    order; with `name=None`, every read name. Imports, `global`/`nonlocal` and `as` names read
    nothing; a def reads its parameters' defaults and its body, a class its body."""
    found: list[cst.Name] = []
    stack: list[tuple[cst.CSTNode, bool]] = [(node, False)]
    while stack:
        current, target = stack.pop()
        kind = type(current)  # libcst's node classes have no subclasses: the type decides
        if target:
            if kind is cst.Tuple or kind is cst.List:
                stack.extend([(element.value, True) for element in reversed(current.elements)])
            elif kind is cst.StarredElement:
                stack.append((current.value, True))
            elif kind is not cst.Name:
                stack.append((current, False))
            continue
        if kind is cst.Name:
            if name is None or current.value == name:
                found.append(current)
            continue
        parts = _LOAD_PARTS.get(kind)
        if parts is None:
            stack.extend([(child, False) for child in reversed(children(current))])
            continue
        for field, is_target in reversed(parts):
            value = getattr(current, field)
            if type(value) is tuple or type(value) is list:
                stack.extend([(item, is_target) for item in reversed(value)])
            elif value is not None:
                stack.append((value, is_target))
    return found


def read_names(node: cst.CSTNode) -> set[str]:
    return {name.value for name in loads(node, None)}


def binds(node: cst.CSTNode, name: str) -> bool:
    return name in cached(node, "dataflow.binds", _bound_names)


def _bound_names(node: cst.CSTNode) -> frozenset[str]:
    """Every name `node` binds in its scope: one pass answers `binds` for any name. Read from the
    source-order list of a remembered index that holds `node`, else by a visit of `_Binds`."""
    index = index_holding(node)
    if index is not None:
        return _bound_names_indexed(node, index)
    visitor = _Binds("")
    visit(node, visitor)
    return frozenset(visitor.bound)


# What `_Binds` reads as a target, per node type; the subtrees it does not enter.
_BOUND_TARGETS = {cst.AssignTarget: "target", cst.AnnAssign: "target", cst.AugAssign: "target",
                  cst.For: "target", cst.NamedExpr: "target", cst.Del: "target", cst.AsName: "name"}
_UNBOUND_SUBTREES = frozenset((cst.Lambda, cst.CompFor))


def _bound_names_indexed(node: cst.CSTNode, index) -> frozenset[str]:
    """`_Binds`' answer from the index's positions: a def or class binds its name and is skipped
    as a block, so are lambdas and comprehension loops."""
    binds = _Binds("")
    nodes, ends = index._nodes, index._end
    at = index._position[id(node)]
    stop = ends[at]
    while at < stop:
        current = nodes[at]
        kind = type(current)  # libcst's node classes have no subclasses: the type decides
        if kind is cst.FunctionDef or kind is cst.ClassDef:
            binds._check(current.name)
            at = ends[at]
            continue
        if kind in _UNBOUND_SUBTREES:
            at = ends[at]
            continue
        field = _BOUND_TARGETS.get(kind)
        if field is not None:
            binds._check(getattr(current, field))
        elif kind is cst.ExceptHandler:
            if current.name is not None:
                binds._check(current.name.name)
        elif kind is cst.Expr and _in_place_fill(current.value) is not None:
            binds._check(current.value.func.value)
        at += 1
    return frozenset(binds.bound)


def _blocks(node: cst.CSTNode) -> Iterator[cst.IndentedBlock]:
    """The indented blocks directly owned by a compound statement (elif/else/except included)."""
    for child in children(node):
        if isinstance(child, cst.IndentedBlock):
            yield child
        elif isinstance(child, (cst.If, cst.Else, cst.ExceptHandler, cst.ExceptStarHandler,
                                cst.Finally, cst.MatchCase)):
            yield from _blocks(child)


def _places(function: cst.FunctionDef) -> dict[cst.CSTNode, _Place]:
    """Every statement of the function's blocks (nested defs' own bodies not included): its
    block's statements, its position there and the statement (or function) owning the block."""
    where: dict[cst.CSTNode, _Place] = {}
    if isinstance(function.body, cst.IndentedBlock):
        _place_block(where, function.body, function)
    return where


def _place_block(where: dict[cst.CSTNode, _Place], block: cst.IndentedBlock, owner: cst.CSTNode) -> None:
    statements = tuple(block.body)
    for position, statement in enumerate(statements):
        where[statement] = (statements, position, owner)
        if isinstance(statement, (cst.FunctionDef, cst.ClassDef)):
            continue
        for inner in _blocks(statement):
            _place_block(where, inner, statement)


class FunctionFlow:
    def __init__(self, ctx: "FileContext", function: cst.FunctionDef, chained: bool = False) -> None:
        """`chained`: read `a = b = value` as a binding of each name to `value` (by default such
        a statement is an `OpaqueBinding`; a rule that rewrites it must keep every target)."""
        self.ctx = ctx
        self.function = function
        self.chained = chained
        # statement -> its block, place and owner: read from the function's own subtree, so kept
        # beside the remembered index (carried across fixes that leave the function unchanged)
        self._where: dict[cst.CSTNode, _Place] = cached(function, "dataflow.places", _places)

    def statement_of(self, node: cst.CSTNode) -> cst.BaseStatement | None:
        """The innermost statement of this function that contains `node`."""
        current: cst.CSTNode | None = node
        while current is not None and current not in self._where:
            current = self.ctx.parents.get(current)
        return current  # type: ignore[return-value]

    def contains(self, statement: cst.CSTNode) -> bool:
        return statement in self._where

    def definition(self, name: str, at: cst.BaseStatement) -> Definition | None:
        """The binding of `name` that reaches the start of statement `at` (None: a parameter)."""
        block, position, owner = self._where[at]
        for previous in reversed(block[:position]):
            found = self._definition_in(name, previous)
            if found is not None:
                return found
        if owner is self.function:
            return None
        if not isinstance(owner, cst.If) and binds(owner, name):
            return OpaqueBinding(name, owner)  # loop-carried, or bound by `with ... as`
        return self.definition(name, owner)

    def _definition_in(self, name: str, statement: cst.BaseStatement) -> Definition | None:
        if not binds(statement, name):
            return None
        if isinstance(statement, cst.SimpleStatementLine):
            return _simple_binding(name, statement) or (self.chained and chained_binding(name, statement)) \
                or OpaqueBinding(name, statement)
        if (
            isinstance(statement, cst.If) and statement.orelse is None
            and isinstance(statement.body, cst.IndentedBlock) and len(statement.body.body) == 1
            and isinstance(statement.body.body[0], cst.SimpleStatementLine)
        ):
            inner = _simple_binding(name, statement.body.body[0])
            if inner is not None:
                previous = self.definition(name, statement)
                return GuardedBinding(name, statement.test, inner, statement, previous)
        return OpaqueBinding(name, statement)

    def block_binding(self, name: str, statement: cst.BaseStatement) -> Binding | None:
        """In `if test: <statements>` without else, where the definition analysis stops: the one
        statement of the block that binds `name`, when it is a plain binding directly in the block
        and no other statement there binds `name`."""
        if not (isinstance(statement, cst.If) and statement.orelse is None
                and isinstance(statement.body, cst.IndentedBlock)):
            return None
        binding = [child for child in statement.body.body if binds(child, name)]
        if len(binding) != 1:
            return None
        return _simple_binding(name, binding[0])

    def mutation_between(self, name: str, start: cst.BaseStatement, end: cst.BaseStatement) -> cst.CSTNode | None:
        """A node after `start` and before `end` (source order) that changes the tensor `name` holds
        in place without rebinding it: `name.mul_(...)` (torch's trailing-underscore methods) or
        `name[...] = ...`. Moving a read of `name` across it would read the changed values."""
        after, before = self.ctx.lines(start).stop, self.ctx.line(end)
        for node in body_nodes(self.function):
            if _mutates(node, name) and after <= self.ctx.line(node) < before:
                return node
        return None

    def uses(self, binding: Binding) -> list[cst.Name]:
        """Every read that `binding` may reach (conservative around loops)."""
        name = binding.name
        found: list[cst.Name] = []
        block, position, owner = self._where[binding.statement]
        while True:
            for statement in block[position + 1:]:
                found.extend(loads(statement, name))
                if _simple_binding(name, statement) is not None or (
                        self.chained and chained_binding(name, statement) is not None):
                    return found
            if owner is self.function:
                return found
            if isinstance(owner, (cst.For, cst.While)):
                inside = set(map(id, loads(binding.statement, name)))
                found.extend(n for n in loads(owner, name) if id(n) not in inside)
            block, position, owner = self._where[owner]



def _simple_binding(name: str, statement: cst.CSTNode) -> Binding | None:
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    small = statement.body[0]
    if isinstance(small, cst.Assign) and len(small.targets) == 1:
        target = small.targets[0].target
        if isinstance(target, cst.Name) and target.value == name:
            return Binding(name, small.value, statement)
    elif isinstance(small, cst.AnnAssign) and small.value is not None:
        if isinstance(small.target, cst.Name) and small.target.value == name:
            return Binding(name, small.value, statement)
    elif isinstance(small, cst.AugAssign) and type(small.operator) in _AUGMENTED:
        if isinstance(small.target, cst.Name) and small.target.value == name:
            operator = _AUGMENTED[type(small.operator)]()
            # The target node itself stands for the old value, so uses() and the chain agree.
            return Binding(name, cst.BinaryOperation(small.target, operator, small.value), statement)
    elif isinstance(small, cst.Expr) and _is_name(_in_place_fill(small.value), name):
        # `x.masked_fill_(c, v)` alone on its line is `x = x.masked_fill(c, v)`; as above, the
        # receiver node stands for the old value.
        call = small.value
        return Binding(name, call.with_changes(func=call.func.with_changes(attr=cst.Name("masked_fill"))), statement)
    return None


def chained_binding(name: str, statement: cst.CSTNode) -> Binding | None:
    """`a = b = value` alone on its line (every target a plain name): `name` is bound to `value`,
    as every other target is."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    small = statement.body[0]
    if isinstance(small, cst.Assign) and len(small.targets) > 1 \
            and all(isinstance(t.target, cst.Name) for t in small.targets) \
            and name in {t.target.value for t in small.targets}:
        return Binding(name, small.value, statement)
    return None


def _in_place_fill(node: cst.CSTNode) -> cst.BaseExpression | None:
    """The receiver of `receiver.masked_fill_(condition, value)`, else None."""
    if (isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute)
            and node.func.attr.value == "masked_fill_" and len(node.args) == 2
            and not any(a.star or a.keyword for a in node.args)):
        return node.func.value
    return None


def _mutates(node: cst.CSTNode, name: str) -> bool:
    kind = type(node)  # asked of every node of a body: types compared directly, not through ABCMeta
    if kind is cst.Call and type(node.func) is cst.Attribute:
        method = node.func.attr.value
        return (_is_name(node.func.value, name) and method.endswith("_")
                and not method.startswith("_"))
    if kind is not cst.AssignTarget and kind is not cst.AugAssign:
        return False
    target = type(node.target)
    return (target is cst.Subscript or target is cst.Attribute) and _is_name(node.target.value, name)


def _is_name(node: cst.CSTNode, name: str) -> bool:
    return type(node) is cst.Name and node.value == name
