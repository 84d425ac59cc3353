"""Small generic walks over libcst trees, shared so rules don't each write a visitor."""

from __future__ import annotations

import ast
import inspect
import textwrap
from functools import lru_cache
from operator import attrgetter
from typing import Callable, Iterator, Sequence

import libcst as cst

_SCOPES = (cst.FunctionDef, cst.ClassDef, cst.Lambda)


@lru_cache(maxsize=None)
def _child_fields(kind: type) -> Callable[[cst.CSTNode], tuple]:
    """The fields of a node type in the order libcst visits them, which is source order.

    Read once per type from the type's own `_visit_and_replace_children`: libcst's `children`
    property runs a visitor for every call, several times slower than reading the fields."""
    source = textwrap.dedent(inspect.getsource(kind._visit_and_replace_children))
    fields: list[str] = []
    for call in ast.walk(ast.parse(source)):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id.startswith("visit_") and isinstance(call.args[1], ast.Constant)
                and call.args[1].value not in fields):
            fields.append(call.args[1].value)
    if not fields:
        return lambda node: ()
    read = attrgetter(*fields)
    return read if len(fields) > 1 else (lambda node: (read(node),))


# Type -> whether it is a libcst node. `isinstance` against libcst's abstract base classes goes
# through `ABCMeta.__instancecheck__`, a Python-level call: a dict look-up per value is cheaper.
_IS_NODE: dict[type, bool] = {}


def _is_node(value: object) -> bool:
    kind = type(value)
    known = _IS_NODE.get(kind)
    if known is None:
        known = _IS_NODE[kind] = isinstance(value, cst.CSTNode)
    return known


def children(node: cst.CSTNode) -> Sequence[cst.CSTNode]:
    """The same nodes, in the same order, as libcst's `node.children`."""
    found: list[cst.CSTNode] = []
    known = _IS_NODE  # `_is_node` inlined: this runs for every node of every walk
    for value in _child_fields(type(node))(node):
        kind = type(value)
        if kind is tuple or kind is list:
            for item in value:
                if known.get(type(item)) or (type(item) not in known and _is_node(item)):
                    found.append(item)
        elif known.get(kind) or (kind not in known and _is_node(value)):
            found.append(value)
        elif isinstance(value, (tuple, list)):
            found.extend([item for item in value if _is_node(item)])
    return found


def parent_map(root: cst.CSTNode) -> dict[cst.CSTNode, cst.CSTNode]:
    parents: dict[cst.CSTNode, cst.CSTNode] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        for child in children(node):
            parents[child] = node
            stack.append(child)
    return parents


# The latest per-file indexes (analysis/index.py) of trees where no node sits in two places: a
# subtree of one of them is a slice of its source-order list. libcst nodes never change, so an
# index stays true of every node it holds, also once a fix has built a new module around them.
_INDEXES: list = []


def remember(index) -> None:
    """Let `walk` answer from `index` (a `NodeIndex` whose tree shares no node object)."""
    _INDEXES.insert(0, index)
    del _INDEXES[4:]


def index_holding(node: cst.CSTNode):
    """The newest remembered `NodeIndex` that holds `node`, or None (then: walk the subtree)."""
    for index in _INDEXES:
        if node in index:
            return index
    return None


def cached(node: cst.CSTNode, kind: str, compute: Callable[[cst.CSTNode], object]) -> object:
    """`compute(node)`, remembered beside the remembered index that holds `node` (libcst nodes never
    change, so the answer holds as long as the node lives): a fact asked of one statement again
    and again (by every later statement's look back) is computed once. `compute` must read only
    the subtree of `node`: a fix keeps the nodes it does not change, so an answer found beside an
    earlier version's index is carried to the newest index holding the node."""
    key = id(node)  # the index keeps the node alive; `id` spares libcst's Python `__hash__`
    newest = None
    for index in _INDEXES:
        if node in index:
            store = index.facts.get(kind)
            if store is not None and key in store:
                if newest is not None:
                    newest.facts.setdefault(kind, {})[key] = store[key]
                return store[key]
            if newest is None:
                newest = index
    if newest is None:
        return compute(node)
    answer = newest.facts.setdefault(kind, {})[key] = compute(node)
    return answer


