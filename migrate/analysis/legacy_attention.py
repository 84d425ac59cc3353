"""The census of attention: a softmax of a product of two tensors, multiplied with a third.

Spelled by meaning, not by the matcher's forms: any product (`@`, matmul, bmm, baddbmm, einsum),
any softmax (function, method, module, helper named for it), in any function of the file, with
the steps between them in any number of statements, through helpers of the same file. The scores
product must multiply two activations: a product with a weight (`x @ self.w_gate`) is a
projection, so a router's softmax over expert outputs is not attention. Shared by TFM101 (the
chain) and TFM102 (the projections that feed it).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from tf_migrate.analysis.census import (
    FileIndex, Function, Walker, is_dropout, is_softmax, is_weight, last_name, product_operands,
    projection_name, self_attribute, softmax_input, unit_projection_class, walker,
)

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext


@dataclass(frozen=True, eq=False)
class AttentionSite:
    function: Function  # where the softmax is
    scores: ast.AST
    softmax: ast.Call
    output: ast.AST
    q: ast.expr
    k: ast.expr
    v: ast.expr

    @property
    def nodes(self) -> tuple[ast.AST, ...]:
        return self.scores, self.softmax, self.output


def attention_sites(ctx: "FileContext") -> list[AttentionSite]:
    return ctx.memo("census.attention", lambda: list(_sites(walker(ctx))))


def _sites(walk: Walker) -> Iterator[AttentionSite]:
    index = walk.index
    seen: set[tuple[int, int]] = set()
    for node in index.calls:
        function = index.function_of(node)
        if ("softmax" in last_name(node.func).lower() or self_attribute(node.func) is not None
                or isinstance(node.func, ast.Call) or last_name(node.func) == "apply") and is_softmax(node, function):
            site = _site(walk, function, node)
            if site is not None and (id(site.scores), id(site.output)) not in seen:
                seen.add((id(site.scores), id(site.output)))
                yield site


def _site(walk: Walker, function: Function, softmax: ast.Call) -> AttentionSite | None:
    source = softmax_input(softmax, walk.index.modules)
    if source is None:
        return None
    scores = walk.back(source, hit=_is_scores, stop=_is_barrier, into_functions=True)
    if scores is None:
        return None
    output = walk.forward(softmax, hit=lambda n, f: module_product(n, f) is not None,
                          follow_call=carries, follow_returns=lambda f: _call_sites(walk.index, f))
    if output is None or output is scores:
        return None
    q, k = module_product(scores, walk.index.function_of(scores))
    left, right = module_product(output, walk.index.function_of(output))
    from_softmax = walk.back(left, hit=lambda n, f: n is softmax, stop=_is_barrier,
                             into_functions=True) is not None
    return AttentionSite(function, scores, softmax, output, q, k, right if from_softmax else left)


_PRODUCT_MODULES = ("einsum", "matmul", "bmm")


def module_product(node: ast.AST, function: Function | None) -> tuple[ast.expr, ast.expr] | None:
    """`product_operands`, or the two tensors of `self.m([a, b])` where `self.m` is built by a class
    named for a product (an `einsum("...")` or `Matmul()` layer, as explainability code writes it)."""
    pair = product_operands(node)
    if pair is not None or not isinstance(node, ast.Call) or function is None or function.cls is None:
        return pair
    attribute = self_attribute(node.func)
    built = function.cls.constructor(attribute).rsplit(".", 1)[-1].lower() if attribute else ""
    if built in _PRODUCT_MODULES and len(node.args) == 1 and not node.keywords \
            and isinstance(node.args[0], (ast.List, ast.Tuple)) and len(node.args[0].elts) == 2:
        return node.args[0].elts[0], node.args[0].elts[1]
    return None


def _is_scores(node: ast.AST, function: Function) -> bool:
    pair = module_product(node, function)
    return pair is not None and not any(is_weight(p, function) for p in pair)


def _is_barrier(node: ast.AST, function: Function) -> bool:
    """Walking back from a softmax, another softmax or a projection ends the chain."""
    pair = module_product(node, function)
    if pair is not None:
        return True
    return isinstance(node, ast.Call) and is_softmax(node, function)


_CARRYING_SUBMODULES = ("dropout", "drop")


def carries(call: ast.Call, function: Function) -> bool:
    """Whether the probabilities flow on through a call they are an argument of: tensor functions
    and methods, dropout; not an arbitrary submodule (a hook, a logger)."""
    if is_dropout(call, function) or module_product(call, function) is not None:
        return True
    attribute = self_attribute(call.func)
    if attribute is not None:
        return any(w in attribute.lower() for w in _CARRYING_SUBMODULES)
    if isinstance(call.func, ast.Attribute):
        root = call.func
        while isinstance(root, ast.Attribute):
            root = root.value
        return isinstance(root, ast.Name) and root.id in ("torch", "F", "nn", "functional", "np")
    return last_name(call.func) in ("where", "einsum", "matmul")


def _call_sites(index: FileIndex, function: Function) -> Iterator[ast.AST]:
    """Where a helper's return value lands: calls of it by name, or as `self.name(...)`."""
    name = getattr(function.node, "name", None)
    if name is None:
        return
    for node in index.calls:
        if isinstance(node.func, ast.Name) and node.func.id == name:
            yield node
        elif self_attribute(node.func) == name and index.function_of(node).cls is function.cls:
            yield node


