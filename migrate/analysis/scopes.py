"""Python scoping over a libcst tree, computed lazily: only the scopes a question reaches.

libcst's ScopeProvider analyses every scope of a file before the first question; on a large
file that is most of a run (14 s of distributed_test.py's 15 s), though rules only ask about names
inside a few `nn.Module` classes. Here a scope's bindings are collected the first time a name
is looked up in it, and a lookup reads the enclosing scopes the way Python does (class bodies are
skipped from nested functions, `global`/`nonlocal` redirect). Like libcst, the analysis is flow-
insensitive: every binding of a name anywhere in a scope counts, so a name imported once and also
assigned is ambiguous.
"""

from __future__ import annotations

import builtins
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterator, Mapping

import libcst as cst

from tf_migrate.analysis.nodes import cached, children, index_holding, walk

_COMPREHENSIONS = (cst.ListComp, cst.SetComp, cst.GeneratorExp, cst.DictComp)
# libcst's node classes have no subclasses: a type look-up in a set answers what `isinstance`
# answers, without a call through ABCMeta for each node.
_DEF_TYPES = frozenset((cst.FunctionDef, cst.ClassDef, cst.Lambda))
_COMPREHENSION_TYPES = frozenset(_COMPREHENSIONS)
_NESTED_TYPES = frozenset((cst.Lambda, *_COMPREHENSIONS))
_BUILTINS = frozenset(dir(builtins))
_DECLARATIONS = re.compile(r"\b(global|nonlocal)\b")


class Source(Enum):
    IMPORT = "import"
    BUILTIN = "builtin"
    LOCAL = "local"


@dataclass(frozen=True)
class Binding:
    name: str  # the qualified name for imports and builtins; the bound name for locals
    source: Source


@dataclass
class _Bindings:
    names: dict[str, set[Binding]] = field(default_factory=dict)
    globals: set[str] = field(default_factory=set)
    nonlocals: set[str] = field(default_factory=set)

    def add(self, name: str, binding: Binding) -> None:
        self.names.setdefault(name, set()).add(binding)

    def copy(self) -> "_Bindings":
        return _Bindings({name: set(found) for name, found in self.names.items()}, set(self.globals),
                         set(self.nonlocals))


class Scopes:
    def __init__(self, module: cst.Module, parents: Mapping[cst.CSTNode, cst.CSTNode], text: str) -> None:
        self.module = module
        self._parents = parents
        self._bindings: dict[cst.CSTNode, _Bindings] = {}
        # (id(scope), name) -> what `_lookup` found: the names of a method (`torch`, `F`, `self`)
        # are looked up again and again, each time through the same enclosing scopes. The scopes
        # are nodes of `module`, which this object keeps alive.
        self._found: dict[tuple[int, str], set[Binding]] = {}
        # the substrings first: on a file without either word no regex runs over the whole text
        self._declared = ("global" in text or "nonlocal" in text) and _DECLARATIONS.search(text) is not None
        # The index whose positions `parents` reads (one position per node), for `scope_of`.
        self._index = getattr(parents, "index", None)

    def resolve(self, node: cst.CSTNode) -> set[Binding]:
        """What a Name or a dotted Attribute chain (`torch.nn.Linear`) may refer to."""
        parts = _dotted(node)
        parent = self._parents.get(node)
        if parts is None or getattr(parent, "attr", None) is node or getattr(parent, "keyword", None) is node:
            return set()
        if isinstance(parent, (cst.Param, cst.FunctionDef, cst.ClassDef)) and parent.name is node:
            return {Binding(node.value, Source.LOCAL)}
        found = self._lookup(self.scope_of(node), parts[0])
        if len(parts) == 1:
            return set(found)  # the bindings themselves (frozen): a copy of the set, not of each
        suffix = "".join("." + part for part in parts[1:])
        return {Binding(b.name + suffix, b.source) for b in found}

    def scope_of(self, node: cst.CSTNode) -> cst.CSTNode:
        """The scope whose names `node` reads: decorators, defaults, bases and a comprehension's
        first iterable are evaluated in the scope around their def, class or comprehension."""
        index = self._index
        if index is not None:
            at = index._position.get(id(node))
            if at is not None:
                found = _indexed_scope(index, at)
                if found is not None:
                    return self.module if found < 0 else index._nodes[found]
        return self._walked_scope(node)

    def _walked_scope(self, node: cst.CSTNode) -> cst.CSTNode:
        path = [node]
        current = self._parents.get(node)
        while current is not None:
            child = path[-1]
            kind = type(current)
            if kind in _DEF_TYPES and child is current.body:
                return current
            if kind in _COMPREHENSION_TYPES and not (
                    child is current.for_in and len(path) > 1 and path[-2] is current.for_in.iter):
                return current
            path.append(current)
            current = self._parents.get(current)
        return self.module

    def binding_scope(self, node: cst.CSTNode) -> cst.CSTNode | None:
        """The scope whose binding of a Name (or a dotted chain's first name) `node` reads."""
        parts = _dotted(node)
        if parts is None:
            return None
        scope: cst.CSTNode | None = self.scope_of(node)
        while scope is not None:
            bindings = self.bindings(scope)
            if parts[0] in bindings.globals:
                return self.module
            if parts[0] in bindings.names and parts[0] not in bindings.nonlocals:
                return scope
            scope = self._enclosing(scope)
            while isinstance(scope, cst.ClassDef):
                scope = self._enclosing(scope)
        return None

    def _enclosing(self, scope: cst.CSTNode) -> cst.CSTNode | None:
        return None if scope is self.module else self.scope_of(scope)

    def _lookup(self, scope: cst.CSTNode, name: str) -> set[Binding]:
        """What `name` read in `scope` may refer to (callers copy, never change, the set)."""
        key = (id(scope), name)
        found = self._found.get(key)
        if found is None:
            found = self._found[key] = self._search(scope, name)
        return found

    def _search(self, scope: cst.CSTNode, name: str) -> set[Binding]:
        bindings = self.bindings(scope)
        if name in bindings.globals:
            return self._lookup(self.module, name)
        if name in bindings.names and name not in bindings.nonlocals:
            return bindings.names[name]
        outer = self._enclosing(scope)
        while isinstance(outer, cst.ClassDef):  # class bodies are not visible from nested scopes
            outer = self._enclosing(outer)
        if outer is not None:
            return self._lookup(outer, name)
        return {Binding(f"builtins.{name}", Source.BUILTIN)} if name in _BUILTINS else set()

    def bindings(self, scope: cst.CSTNode) -> _Bindings:
        if self.module not in self._bindings:
            self._bindings[self.module] = _collect(self.module)
            if self._declared:
                self._add_declared_elsewhere()
        if scope not in self._bindings:
            # What a scope binds is read from its own subtree: a scope a fix left unchanged keeps it.
            found = cached(scope, "scopes.bindings", _collect)
            # `global`/`nonlocal` add to the bindings of other scopes: those are this file's own.
            self._bindings[scope] = found.copy() if self._declared else found
        return self._bindings[scope]

    def _add_declared_elsewhere(self) -> None:
        """`global x` / `nonlocal x` in a nested function: its assignments bind x outside it."""
        for node in _statement_nodes(self.module):
            if not isinstance(node, (cst.Global, cst.Nonlocal)):
                continue
            function = self.scope_of(node)
            assigned = self.bindings(function).names
            target = self.module if isinstance(node, cst.Global) else self._enclosing(function)
            for item in node.names:
                for binding in assigned.get(item.name.value, ()):
                    if target is not None:
                        self.bindings(target).add(item.name.value, binding)


