"""A loose look at a product the attention matcher could not follow: is it still `softmax(q·k) @ v`?

`AttentionMatcher.match` says NotAttention whenever one step of the chain is spelled in a way it
does not know (a cast around the softmax, a head mask on the probabilities, `nn.Softmax(dim)(x)`
built inline). Staying silent there hides attention the user expects to see migrated, so the rule
asks this module whether a softmax sits between the product and an earlier product, and refuses.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import libcst as cst

from tf_migrate.analysis.dataflow import Binding, GuardedBinding, OpaqueBinding
from tf_migrate.analysis.names import method_call
from tf_migrate.analysis.nodes import find

if TYPE_CHECKING:
    from tf_migrate.analysis.attention import AttentionMatcher

_SOFTMAX = ("torch.nn.functional.softmax", "torch.softmax")
_BUDGET = 64  # expressions visited per walk: chains are short, and this bounds odd code


@dataclass
class Unfollowed:
    softmax_line: int
    scores_line: int
    step: str  # the one construct the matcher could not fold, with its line


def unfollowed_softmax(matcher: "AttentionMatcher", product, statement) -> Unfollowed | None:
    """The softmax and scores lines, and the step in between that blocks the rewrite, when the
    left operand of `product` reaches a softmax of another product through names and element-wise
    steps; None otherwise."""
    products = matcher.product
    left = products(product)[1]
    after = _walk(matcher, left, statement, lambda n: _is_softmax(matcher, n), products)
    if after is None:
        return None
    node, at = after[0]
    before = _walk(matcher, _softmax_input(matcher, node), at, lambda n: products(n) is not None, products)
    if before is None or any(_is_weight(matcher, operand) for operand in products(before[0][0])[1:3]):
        return None  # `x @ self.w_router`: a projection's logits, not scores (a router mixing experts)
    ctx = matcher.ctx
    softmax_line = ctx.line(node) or ctx.line(at)
    return Unfollowed(softmax_line, ctx.line(before[0][0]) or ctx.line(before[0][1]),
                      _blocking_step(matcher, node, softmax_line, after[1], before[1]))


def _walk(matcher, expr, at, hit: Callable, products):
    """((node, statement), path) of the nearest node satisfying `hit` reached from `expr` (breadth
    first: the chain's own steps come before the shapes and sizes its arguments read); products
    other than a hit are not entered. `path` lists the (node, statement) steps from `expr` on."""
    flow, seen = matcher.flow, 0
    stack = deque([(expr, at)])
    previous: dict[int, tuple] = {id(expr): None}
    while stack and seen < _BUDGET:
        node, at = stack.popleft()
        seen += 1
        if hit(node):
            path, step = [], (node, at)
            while step is not None:
                path.append(step)
                step = previous.get(id(step[0]))
            return (node, at), path[::-1]
        if products(node) is not None:
            continue
        if isinstance(node, cst.Name):
            definition = flow.definition(node.value, at)
            if isinstance(definition, GuardedBinding):
                definition = definition.binding
            if isinstance(definition, Binding):
                following = [(definition.value, definition.statement)]
            elif isinstance(definition, OpaqueBinding):
                following = _assignments(flow, definition.statement, node.value)
            else:
                following = []
        else:
            following = [(child, at) for child in _operands(node)]
        for child in following:
            previous.setdefault(id(child[0]), (node, at))
        stack.extend(following)
    return None


_CASTS = ("float", "half", "double", "bfloat16", "to", "type", "type_as")
_TENSOR_STEPS = ("masked_fill", "masked_fill_", "view", "reshape", "contiguous", "transpose", "permute",
                 "unsqueeze", "squeeze", "expand", "expand_as", "flatten")


def _blocking_step(matcher, softmax: cst.Call, softmax_line: int, after: list, before: list) -> str:
    """The one step between the scores and the product with v that the matcher did not fold."""
    ctx = matcher.ctx
    casts_out = [n for n, _ in after if method_call(n, *_CASTS) is not None]
    casts_in = [n for n, _ in before if method_call(n, *_CASTS) is not None]
    if _autograd_softmax(softmax):
        origin = ctx.names.imported(softmax.func.value)
        where = f", imported from `{origin.rsplit('.', 1)[0]}`" if origin and "." in origin else ""
        return (f"the softmax is the custom autograd function `{ctx.code(softmax.func)}(...)` (line "
                f"{softmax_line}{where}): tf-migrate cannot prove what it computes")
    if any(a.keyword is not None and a.keyword.value == "dtype" for a in softmax.args):
        casts_in.append(softmax)  # softmax(x, dtype=torch.float32) computes in float32
    if casts_out and casts_in:
        return (f"the softmax is computed in float32 and cast back (line {softmax_line}): SDPA would "
                "compute in the input dtype")
    if casts_in or casts_out:
        node = (casts_in + casts_out)[0]
        return (f"the {'scores are' if casts_in else 'probabilities are'} cast with "
                f"`{ctx.code(node)}` (line {ctx.line(node) or softmax_line}): SDPA computes in the "
                "input dtype")
    if isinstance(softmax.func, cst.Call):
        return (f"the softmax is built inline as `{ctx.code(softmax.func)}` (line {softmax_line}); "
                "tf-migrate reads a softmax function or an `nn.Softmax` submodule")
    dim = _softmax_dim(matcher, softmax)
    if dim is not None and dim != "-1":
        return (f"the softmax is over dim={dim} (line {softmax_line}), which tf-migrate cannot prove "
                "is the keys' axis")
    for node, at in after[1:-1]:
        if isinstance(node, cst.BinaryOperation) or method_call(node, "mul", "mul_", "div", "add") is not None:
            return (f"the probabilities are changed by `{ctx.code(node)}` (line {ctx.line(node) or ctx.line(at)}) "
                    "before the product with v")
        if isinstance(node, cst.Call) and method_call(node, *_TENSOR_STEPS) is None \
                and "drop" not in ctx.code(node.func).lower():
            return (f"the probabilities pass through `{ctx.code(node.func)}` (line "
                    f"{ctx.line(node) or ctx.line(at)}) before the product with v")
    for node, at in before[1:-1]:
        if isinstance(node, cst.Call) and method_call(node, *_TENSOR_STEPS) is None \
                and not matcher.ctx.names.is_call(node, "torch.where"):
            return (f"the scores pass through `{ctx.code(node.func)}` (line {ctx.line(node) or ctx.line(at)}) "
                    "before the softmax")
    block = _enclosing_block(matcher, softmax)
    if block is not None:
        kind = type(block).__name__.lower()
        return (f"the softmax (line {softmax_line}) is computed inside an `{kind}` block at line "
                f"{ctx.line(block)}; tf-migrate folds straight-line code and `if cond: scores = ...`")
    guarded = [at for _, at in before if isinstance(at, (cst.If, cst.For, cst.While, cst.With, cst.Try))]
    if guarded:
        return (f"the scores are changed inside a block at line {ctx.line(guarded[0])} that tf-migrate "
                "does not follow (only `if cond: scores = ...` with no else)")
    scores = before[-1][0]
    if isinstance(scores, cst.Call) and matcher.ctx.names.is_call(scores, "torch.baddbmm") and scores.args \
            and not any(a.keyword is not None and a.keyword.value == "beta" for a in scores.args):
        # the default beta=1: the first argument is added, not an allocation to ignore
        return (f"`torch.baddbmm` (line {ctx.line(scores) or ctx.line(before[-1][1])}) adds "
                f"`{ctx.code(scores.args[0].value)}` to the scores it computes, a bias this rule does not fold")
    return _negated(ctx, softmax_line, before) or _unusual_binding(ctx, softmax_line, after + before) or \
        "a step between them is spelled in a way tf-migrate cannot fold into SDPA"


def _negated(ctx, softmax_line: int, before: list) -> str | None:
    """`m - scores` (or `-scores`) on the way to the softmax: it weighs the keys by the opposite
    of the scores, which SDPA cannot express."""
    for i, (node, at) in enumerate(before[:-1]):
        following = before[i + 1][0]
        if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Subtract) \
                and node.right is following or isinstance(node, cst.UnaryOperation) \
                and isinstance(node.operator, cst.Minus) and node.expression is following:
            return (f"the softmax (line {softmax_line}) is taken of `{' '.join(ctx.code(node).split())}` "
                    f"(line {ctx.line(node) or ctx.line(at)}), which subtracts the scores: SDPA takes the "
                    "softmax of the scores themselves")
    return None


def _unusual_binding(ctx, softmax_line: int, steps: list) -> str | None:
    """A statement of the chain that binds a step by a chained assignment (`p = self.last = ...`),
    named with the other targets that also hold it; None when there is none."""
    for _, at in steps:
        if not isinstance(at, cst.SimpleStatementLine):
            continue
        for small in at.body:
            if isinstance(small, cst.Assign) and len(small.targets) > 1:
                stage = "probabilities" if ctx.line(at) >= softmax_line else "scores"
                first, *others = (ctx.code(t.target) for t in small.targets)
                return (f"the {stage} `{first}` are bound in the chained assignment "
                        f"`{' '.join(ctx.code(small).split()).rstrip('; ')}` (line {ctx.line(at)}): "
                        f"{', '.join(f'`{o}`' for o in others)} also holds them, and SDPA never materialises "
                        f"the {stage}")
    return None


def _is_weight(matcher, node) -> bool:
    """`self.w` built by nn.Parameter (also `.T`, `.t()`), or a module's `.weight`."""
    while True:
        if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.func.attr.value in ("t", "transpose"):
            node = node.func.value
        elif isinstance(node, cst.Attribute) and node.attr.value in ("T", "mT"):
            node = node.value
        else:
            break
    if isinstance(node, cst.Attribute) and node.attr.value == "weight":
        return True
    return matcher.cls.submodule_of(node, "torch.nn.Parameter") is not None


def _enclosing_block(matcher, node):
    """The innermost if/for/while/with/try inside the method that holds `node`, if any."""
    current = matcher.ctx.parents.get(node)
    while current is not None and current is not matcher.function:
        if isinstance(current, (cst.If, cst.Else, cst.For, cst.While, cst.With, cst.Try)):
            return matcher.ctx.parents.get(current) if isinstance(current, cst.Else) else current
        current = matcher.ctx.parents.get(current)
    return None


def _softmax_dim(matcher, node: cst.Call) -> str | None:
    names = matcher.ctx.names
    if names.is_call(node, *_SOFTMAX) and len(node.args) > 1:
        return matcher.ctx.code(node.args[1].value)
    for arg in node.args:
        if arg.keyword is not None and arg.keyword.value == "dim":
            return matcher.ctx.code(arg.value)
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
    return (receiver is not None and names.imported(node.func) is None) or _autograd_softmax(node)


def _autograd_softmax(node: cst.Call) -> bool:
    """`MaskedSoftmax.apply(x, ...)`: a custom autograd Function named for a softmax."""
    func = node.func
    if not (isinstance(func, cst.Attribute) and func.attr.value == "apply" and node.args):
        return False
    owner = func.value.attr.value if isinstance(func.value, cst.Attribute) else \
        func.value.value if isinstance(func.value, cst.Name) else ""
    return "softmax" in owner.lower() and "log_softmax" not in owner.lower()


def _softmax_input(matcher, node: cst.Call):
    names = matcher.ctx.names
    if names.is_call(node, *_SOFTMAX) or isinstance(node.func, cst.Call) or _autograd_softmax(node) \
            or matcher.cls.submodule_of(node.func, "torch.nn.Softmax"):
        return node.args[0].value
    return method_call(node, "softmax")