@dataclass(frozen=True, eq=False)
class AttentionInputs:
    """The q, k, v of an attention, hand-written or already an SDPA call."""

    function: Function
    q: ast.expr
    k: ast.expr
    v: ast.expr
    nodes: tuple[ast.AST, ...]


def attention_inputs(ctx: "FileContext") -> list[AttentionInputs]:
    """q, k, v of every attention: the census of projections must not depend on whether the
    attention itself was migrated first."""
    found = [AttentionInputs(s.function, s.q, s.k, s.v, s.nodes) for s in attention_sites(ctx)]
    index = walker(ctx).index
    for call in index.calls:
        if last_name(call.func) == "scaled_dot_product_attention" and len(call.args) >= 3:
            q, k, v = call.args[:3]
            found.append(AttentionInputs(index.function_of(call), q, k, v, (call,)))
    return found


def classifier_softmaxes(ctx: "FileContext") -> frozenset[tuple[int, int]]:
    """(line, 0-based column) of every softmax over a projection's output with no product of two
    activations before it: a classifier's, a policy's or a router's softmax (`F.softmax(self.fc(x))`,
    `softmax(x @ self.w_gate)`), not attention."""
    def compute() -> frozenset[tuple[int, int]]:
        walk = walker(ctx)
        index = walk.index

        def projection(node: ast.AST, function: Function) -> bool:
            if product_operands(node) is not None:
                return projection_name(node, function, index) is not None  # a product with a weight
            attribute = self_attribute(node.func) if isinstance(node, ast.Call) else None
            return attribute is not None and function.cls is not None \
                and projection_name(node, function, index) is not None \
                and unit_projection_class(function.cls.constructor_call(attribute))

        def opaque(node: ast.AST, function: Function) -> bool:
            """A product, or a submodule / helper call that is no projection (an LRP `self.matmul1([q, k])`
            computes the scores itself): the softmax's input is not a Linear's output."""
            if _is_barrier(node, function):
                return True
            if not isinstance(node, ast.Call) or is_dropout(node, function):
                return False
            return self_attribute(node.func) is not None or (
                isinstance(node.func, ast.Name) and node.func.id in index.by_name)

        found = set()
        for node in index.calls:
            function = index.function_of(node)
            if "softmax" not in last_name(node.func).lower() or not is_softmax(node, function):
                continue
            source = softmax_input(node, index.modules)
            if source is None or walk.back(source, hit=_is_scores, stop=_is_barrier, into_functions=True):
                continue
            if walk.back(source, hit=projection, stop=opaque, into_functions=True) is not None:
                found.add((node.lineno, node.col_offset))
        return frozenset(found)

    return ctx.memo("census.classifier_softmaxes", compute)
