"""A loose look at a product the attention matcher could not follow: is it still `softmax(q·k) @ v`?

`AttentionMatcher.match` says NotAttention whenever one step of the chain is spelled in a way it
does not know (a cast around the softmax, a head mask on the probabilities, `nn.Softmax(dim)(x)`
built inline). Staying silent there hides attention the user expects to see migrated, so the rule
asks this module whether a softmax sits between the product and an earlier product, and refuses.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable

import libcst as cst

from tf_migrate.analysis.dataflow import Binding, GuardedBinding, OpaqueBinding
from tf_migrate.analysis.names import method_call
from tf_migrate.analysis.nodes import find

if TYPE_CHECKING:
    from tf_migrate.analysis.attention import AttentionMatcher

_SOFTMAX = ("torch.nn.functional.softmax", "torch.softmax")
_BUDGET = 64  # expressions visited per walk: chains are short, and this bounds odd code


def unfollowed_softmax(matcher: "AttentionMatcher", product, statement) -> tuple[int, int] | None:
    """(softmax line, scores line) when the left operand of `product` reaches a softmax of another
    product through names and element-wise steps; None otherwise."""
    products = matcher.product
    left = products(product)[1]
    softmax = _walk(matcher, left, statement, lambda n: _is_softmax(matcher, n), products)
    if softmax is None:
        return None
    node, at = softmax
    scores = _walk(matcher, _softmax_input(matcher, node), at, lambda n: products(n) is not None, products)
    if scores is None:
        return None
    ctx = matcher.ctx
    return ctx.line(node) or ctx.line(at), ctx.line(scores[0]) or ctx.line(scores[1])


def _walk(matcher, expr, at, hit: Callable, products):
    """Nearest node satisfying `hit` reached from `expr` (breadth first: the chain's own steps come
    before the shapes and sizes its arguments read); products other than a hit are not entered."""
    flow, seen = matcher.flow, 0
    stack = deque([(expr, at)])
    while stack and seen < _BUDGET:
        node, at = stack.popleft()
        seen += 1
        if hit(node):
            return node, at
        if products(node) is not None:
            continue
        if isinstance(node, cst.Name):
            definition = flow.definition(node.value, at)
            if isinstance(definition, GuardedBinding):
                definition = definition.binding
            if isinstance(definition, Binding):
                stack.append((definition.value, definition.statement))
            elif isinstance(definition, OpaqueBinding):
                stack.extend(_assignments(flow, definition.statement, node.value))
            continue
        stack.extend((child, at) for child in _operands(node))
    return None


def _assignments(flow, statement, name: str) -> list:
    """`name = value` anywhere inside a block the flow analysis does not look through."""
    found = find(statement, lambda n: isinstance(n, cst.Assign) and any(
        isinstance(t.target, cst.Name) and t.target.value == name for t in n.targets))
    return [(a.value, flow.statement_of(a)) for a in found if flow.statement_of(a) is not None]


def _operands(node) -> list:
    if isinstance(node, cst.Call):
        inner = [node.func.value] if isinstance(node.func, cst.Attribute) else []
        return inner + [a.value for a in node.args]
    if isinstance(node, cst.BinaryOperation):
        return [node.left, node.right]
    if isinstance(node, cst.UnaryOperation):
        return [node.expression]
    if isinstance(node, (cst.Subscript, cst.Attribute)):
        return [node.value]
    return []


def _is_softmax(matcher, node) -> bool:
    if not isinstance(node, cst.Call) or not node.args:
        return False
    names = matcher.ctx.names
    if names.is_call(node, *_SOFTMAX) or matcher.cls.submodule_of(node.func, "torch.nn.Softmax"):
        return True
    if isinstance(node.func, cst.Call) and names.is_call(node.func, "torch.nn.Softmax"):
        return True  # nn.Softmax(dim=-1)(scores)
    receiver = method_call(node, "softmax")
    return receiver is not None and names.imported(node.func) is None


def _softmax_input(matcher, node: cst.Call):
    names = matcher.ctx.names
    if names.is_call(node, *_SOFTMAX) or isinstance(node.func, cst.Call) \
            or matcher.cls.submodule_of(node.func, "torch.nn.Softmax"):
        return node.args[0].value
    return method_call(node, "softmax")
