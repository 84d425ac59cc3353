"""Name resolution on top of the lazy scope analysis in `scopes`.

`F.softmax`, `torch.nn.functional.softmax` and `from torch.nn.functional import softmax as sm`
all resolve to `torch.nn.functional.softmax`; a local function called `softmax` resolves to nothing.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.nodes import PerNode
from tf_migrate.analysis.scopes import Scopes, Source

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext

# Canonical spellings: the same function reachable under several module paths.
_ALIASES = {
    "torch.nn.modules.module.Module": "torch.nn.Module",
    "torch.functional.einsum": "torch.einsum",
    "torch.special.softmax": "torch.softmax",
    "torch.nn.modules.dropout.Dropout": "torch.nn.Dropout",
    "torch.nn.modules.activation.Softmax": "torch.nn.Softmax",
    "torch.nn.modules.linear.Linear": "torch.nn.Linear",
}


def canonical(qualified: str) -> str:
    return _ALIASES.get(qualified, qualified)


class NameResolver:
    def __init__(self, scopes: Scopes) -> None:
        self._scopes = scopes
        # id(node) -> (node, answer): the same nodes are asked about again and again (three in four
        # questions on a large file); holding the node keeps its id from naming another object.
        self._imported = PerNode()
        self._module_level = PerNode()

    def imported(self, node: cst.CSTNode) -> str | None:
        """The fully qualified name of an expression that refers to something imported, else None.

        Ambiguous names (imported and also bound locally) resolve to None.
        """
        return self._imported.answer(node, self._imported_name)

    def _imported_name(self, node: cst.CSTNode) -> str | None:
        names = self._scopes.resolve(node)
        if len(names) != 1:
            return None
        (name,) = names
        if name.source is not Source.IMPORT:
            return None
        return canonical(name.name)

    def module_level(self, node: cst.CSTNode) -> bool:
        """Whether a Name (or `a.b.c`'s `a`) reads a module-level binding of the file (remembered
        per node, as `imported`)."""
        return self._module_level.answer(node, self._module_level_binding)

    def _module_level_binding(self, node: cst.CSTNode) -> bool:
        scope = self._scopes.binding_scope(node)
        return scope is not None and scope is self._scopes.module

    def builtin(self, node: cst.CSTNode) -> str | None:
        names = self._scopes.resolve(node)
        if len(names) == 1 and next(iter(names)).source is Source.BUILTIN:
            return next(iter(names)).name
        return None

    def callee(self, node: cst.CSTNode) -> str | None:
        if isinstance(node, cst.Call):
            return self.imported(node.func)
        return None

    def is_call(self, node: cst.CSTNode, *names: str) -> bool:
        """`callee(node) in names`, resolving only the callees that can be one of them. A dotted
        callee (`F.relu`, `torch.nn.functional.relu`) resolves to its first name's binding followed
        by the rest, so it ends with its attribute (`_ALIASES` keep the last part); a callee that is
        neither a name nor a dotted chain resolves to nothing. Only a plain name can stand for
        anything (`from torch import softmax as sm`)."""
        if not isinstance(node, cst.Call):
            return False
        func = node.func
        if type(func) is cst.Attribute:
            if func.attr.value not in _last_parts(names):
                return False
        elif type(func) is not cst.Name:
            return False
        return self.imported(func) in names


def may_call(ctx: "FileContext", *names: str) -> bool:
    """Whether a call of the file can resolve to one of `names` at all: a callee resolves to an
    imported name only through an import or an attribute chain that spells its last part (the
    canonical spellings keep it), so a text spelling none of them has no such call. Answered once
    per file version."""
    parts = _last_parts(names)
    return ctx.memo(("names.may_call", parts), lambda: any(part in ctx.text for part in parts))


@lru_cache(maxsize=None)
def _last_parts(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(name.rsplit(".", 1)[-1] for name in names)


def method_call(node: cst.CSTNode, *methods: str) -> cst.BaseExpression | None:
    """The receiver of `receiver.method(...)` when the call is a method call on a value."""
    if (
        isinstance(node, cst.Call)
        and isinstance(node.func, cst.Attribute)
        and node.func.attr.value in methods
    ):
        return node.func.value
    return None


def self_attribute(node: cst.CSTNode) -> str | None:
    """`self.name` -> "name"."""
    # Types compared directly (libcst's node classes have no subclasses): asked of every node of
    # many searches, `isinstance` through ABCMeta was most of its cost.
    if type(node) is cst.Attribute and type(node.value) is cst.Name and node.value.value == "self":
        return node.attr.value
    return None


def argument(call: cst.Call, position: int, keyword: str) -> cst.BaseExpression | None:
    """The argument passed by keyword or at a position (counting positional args only)."""
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == keyword:
            return arg.value
    positional = [arg for arg in call.args if arg.keyword is None and not arg.star]
    if position < len(positional):
        return positional[position].value
    return None


def int_value(node: cst.CSTNode | None) -> int | None:
    """The value of an integer literal, including a unary minus."""
    if isinstance(node, cst.Integer):
        return int(node.value, 0)
    if (
        isinstance(node, cst.UnaryOperation)
        and isinstance(node.operator, cst.Minus)
        and isinstance(node.expression, cst.Integer)
    ):
        return -int(node.expression.value, 0)
    return None


def number_value(node: cst.CSTNode | None) -> float | None:
    if isinstance(node, (cst.Integer, cst.Float)):
        return float(node.value.replace("_", ""))
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus):
        inner = number_value(node.expression)
        return None if inner is None else -inner
    return None
