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
