"""One walk of a module that answers the whole-module questions rules ask, by look-up.

Searching the module once per class or per candidate made a file's cost grow with the square of
its size. The index records each node's place in source order (pre-order) and the extent of its
subtree, so "the nodes of these types below X" is a slice of a per-type list, for any X of the
module; it also keeps parents, the innermost enclosing def/class/lambda, names and attributes by
their identifier, and calls by the plain name they call.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Callable, Iterable

import libcst as cst

from tf_migrate.analysis.nodes import children, remember

_SCOPES = (cst.FunctionDef, cst.ClassDef, cst.Lambda)
_SCOPE_TYPES = frozenset(_SCOPES)
_COMPREHENSIONS = (cst.ListComp, cst.SetComp, cst.GeneratorExp, cst.DictComp)
# Subtrees this small are walked again rather than copied (a copy has a fixed cost of its own).
_SMALLEST_COPY = 6


class NodeIndex:
    def __init__(self, root: cst.CSTNode, earlier: "NodeIndex | None" = None) -> None:
        """`earlier`: the index of a version of the file that this one was rewritten from. A fix
        keeps the subtrees it does not change, and each is copied from there as a block (positions
        shifted) instead of being walked again."""
        self.facts: dict[str, dict[int, object]] = {}  # per kind, node id -> answer (`nodes.cached`)
        self._comprehensions: list[int] | None = None
        self._build(root, earlier if earlier is not None and not earlier.shared else None)
        # A node object in two places (a fix reused it): one position per id cannot say where it is.
        self.shared = len(self._position) != len(self._nodes)
        if self.shared:
            self._build_shared(root)
        else:
            self.parents: Mapping[cst.CSTNode, cst.CSTNode] = _Parents(self)
            remember(self)
        self._group()

    def _build(self, root: cst.CSTNode, earlier: "NodeIndex | None") -> None:
        """The source-order list of the nodes, with each one's parent, innermost def/class/lambda
        and subtree end; unchanged subtrees of `earlier` are copied as blocks."""
        # id(node) -> its position: the index keeps its nodes alive, so no other object has their ids,
        # and `id` spares libcst's Python-level `__hash__` on every look-up
        self._position: dict[int, int] = {}
        self._nodes: list[cst.CSTNode] = []
        self._parent: list[int] = []  # per position: the position of its parent here, or -1
        self._scope: list[int] = []  # per position: the innermost def/class/lambda at or above it, or -1
        self._end: list[int] = []  # per position: one past the last position of its subtree
        position, nodes, parents, scopes, ends = self._position, self._nodes, self._parent, self._scope, self._end
        reused = earlier._position if earlier is not None else None
        stack: list[tuple[cst.CSTNode | None, int, int]] = [(root, -1, -1)]
        while stack:
            node, scope, parent = stack.pop()
            if node is None:  # the subtree that started at position `scope` is complete
                ends[scope] = len(nodes)
                continue
            if reused is not None:
                start = reused.get(id(node))
                if start is not None and earlier._end[start] - start >= _SMALLEST_COPY:
                    self._copy(earlier, start, scope, parent)
                    continue
            at = len(nodes)
            position[id(node)] = at
            nodes.append(node)
            parents.append(parent)
            ends.append(at + 1)
            if type(node) in _SCOPE_TYPES:  # libcst's node classes have no subclasses: the type decides
                scope = at
            scopes.append(scope)
            below = children(node)
            if below:
                stack.append((None, at, -1))
                stack.extend([(child, scope, at) for child in reversed(below)])

    def _copy(self, earlier: "NodeIndex", start: int, scope: int, parent: int) -> None:
        """Append the subtree at `earlier`'s position `start` under the def/class/lambda at position
        `scope` and the parent at position `parent` here."""
        end = earlier._end[start]
        at = len(self._nodes)
        shift = at - start
        block = earlier._nodes[start:end]
        self._nodes.extend(block)
        self._position.update(zip(map(id, block), range(at, at + len(block))))
        self._parent.extend([q + shift if q >= start else parent for q in earlier._parent[start:end]])
        self._end.extend([e + shift for e in earlier._end[start:end]])
        self._scope.extend([s + shift if s >= start else scope for s in earlier._scope[start:end]])

    def _group(self) -> None:
        """Positions by node type."""
        self._by_type: dict[type, list[int]] = {}
        by_type = self._by_type
        for at, kind in enumerate(map(type, self._nodes)):
            found = by_type.get(kind)
            if found is None:
                by_type[kind] = [at]
            else:
                found.append(at)

    # Names, attributes and plain-name calls by their identifier: grouped on the first question
    # (many versions of a file are asked none of them).

    @cached_property
    def _names(self) -> dict[str, list[int]]:
        return self._grouped(cst.Name, lambda node: node.value)

    @cached_property
    def _attributes(self) -> dict[str, list[int]]:
        return self._grouped(cst.Attribute, lambda node: node.attr.value)

    @cached_property
    def _calls(self) -> dict[str, list[int]]:
        return self._grouped(cst.Call, lambda node: node.func.value if type(node.func) is cst.Name else None)

    def _grouped(self, kind: type, key: Callable[[cst.CSTNode], str | None]) -> dict[str, list[int]]:
        """The positions of the nodes of `kind` by `key` of the node (None: left out)."""
        found: dict[str, list[int]] = {}
        nodes = self._nodes
        for at in self._by_type.get(kind, ()):
            name = key(nodes[at])
            if name is not None:
                found.setdefault(name, []).append(at)
        return found

    def _build_shared(self, root: cst.CSTNode) -> None:
        """The plain walk of a tree where some node sits in two places: each place gets a position
        (a node's id names the last), and the node keeps its first parent, as `nodes.parent_map`
        gives it."""
        self.parents = {}
        self._position, self._nodes, self._parent, self._scope, self._end = {}, [], [], [], []
        stack: list[tuple[cst.CSTNode | None, int, int]] = [(root, -1, -1)]
        while stack:
            node, scope, parent = stack.pop()
            if node is None:
                self._end[scope] = len(self._nodes)
                continue
            at = len(self._nodes)
            self._position[id(node)] = at
            self._nodes.append(node)
            self._parent.append(parent)
            self._end.append(at + 1)
            if type(node) in _SCOPE_TYPES:
                scope = at
            self._scope.append(scope)
            below = children(node)
            for child in below:
                self.parents.setdefault(child, node)
            stack.append((None, at, -1))
            stack.extend((child, scope, at) for child in reversed(below))

    def __contains__(self, node: object) -> bool:
        return id(node) in self._position

    def comprehensions(self) -> list[int]:
        """The positions of every list/set/dict comprehension and generator expression, in order."""
        if self._comprehensions is None:
            self._comprehensions = sorted(at for kind in _COMPREHENSIONS for at in self._by_type.get(kind, ()))
        return self._comprehensions

    def position(self, node: cst.CSTNode) -> int:
        """The node's place in source order (pre-order), for sorting what the look-ups return."""
        return self._position[id(node)]

    def of_type(self, within: cst.CSTNode, kinds: type | tuple[type, ...], into_scopes: bool = True,
                predicate: Callable[[cst.CSTNode], bool] | None = None) -> list[cst.CSTNode]:
        """Nodes of `kinds` (exact types) at or below `within`, in source order, as `nodes.find`
        with an isinstance test would give them; without nested defs/classes/lambdas unless asked."""
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        lists = [self._by_type.get(kind, ()) for kind in kinds]
        return self._select(within, lists, into_scopes, predicate)

    def names(self, within: cst.CSTNode, value: str) -> list[cst.Name]:
        """Every `Name` spelled `value` at or below `within` (loads, stores, attribute names alike)."""
        return self._select(within, [self._names.get(value, ())], True, None)

    def attributes(self, within: cst.CSTNode, attr: str) -> list[cst.Attribute]:
        """Every `<expr>.<attr>` at or below `within`."""
        return self._select(within, [self._attributes.get(attr, ())], True, None)

    def calls_of(self, within: cst.CSTNode, name: str) -> list[cst.Call]:
        """Every `name(...)` call (a plain name as the callee) at or below `within`."""
        return self._select(within, [self._calls.get(name, ())], True, None)

    def below(self, within: cst.CSTNode, into_scopes: bool = True) -> list[cst.CSTNode]:
        """`within` and every node below it in source order, as `nodes.walk` yields them."""
        start = self._position[id(within)]
        end = self._end[start]
        if into_scopes:
            return self._nodes[start:end]
        scope = self._scope
        return [self._nodes[at] for at in range(start, end) if scope[at] <= start]

    def enclosing(self, node: cst.CSTNode, kind: type) -> cst.CSTNode | None:
        """The innermost `kind` (FunctionDef, ClassDef or Lambda) strictly above `node`."""
        at = self._scope[self._position[id(node)]]
        if at == self._position[id(node)]:
            at = self._scope[self._position[id(self.parents[node])]] if node in self.parents else -1
        while at >= 0:
            if isinstance(self._nodes[at], kind):
                return self._nodes[at]
            parent = self.parents.get(self._nodes[at])
            at = self._scope[self._position[id(parent)]] if parent is not None else -1
        return None

    def _select(self, within: cst.CSTNode, lists: Iterable, into_scopes: bool,
                predicate: Callable[[cst.CSTNode], bool] | None) -> list:
        start = self._position[id(within)]
        end = self._end[start]
        found: list[int] = []
        for positions in lists:
            found.extend(positions[bisect_left(positions, start):bisect_left(positions, end)])
        if len(lists) > 1:
            found.sort()
        if not into_scopes:  # drop what lies in a def/class/lambda strictly below `within`
            found = [at for at in found if self._scope[at] <= start]
        nodes = [self._nodes[at] for at in found]
        return nodes if predicate is None else [node for node in nodes if predicate(node)]


class _Parents(Mapping):
    """Node -> its parent, read from the index's positions: no dict of every node (each insert a
    call of libcst's Python-level `__hash__`) is built per version of the file."""

    __slots__ = ("_position", "_parent", "_nodes", "_index")

    def __init__(self, index: NodeIndex) -> None:
        self._position, self._parent, self._nodes = index._position, index._parent, index._nodes
        self._index = weakref.ref(index)  # the index holds these parents: a strong reference is a cycle

    @property
    def index(self) -> NodeIndex | None:
        """The index these parents are read from (one position per node), while it lives."""
        return self._index()

    def get(self, node: object, default: object = None) -> object:
        at = self._position.get(id(node))
        if at is None:
            return default
        at = self._parent[at]
        return default if at < 0 else self._nodes[at]

    def __getitem__(self, node: object) -> cst.CSTNode:
        at = self._position.get(id(node))
        if at is None or self._parent[at] < 0:
            raise KeyError(node)
        return self._nodes[self._parent[at]]

    def __contains__(self, node: object) -> bool:
        at = self._position.get(id(node))
        return at is not None and self._parent[at] >= 0

    def __iter__(self) -> Iterator[cst.CSTNode]:
        parent = self._parent
        return (node for at, node in enumerate(self._nodes) if parent[at] >= 0)

    def __len__(self) -> int:
        # Only the root has no parent (-1): `_build` and `_copy` give every other position its
        # parent's. Asked once per fix (`parents or {}`): a count of the list was a pass per version.
        return len(self._parent) - 1