class PerNode:
    """One answer per node object (or any object asked about), computed when first asked: keyed by
    `id` (libcst's `__hash__` is a Python call), the object kept beside its answer so that a
    recycled id is never taken for it.

    An object that remembers answers of its own method asks with `answer(node, self._method)`:
    holding the bound method would make a reference cycle through the object, freed only by the
    cycle collector (with the version of the file it holds)."""

    __slots__ = ("_compute", "_known")

    def __init__(self, compute: Callable[[cst.CSTNode], object] | None = None) -> None:
        self._compute = compute
        self._known: dict[int, tuple[cst.CSTNode, object]] = {}

    def __call__(self, node: cst.CSTNode) -> object:
        return self.answer(node, self._compute)

    def answer(self, node: cst.CSTNode, compute: Callable[[cst.CSTNode], object]) -> object:
        known = self._known.get(id(node))
        if known is not None and known[0] is node:
            return known[1]
        answer = compute(node)
        self._known[id(node)] = (node, answer)
        return answer


def walk(node: cst.CSTNode, into_scopes: bool = True) -> Iterator[cst.CSTNode]:
    """`node` and every node below it, in source order; nested defs/lambdas only if asked."""
    index = index_holding(node)
    return iter(index.below(node, into_scopes)) if index is not None else _walk(node, into_scopes)


def _walk(node: cst.CSTNode, into_scopes: bool) -> Iterator[cst.CSTNode]:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        below = children(current)
        if not into_scopes:
            below = [child for child in below if not isinstance(child, _SCOPES)]
        stack.extend(reversed(below))


@lru_cache(maxsize=None)
def _has_attribute_hooks(kind: type) -> bool:
    """Whether a visitor class defines `visit_<Type>_<field>` / `leave_<Type>_<field>` methods (node
    type names have no underscore: such a method's name has two). libcst's own base classes
    declare every one as a no-op."""
    return any(name.startswith(("visit_", "leave_")) and name.count("_") >= 2
               for cls in kind.__mro__ if not cls.__module__.startswith("libcst") for name in vars(cls))


def visit(node: cst.CSTNode, visitor: cst.CSTVisitor) -> None:
    """`node.visit(visitor)` for a read-only `CSTVisitor`: the same `on_visit` / `on_leave` calls,
    in the same order, without libcst rebuilding every node it passes through.

    A visitor with per-field hooks is handed to libcst's own walk."""
    if _has_attribute_hooks(type(visitor)):
        node.visit(visitor)
        return
    stack: list[tuple[cst.CSTNode, bool]] = [(node, False)]
    while stack:
        current, leaving = stack.pop()
        if leaving:
            visitor.on_leave(current)
            continue
        stack.append((current, True))
        if visitor.on_visit(current):
            stack.extend((child, False) for child in reversed(children(current)))


def find(node: cst.CSTNode, predicate: Callable[[cst.CSTNode], bool],
         into_scopes: bool = True) -> list[cst.CSTNode]:
    return [n for n in walk(node, into_scopes) if predicate(n)]


def find_types(node: cst.CSTNode, kinds: type | tuple[type, ...], into_scopes: bool = True) -> list[cst.CSTNode]:
    """`find(node, lambda n: isinstance(n, kinds))` for concrete node types (libcst's node classes
    have no subclasses: the type decides), answered from a remembered `NodeIndex` when one holds
    `node`: a slice of a per-type list instead of a test of every node below it."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    index = index_holding(node)
    if index is not None:
        return index.of_type(node, kinds, into_scopes)
    wanted = frozenset(kinds)
    return [n for n in _walk(node, into_scopes) if type(n) in wanted]


def atom_code(ctx, expr: cst.BaseExpression, numbers: bool = False) -> str:
    """An expression's code, parenthesised unless it is already atomic, so that an operator or a
    method call can follow it. Number literals count as atoms only where `numbers` says so (an
    arithmetic operand): `1.to(...)` would not parse."""
    atomic = (cst.Name, cst.Attribute, cst.Subscript, cst.Call) + ((cst.Integer, cst.Float) if numbers else ())
    code = ctx.code(expr)
    return code if isinstance(expr, atomic) or expr.lpar else f"({code})"


def body_nodes(function: cst.FunctionDef) -> Iterator[cst.CSTNode]:
    """The nodes of a function's own body, without nested functions, classes or lambdas."""
    return walk(function.body, into_scopes=False)
