"""Where rotary embeddings go in one attention class: q and k right after their head reshape.

Works on hand-written scores (`q @ k^T`, `bmm`, `einsum`, via `AttentionMatcher.score_operands`)
and on `F.scaled_dot_product_attention(q, k, ...)` calls, so that TFM401 finds the same place
whether or not TFM101 has already run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.attention import SDPA, AttentionMatcher, Refused
from tf_migrate.analysis.dataflow import Binding, FunctionFlow, OpaqueBinding, binds, loads, read_names
from tf_migrate.analysis.names import int_value, method_call
from tf_migrate.analysis.nodes import find, find_types

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

_SOFTMAX_WORDS = ("softmax", "Softmax")


@dataclass
class RotarySite:
    """Insert `q = apply_rotary(q, ...)` and the same for k right after statement `after` (None:
    at the start of `method`, where q and k are its parameters)."""

    after: cst.SimpleStatementLine | None
    query: str
    key: str
    seq_dims: tuple[int, int]  # sequence dim of q and of k, in their layout at `after`
    method: cst.FunctionDef
    scores: cst.BaseStatement  # the scores product or the SDPA call
    key_at: cst.BaseStatement  # where k still holds this step's keys only (before a cache update)
    cached: bool = False  # k holds cached keys too: q is rotated with the offset of the cache


def sites_in(ctx: "FileContext", cls: "ModuleClass", entry: bool = False) -> list[RotarySite]:
    """The self-attentions of `cls`; raises Refused when q and k cannot be placed with certainty.
    With `entry`, q and k may be parameters of the method, rotated where it starts (the callers,
    followed across the tree, must show they are one stream: see one_stream.py)."""
    found: list[RotarySite] = []
    for method in cls.methods.values():
        matcher = AttentionMatcher(ctx, cls, method)
        here = [_site(ctx, matcher.flow, method, *pair, entry=entry) for pair in
                (_operands(ctx, matcher, node) for node in _products_and_calls(method)) if pair is not None]
        if not here and _looks_like_attention(ctx, method):
            raise Refused(ctx.line(method), f"`{cls.qualname}.{method.name.value}` multiplies tensors and "
                          "takes a softmax, but tf-migrate cannot find its q and k",
                          "write the scores as `q @ k.transpose(-2, -1)` or einsum")
        found.extend(here)
    return found


def _looks_like_attention(ctx: "FileContext", method: cst.FunctionDef) -> bool:
    return any(_is_product(n, ctx) for n in _products_and_calls(method)) and _mentions_softmax(ctx, method)


def _products_and_calls(function: cst.FunctionDef) -> list[cst.CSTNode]:
    """The nodes of the function's own body that can be a product or a call (`_operands` and
    `_is_product` answer None / False for every other node), in source order."""
    return find_types(function.body, (cst.BinaryOperation, cst.Call), into_scopes=False)


def _mentions_softmax(ctx: "FileContext", function: cst.FunctionDef) -> bool:
    """Whether the function's code spells softmax: printed once per function and file version, not
    once per product (`_feeds_softmax`) and again per class (`_looks_like_attention`)."""
    known = ctx.memo("rope.mentions_softmax", dict)
    if id(function) not in known:
        code = ctx.code(function)
        known[id(function)] = any(word in code for word in _SOFTMAX_WORDS)
    return known[id(function)]


def _operands(ctx, matcher: AttentionMatcher, node):
    """((q expr, layout order), (k expr, layout order), statement) of a scores product or SDPA call."""
    if ctx.names.callee(node) == SDPA and len(node.args) >= 2:
        statement = matcher.flow.statement_of(node)
        return (*(_peel(ctx, matcher, a.value, statement) for a in node.args[:2]), statement)
    if not _is_product(node, ctx):
        return None
    statement = matcher.flow.statement_of(node)
    if statement is None:
        return None
    found = matcher.score_operands(node, statement)
    if found is None or not _feeds_softmax(ctx, matcher, statement):
        return None
    q, k = found.query, found.key
    if k.suffix and ctx.names.callee(node) != "torch.einsum":
        untransposed = _transposed_name(ctx, matcher, k)
        if untransposed is None:
            return None  # `probs @ v`, or keys stored transposed: not a scores product we can place
        return ((q.expr, _order(q.suffix, q.expr, q.at, matcher)), (untransposed, None), statement)
    return ((q.expr, _order(q.suffix, q.expr, q.at, matcher)),
            (k.expr, _order(k.suffix, k.expr, k.at, matcher)), statement)


def _unpacked_rank(matcher: AttentionMatcher, name: str) -> int | None:
    """`batch, heads, length, size = k.size()` (or `.shape`) in the method: k has rank 4."""
    for assign in find(matcher.function, lambda n: isinstance(n, cst.Assign)):
        target = assign.targets[0].target if len(assign.targets) == 1 else None
        value = assign.value
        sized = method_call(value, "size") if isinstance(value, cst.Call) and not value.args else None
        if sized is None and isinstance(value, cst.Attribute) and value.attr.value == "shape":
            sized = value.value
        if isinstance(target, cst.Tuple) and isinstance(sized, cst.Name) and sized.value == name \
                and not any(isinstance(e, cst.StarredElement) for e in target.elements):
            return len(target.elements)
    return None


def _transposed_name(ctx, matcher: AttentionMatcher, key):
    """`k_t = k.transpose(2, 3)` then `q @ k_t`: the name `k` (keys in (..., T, head_dim) layout),
    when `k_t` is a plain local bound right before the product and read nowhere else."""
    if key.suffix not in (".transpose(-2, -1)", ".transpose(-1, -2)") or not isinstance(key.expr, cst.Name):
        return None
    definition = matcher.flow.definition(key.expr.value, key.at)
    if not isinstance(definition, Binding):
        return None
    receiver = method_call(definition.value, "transpose")
    if not isinstance(receiver, cst.Name) or len(definition.value.args) != 2:
        return None
    numbers = [int_value(a.value) for a in definition.value.args]
    rank = matcher.shapes.rank(receiver, definition.statement) or _unpacked_rank(matcher, receiver.value)
    if None in numbers or rank is None and any(n >= 0 for n in numbers):
        return None
    rank = rank or 2
    if sorted(n % rank for n in numbers) != [rank - 2, rank - 1]:
        return None
    reads = find(matcher.function, lambda n: isinstance(n, cst.Name) and n.value == key.expr.value)
    if len(reads) != 2:  # the binding and the product only
        return None
    return receiver


def _is_product(node, ctx) -> bool:
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.MatrixMultiply):
        return True
    return ctx.names.callee(node) in ("torch.matmul", "torch.bmm", "torch.einsum")


def _feeds_softmax(ctx, matcher: AttentionMatcher, statement) -> bool:
    """Scores of softmax attention, not of linear attention or a plain bilinear form."""
    return _mentions_softmax(ctx, matcher.function)


def _peel(ctx, matcher, expr, statement):
    """`q.transpose(1, 2)` -> (q, the order taking q's layout to SDPA's)."""
    receiver = method_call(expr, "transpose", "permute")
    if receiver is None:
        return expr, None
    return receiver, _order(ctx.code(expr)[len(ctx.code(receiver)):], receiver, statement, matcher)


def _order(suffix: str, expr, at, matcher: AttentionMatcher) -> tuple[int, ...] | None:
    """Permutation (SDPA dim i = name dim order[i]) for a `.transpose`/`.permute` suffix; None: identity."""
    if not suffix:
        return None
    call = cst.parse_expression("x" + suffix)
    numbers = [int_value(a.value) for a in call.args]
    if None in numbers:
        raise Refused(matcher.ctx.line(at), f"cannot read the layout change `{suffix}`", "")
    rank = len(numbers) if call.func.attr.value == "permute" else matcher.shapes.rank(expr, at)
    if rank is None:
        raise Refused(matcher.ctx.line(at), f"cannot tell the rank of `{matcher.ctx.code(expr)}`",
                      "reshape q and k with explicit sizes")
    numbers = [n % rank for n in numbers]
    if call.func.attr.value == "permute":
        return tuple(numbers)
    order = list(range(rank))
    order[numbers[0]], order[numbers[1]] = order[numbers[1]], order[numbers[0]]
    return tuple(order)


def _site(ctx, flow: FunctionFlow, method, q, k, statement, entry: bool = False) -> RotarySite:
    dims = []
    for expr, order in (q, k):
        if not isinstance(expr, cst.Name):
            raise Refused(ctx.line(statement), f"`{ctx.code(expr)}` is not a plain name, so tf-migrate "
                          "cannot rotate it before the scores", "bind q and k to names after the head reshape")
        if order is None:
            dims.append(-2)
        elif order[-1] != len(order) - 1:
            raise Refused(ctx.line(statement), f"`{expr.value}` does not keep the head dim last (keys stored "
                          "transposed?)", "store k as (..., T, head_dim)")
        else:
            dims.append(order[-2])
    names, seq_dims = (q[0].value, k[0].value), (dims[0], dims[1])
    params = {p.name.value for p in method.params.params} - {"self"}
    if entry and all(n in params and flow.definition(n, statement) is None for n in names):
        return RotarySite(None, *names, seq_dims, method, statement, statement)
    cache = _cache_update(ctx, flow, names[1], statement)
    if cache is None:
        return RotarySite(_after(ctx, flow, statement, *names), *names, seq_dims, method, statement, statement)
    _after(ctx, flow, cache, *names)  # q and k are built plainly before the cache update
    if ctx.parents.get(cache) is not ctx.parents.get(statement):
        raise Refused(ctx.line(cache), "the key cache is updated in another block than the scores", "")
    body = list(ctx.parents[statement].body)
    _no_key_reads_after(ctx, body[body.index(statement) + 1:], names[1])
    last = max(i for i, s in enumerate(body[:body.index(statement)]) if _touches(s, names))
    return RotarySite(body[last], *names, seq_dims, method, statement, cache, cached=True)


def _cache_update(ctx, flow: FunctionFlow, key: str, at):
    """The statement (maybe an `if past is not None:` block) doing `k = torch.cat([past_k, k], ...)`."""
    definition = flow.definition(key, at)
    if definition is None:
        return None
    for node in find(definition.statement, lambda n: isinstance(n, cst.Assign)):
        if any(isinstance(t.target, cst.Name) and t.target.value == key for t in node.targets) \
                and ctx.names.callee(node.value) == "torch.cat" and key in read_names(node.value):
            return definition.statement
    return None


def _touches(statement, names) -> bool:
    return any(loads(statement, n) or binds(statement, n) for n in names)


def _no_key_reads_after(ctx, statements, key: str) -> None:
    """Rotated keys must not reach the cache: the cache keeps raw keys, rotated afresh each step."""
    for statement in statements:
        if loads(statement, key):
            raise Refused(ctx.line(statement), f"`{key}` is read after the scores (line {ctx.line(statement)}): "
                          "the key cache would hold rotated keys", "store the cache before the scores")


def _head_binding(ctx, flow: FunctionFlow, name: str, at):
    """The statement that last built `name` before `at`, skipping `name = name * number` scalings."""
    definition = flow.definition(name, at)
    while isinstance(definition, Binding) and isinstance(definition.value, cst.BinaryOperation) \
            and isinstance(definition.value.operator, (cst.Multiply, cst.Divide)) \
            and isinstance(definition.value.left, cst.Name) and definition.value.left.value == name:
        definition = flow.definition(name, definition.statement)
    if definition is None or not isinstance(definition, (Binding, OpaqueBinding)) \
            or not isinstance(definition.statement, cst.SimpleStatementLine):
        raise Refused(ctx.line(at), f"`{name}` is not built by a plain statement in this method",
                      "compute q and k in plain statements")
    if "cat" in read_names(definition.statement) or ".cat(" in ctx.code(definition.statement):
        raise Refused(ctx.line(definition.statement), f"`{name}` is concatenated with cached keys: rotary "
                      "needs the cache offset, which tf-migrate does not insert yet", "")
    return definition.statement


def _after(ctx, flow: FunctionFlow, statement, q: str, k: str) -> cst.SimpleStatementLine:
    first, second = _head_binding(ctx, flow, q, statement), _head_binding(ctx, flow, k, statement)
    if ctx.parents.get(first) is not ctx.parents.get(statement) or ctx.parents.get(second) is not ctx.parents.get(statement):
        raise Refused(ctx.line(statement), "q or k is built in another block than the scores", "")
    body = list(ctx.parents[statement].body)
    return first if body.index(first) > body.index(second) else second


def sources(ctx, flow: FunctionFlow, name: str, at, seen=None) -> set[str]:
    """The method parameters a local name is computed from (`self` excluded)."""
    seen = set() if seen is None else seen
    if (name, id(at)) in seen:
        return set()
    seen.add((name, id(at)))
    definition = flow.definition(name, at)
    if definition is None:
        params = {p.name.value for p in flow.function.params.params}
        return {name} & (params - {"self"})
    statement = definition.statement
    found: set[str] = set()
    for read in read_names(statement.body[0].value if isinstance(statement, cst.SimpleStatementLine)
                           and hasattr(statement.body[0], "value") else statement) - {"self"}:
        found |= sources(ctx, flow, read, statement, seen)
    return found
