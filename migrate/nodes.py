"""Small generic walks over libcst trees, shared so rules don't each write a visitor."""

from __future__ import annotations

from typing import Callable, Iterator

import libcst as cst

_SCOPES = (cst.FunctionDef, cst.ClassDef, cst.Lambda)


def walk(node: cst.CSTNode, into_scopes: bool = True) -> Iterator[cst.CSTNode]:
    """`node` and every node below it, in source order; nested defs/lambdas only if asked."""
    yield node
    for child in node.children:
        if into_scopes or not isinstance(child, _SCOPES):
            yield from walk(child, into_scopes)


def find(node: cst.CSTNode, predicate: Callable[[cst.CSTNode], bool],
         into_scopes: bool = True) -> list[cst.CSTNode]:
    return [n for n in walk(node, into_scopes) if predicate(n)]


def body_nodes(function: cst.FunctionDef) -> Iterator[cst.CSTNode]:
    """The nodes of a function's own body, without nested functions, classes or lambdas."""
    return walk(function.body, into_scopes=False)
