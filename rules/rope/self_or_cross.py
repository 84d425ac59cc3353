"""One attention class for self- and cross-attention (TFM401 across files, across.py): when the
keys of its one scores class are not shown to be one stream with its queries, its holder may
rotate q and k under `if <flag>:`, the flag being `key is query` where its forward starts (`Guard`),
provided every caller passes one tensor (self) or two streams (cross)."""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from tf_migrate.analysis.attention import Refused
from tf_migrate.analysis.dataflow import FunctionFlow, read_names
from tf_migrate.analysis.nodes import find
from tf_migrate.rules.rope.model_classes import instantiations
from tf_migrate.rules.rope.one_stream import _argument, _calls_of, _in_lambda
from tf_migrate.rules.rope.places import Where, _context, _rel, _short, class_named


@dataclass(frozen=True)
class Guard:
    """A scores class `scores` whose only holder `holder` takes queries and keys as the parameters
    `query`/`key` and hands its projections `q_arg`/`k_arg` to it: some callers of the holder pass
    one tensor as both (self-attention), others not (cross-attention). The holder rotates
    `q_arg`/`k_arg` before the call under `if <flag>:`, the flag being `key is query` taken where
    forward starts: cross-attention keeps attending without rotation."""

    holder: Where
    scores: Where
    attr: str
    query: str
    key: str
    q_arg: str
    k_arg: str
    seq_dims: tuple[int, int]
    flag: str


def guarded(project, scores: Where, sites) -> Guard | None:
    """The guard for a scores class used by self- and cross-attention, or None (then refused)."""
    from tf_migrate.rules.rope.rotary import sources

    site = sites[0]
    if site.after is not None or site.method.name.value != "forward" or site.cached:
        return None
    built = instantiations(project, scores)
    if len(built) != 1 or built[0].attr is None or not built[0].in_init:
        return None
    holder = Where(built[0].path, built[0].owner)
    hctx = _context(project, holder.path)
    hcls = class_named(hctx, holder.qualname)
    forward = hcls.methods.get("forward")
    try:
        calls = _calls_of(hctx, hcls, built[0].attr, built[0].line)
    except Refused:
        return None
    if forward is None or len(calls) != 1 or hctx.index.enclosing(calls[0], cst.FunctionDef) is not forward \
            or _in_lambda(hctx, calls[0]) or not isinstance(forward.body, cst.IndentedBlock):
        return None
    order = [p.name.value for p in site.method.params.params][1:]
    q_arg, k_arg = _argument(calls[0], order, site.query), _argument(calls[0], order, site.key)
    if not (isinstance(q_arg, cst.Name) and isinstance(k_arg, cst.Name)) or q_arg.value == k_arg.value:
        return None
    flow = FunctionFlow(hctx, forward)
    statement = flow.statement_of(calls[0])
    query, key = _exact_sources(flow, q_arg.value, statement), _exact_sources(flow, k_arg.value, statement)
    if len(query) != 1 or len(key) != 1 or query == key:
        return None
    (query,), (key,) = query, key
    params = [p.name.value for p in forward.params.params][1:]
    selves = 0
    for b in instantiations(project, holder):
        if b.attr is None or not b.in_init:
            return None
        cctx = _context(project, b.path)
        try:
            holder_calls = _calls_of(cctx, class_named(cctx, b.owner), b.attr, b.line)
        except Refused:
            return None
        for call in holder_calls:
            given = _argument(call, params, query), _argument(call, params, key)
            if None in given:
                return None
            if all(isinstance(g, cst.Name) for g in given) and given[0].value == given[1].value:
                selves += 1  # one tensor: `key is query` holds, rotated
            elif _in_lambda(cctx, call) or _one_source(cctx, call, given):
                raise Refused(cctx.line(call), f"`{holder.qualname}` ({_rel(project, holder.path)}) serves "
                              f"self- and cross-attention, and `{_short(cctx, call)}` ({_rel(project, b.path)} "
                              f"line {cctx.line(call)}) passes its queries and keys as two tensors of one stream: "
                              f"`{key} is {query}` would not tell that self-attention from cross-attention",
                              "pass one tensor (`h = norm(x)`, then `attn(h, h, h)`)")
    if not selves:
        return None
    names = {n.value for n in find(forward, lambda n: isinstance(n, cst.Name))}
    flag = next((f for f in ("self_attention", "rotate_qk", "rotate_keys") if f not in names), None)
    if flag is None:
        return None
    return Guard(holder, scores, built[0].attr, query, key, q_arg.value, k_arg.value, site.seq_dims, flag)