def _indexed_scope(index, at: int) -> int | None:
    """`scope_of` the node at position `at`, read from the index: the innermost def, class or
    lambda strictly above it (-1: the module) when no comprehension lies between and the node
    is in its body; None (walk the parents) otherwise: a decorator, default or base, or a
    comprehension on the way up."""
    parent = index._parent[at]
    scope = index._scope[parent] if parent >= 0 else -1
    comprehensions = index.comprehensions()
    after = bisect_right(comprehensions, scope)
    if after < len(comprehensions) and comprehensions[after] < at:
        return None  # a comprehension between them (perhaps around the node): walk
    if scope < 0:
        return -1
    body = index._position.get(id(index._nodes[scope].body))
    if body is None or not body <= at < index._end[body]:
        return None
    return scope


def _dotted(node: cst.CSTNode) -> list[str] | None:
    if isinstance(node, cst.Name):
        return [node.value]
    if isinstance(node, cst.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else inner + [node.attr.value]
    return None


def _statement_nodes(root: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node but those inside expressions (which hold no statements)."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in children(node) if not isinstance(child, cst.BaseExpression))


def _collect(scope: cst.CSTNode) -> _Bindings:
    """What `scope` binds: from the source-order list of a remembered index that holds it (nested
    defs, classes, lambdas and comprehensions skipped as blocks), else by a walk."""
    index = index_holding(scope)
    return _collect_indexed(scope, index) if index is not None else _collect_walk(scope)


def _roots(scope: cst.CSTNode, found: _Bindings, local) -> list[cst.CSTNode]:
    """The parts of `scope` whose nodes bind in it (a def's parameters are bound here)."""
    if isinstance(scope, (cst.FunctionDef, cst.Lambda)):
        for param in _params(scope.params):
            local(param.name.value)
        return [scope.body]
    if isinstance(scope, _COMPREHENSIONS):
        return _comprehension_parts(scope, local)
    if isinstance(scope, cst.ClassDef):
        return [scope.body]
    return [scope]


def _collect_indexed(scope: cst.CSTNode, index) -> _Bindings:
    found = _Bindings()
    local = lambda name: found.add(name, Binding(name, Source.LOCAL))  # noqa: E731
    nodes, ends, position = index._nodes, index._end, index._position
    for root in _roots(scope, found, local):
        at = position[id(root)]
        stop = ends[at]
        while at < stop:
            node = nodes[at]
            kind = type(node)
            if kind is cst.FunctionDef or kind is cst.ClassDef:
                local(node.name.value)
                at = ends[at]
                continue
            if kind in _NESTED_TYPES:  # only a walrus in it binds here
                for inner in range(at, ends[at]):
                    if type(nodes[inner]) is cst.NamedExpr:
                        _bind(nodes[inner], found, local)
                at = ends[at]
                continue
            _bind(node, found, local)
            at += 1
    return found


def _collect_walk(scope: cst.CSTNode) -> _Bindings:
    found = _Bindings()
    local = lambda name: found.add(name, Binding(name, Source.LOCAL))  # noqa: E731
    roots = _roots(scope, found, local)
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is cst.FunctionDef or kind is cst.ClassDef:
            local(node.name.value)
            continue
        if kind in _NESTED_TYPES:
            stack.extend(n for n in walk(node) if type(n) is cst.NamedExpr)  # walrus binds here
            continue
        _bind(node, found, local)
        stack.extend(children(node))
    return found


def _params(params: cst.Parameters) -> Iterator[cst.Param]:
    yield from params.posonly_params
    yield from params.params
    yield from params.kwonly_params
    for star in (params.star_arg, params.star_kwarg):
        if isinstance(star, cst.Param):
            yield star


def _comprehension_parts(node: cst.CSTNode, local) -> list[cst.CSTNode]:
    """Binds a comprehension's targets; returns what it evaluates in its own scope (all but the
    first iterable)."""
    parts: list[cst.CSTNode] = [node.key, node.value] if isinstance(node, cst.DictComp) else [node.elt]
    comp: cst.CompFor | None = node.for_in
    first = True
    while comp is not None:
        _target_names(comp.target, local)
        parts += [*comp.ifs] + ([] if first else [comp.iter])
        first, comp = False, comp.inner_for_in
    return parts


# The node types `_bind` reads (libcst's node classes have no subclasses): every other node of a
# scope is passed by one set look-up instead of fifteen `isinstance` tests through ABCMeta.
_BINDING_TYPES = frozenset((cst.Assign, cst.AugAssign, cst.AnnAssign, cst.NamedExpr, cst.For, cst.WithItem,
                            cst.ExceptHandler, cst.ExceptStarHandler, cst.MatchAs, cst.MatchStar,
                            cst.MatchMapping, cst.Import, cst.ImportFrom, cst.Global, cst.Nonlocal))


def _bind(node: cst.CSTNode, found: _Bindings, local) -> None:
    if type(node) not in _BINDING_TYPES:
        return
    if isinstance(node, cst.Assign):
        for target in node.targets:
            _target_names(target.target, local)
    elif isinstance(node, (cst.AugAssign, cst.AnnAssign, cst.NamedExpr, cst.For)):
        _target_names(node.target, local)
    elif isinstance(node, (cst.WithItem, cst.ExceptHandler, cst.ExceptStarHandler)):
        alias = node.asname if isinstance(node, cst.WithItem) else node.name
        if alias is not None:
            _target_names(alias.name, local)
    elif isinstance(node, (cst.MatchAs, cst.MatchStar)) and node.name is not None:
        local(node.name.value)
    elif isinstance(node, cst.MatchMapping) and node.rest is not None:
        local(node.rest.value)
    elif isinstance(node, cst.Import):
        for alias in node.names:
            dotted = _dotted(alias.name) or []
            if alias.asname is not None:
                _import(alias.asname.name, ".".join(dotted), found, local)
            else:
                found.add(dotted[0], Binding(dotted[0], Source.IMPORT))
    elif isinstance(node, cst.ImportFrom):
        _import_from(node, found, local)
    elif isinstance(node, cst.Global):
        found.globals.update(item.name.value for item in node.names)
    elif isinstance(node, cst.Nonlocal):
        found.nonlocals.update(item.name.value for item in node.names)


def _import(target: cst.BaseExpression, qualified: str, found: _Bindings, local) -> None:
    if isinstance(target, cst.Name):
        found.add(target.value, Binding(qualified, Source.IMPORT))
    else:
        _target_names(target, local)


def _import_from(node: cst.ImportFrom, found: _Bindings, local) -> None:
    if isinstance(node.names, cst.ImportStar):  # binds names nobody can see here, as for libcst
        return
    package = "." * len(node.relative) + ".".join(_dotted(node.module) or []) if node.module else "." * len(node.relative)
    for alias in node.names:
        name = alias.name.value if isinstance(alias.name, cst.Name) else ".".join(_dotted(alias.name) or [])
        qualified = f"{package}.{name}" if package and not package.endswith(".") else f"{package}{name}"
        bound = alias.asname.name if alias.asname is not None else cst.Name(name)
        _import(bound, qualified, found, local)


def _target_names(target: cst.CSTNode, local) -> None:
    if isinstance(target, cst.Name):
        local(target.value)
    elif isinstance(target, (cst.Tuple, cst.List)):
        for element in target.elements:
            _target_names(element.value, local)
    elif isinstance(target, cst.StarredElement):
        _target_names(target.value, local)