def _exact_sources(flow, name: str, at, depth: int = 0) -> set[str]:
    """The parameters `name` is computed from, reading `a, b = f(a), g(b)` element by element
    (rotary.sources reads the whole statement); {"?"} when a binding cannot be read."""
    from tf_migrate.analysis.dataflow import Binding

    if depth > 12:
        return {"?"}
    definition = flow.definition(name, at)
    if definition is None:  # a parameter, or a module-level name (no per-call stream)
        params = {p.name.value for p in flow.function.params.params} - {"self"}
        return {name} if name in params else set()
    value = definition.value if isinstance(definition, Binding) else None
    statement = definition.statement
    if value is None and isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 \
            and isinstance(statement.body[0], cst.Assign) and len(statement.body[0].targets) == 1:
        target, whole = statement.body[0].targets[0].target, statement.body[0].value
        if isinstance(target, cst.Tuple) and isinstance(whole, cst.Tuple) \
                and len(target.elements) == len(whole.elements):
            for t, v in zip(target.elements, whole.elements):
                if isinstance(t.value, cst.Name) and t.value.value == name:
                    value = v.value
    if value is None:
        return {"?"}
    found: set[str] = set()
    for read in _data_names(value) - {"self"}:
        found |= _exact_sources(flow, read, statement, depth + 1)
    return found


_SHAPED = ("view", "reshape", "expand", "repeat", "new_zeros", "new_ones", "unflatten")


def _data_names(expr) -> set[str]:
    """The names whose values flow into `expr`; sizes do not (`x.size(0)`, `x.shape`, the arguments
    of `.view(batch, length, heads, size)`)."""
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute):
        if expr.func.attr.value in ("size", "dim"):
            return set()
        if expr.func.attr.value in _SHAPED:
            return _data_names(expr.func.value)
    if isinstance(expr, cst.Call):  # what is passed, and the receiver of a method; not a function's name
        found = set().union(*(_data_names(a.value) for a in expr.args)) if expr.args else set()
        return found | (_data_names(expr.func.value) if isinstance(expr.func, cst.Attribute) else set())
    if isinstance(expr, cst.Attribute) and expr.attr.value in ("shape", "ndim", "device", "dtype"):
        return set()
    if isinstance(expr, cst.Name):
        return {expr.value}
    found: set[str] = set()
    for child in expr.children:
        if isinstance(child, cst.BaseExpression) or isinstance(child, (cst.Arg, cst.Element, cst.Subscript,
                                                                        cst.SubscriptElement, cst.Index, cst.Slice)):
            found |= _data_names(child)
        elif isinstance(child, cst.CSTNode) and not isinstance(child, (cst.BaseParenthesizableWhitespace,)):
            found |= _data_names(child)
    if isinstance(expr, cst.Attribute):
        return _data_names(expr.value)
    return found


def _one_source(cctx, call, given) -> bool:
    """Two names for queries and keys that come from the same one parameter of the caller."""
    from tf_migrate.rules.rope.rotary import sources

    method = cctx.index.enclosing(call, cst.FunctionDef)
    if method is None:
        return True
    flow = FunctionFlow(cctx, method)
    statement = flow.statement_of(call)
    found = [set().union(*(sources(cctx, flow, name, statement) for name in read_names(g) - {"self"}))
             for g in given]
    return found[0] == found[1] or not found[0] or not found[1]
