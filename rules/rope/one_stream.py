"""Keys and queries of an attention are one stream (TFM401 across files, across.py): the attention
sites of a class and, when it takes q and k as two parameters, every place that calls it followed
up the tree (`self.attn(x, x, x)`, through the projections of a multi-head wrapper): each must pass
one tensor, or values computed from one parameter of its own caller, to the end. A class built in
a container, or called other than through `self.<name>(...)`, cannot be followed: refused."""

from __future__ import annotations

import libcst as cst

from tf_migrate.analysis.attention import Refused
from tf_migrate.analysis.dataflow import FunctionFlow, read_names
from tf_migrate.rules.rope.model_classes import instantiations
from tf_migrate.rules.rope.places import Where, _context, _listed, _rel, _short, class_named

_MAX_CALLERS = 4  # callers followed up from an attention to where keys and queries are one tensor


def _sites(fctx, cls):
    from tf_migrate.rules.rope.rotary import sites_in

    try:
        found = sites_in(fctx, cls, entry=True)
    except Refused as refusal:
        raise Refused(refusal.line, f"in {_rel(fctx.project, fctx.project_key)}: {refusal.reason}", refusal.hint)
    for site in found:
        if fctx.suppressed("TFM401", site.scores):
            raise Refused(fctx.line(site.scores), "an attention of the model is under a `tf-migrate: skip` comment", "")
        if not isinstance(site.method.body, cst.IndentedBlock):
            raise Refused(fctx.line(site.method), "the attention's method is written on one line", "")
    return found


def sites_of(fctx, qualname: str):
    return _sites(fctx, class_named(fctx, qualname))


def _one_stream(project, where: Where, site) -> None:
    """Keys and queries of `site` come from one tensor, followed through the callers if need be."""
    from tf_migrate.rules.rope.rotary import sources

    fctx = _context(project, where.path)
    flow = FunctionFlow(fctx, site.method)
    params = sources(fctx, flow, site.query, site.scores) | sources(fctx, flow, site.key, site.key_at)
    _callers_pass_one(project, where, site.method.name.value, params, 0)


def _callers_pass_one(project, where: Where, method: str, params: set[str], depth: int) -> None:
    from tf_migrate.rules.rope.rotary import sources

    if len(params) == 1:
        return
    label = f"`{where.qualname}.{method}` ({_rel(project, where.path)})"
    if not params:
        raise Refused(0, f"in {label}, q and k are computed from no parameter: tf-migrate cannot show that "
                      "keys and queries are one input", "give self-attention its own class that takes one input")
    if method != "forward" or depth >= _MAX_CALLERS:
        raise Refused(0, f"in {label}, keys and queries come from {_listed(params)}, and its callers are not "
                      "followed further: the keys of cross-attention must not be rotated",
                      "give self-attention its own class that takes one input")
    fctx = _context(project, where.path)
    cls = class_named(fctx, where.qualname)
    order = [p.name.value for p in cls.methods["forward"].params.params][1:]
    built = instantiations(project, where)
    if not built:
        raise Refused(0, f"{label} takes keys and queries as {_listed(params)} and nothing in the run builds "
                      "it, so no caller shows they are one tensor", "")
    for b in built:
        if b.attr is None or not b.in_init:
            raise Refused(b.line, f"{label} takes keys and queries as {_listed(params)}; it is built at "
                          f"{_rel(project, b.path)} line {b.line} other than as `self.<name> = ...` in `__init__`, "
                          "so its calls cannot be followed", "")
        hctx = _context(project, b.path)
        holder = class_named(hctx, b.owner)
        calls = _calls_of(hctx, holder, b.attr, b.line)
        for call in calls:
            method_node = hctx.index.enclosing(call, cst.FunctionDef)
            given = [_argument(call, order, p) for p in sorted(params)]
            if any(g is None for g in given):
                raise Refused(hctx.line(call), f"`{_short(hctx, call)}` ({_rel(project, b.path)} line "
                              f"{hctx.line(call)}) does not pass every one of {_listed(params)}", "")
            if all(isinstance(g, cst.Name) for g in given) and len({g.value for g in given}) == 1:
                continue  # one tensor passed for them all
            if method_node is None or _in_lambda(hctx, call):
                raise Refused(hctx.line(call), f"`{_short(hctx, call)}` ({_rel(project, b.path)} line "
                              f"{hctx.line(call)}) passes different tensors as {_listed(params)}: the keys of "
                              "cross-attention must not be rotated", "give self-attention its own class that takes one input")
            flow = FunctionFlow(hctx, method_node)
            statement = flow.statement_of(call)
            upstream: set[str] = set()
            for g in given:
                for name in read_names(g) - {"self"}:
                    upstream |= sources(hctx, flow, name, statement)
            if len(upstream) != 1:
                try:
                    _callers_pass_one(project, Where(b.path, b.owner), method_node.name.value, upstream, depth + 1)
                except Refused as refusal:
                    raise Refused(refusal.line, f"keys and queries of {label} come from {_listed(params)}; "
                                  f"followed through `{_short(hctx, call)}` ({_rel(project, b.path)} line "
                                  f"{hctx.line(call)}): {refusal.reason}", refusal.hint)


def _in_lambda(fctx, node) -> bool:
    current = fctx.parents.get(node)
    while current is not None and not isinstance(current, (cst.FunctionDef, cst.Module)):
        if isinstance(current, cst.Lambda):
            return True
        current = fctx.parents.get(current)
    return False


def _calls_of(hctx, holder, attr: str, line: int) -> list[cst.Call]:
    """`self.<attr>(...)` and `self.<attr>.forward(...)` in the holder; refuses any other use."""
    calls = []
    for ref in holder.self_references(attr):
        parent = hctx.parents.get(ref)
        if isinstance(parent, cst.Attribute) and parent.attr.value == "forward":
            ref, parent = parent, hctx.parents.get(parent)
        if isinstance(parent, cst.Call) and parent.func is ref:
            calls.append(parent)
            continue
        if hctx.line(ref) == line or _is_target(hctx, ref):
            continue
        raise Refused(hctx.line(ref), f"`self.{attr}` of `{holder.qualname}` is used other than called "
                      f"(line {hctx.line(ref)}), so its callers cannot be followed", "")
    if not calls:
        raise Refused(line, f"`self.{attr}` of `{holder.qualname}` is never called", "")
    return calls


def _is_target(hctx, ref) -> bool:
    parent = hctx.parents.get(ref)
    return isinstance(parent, cst.AssignTarget)


def _argument(call: cst.Call, order: list[str], name: str):
    for position, arg in enumerate(call.args):
        if arg.star:
            return None
        if (arg.keyword is not None and arg.keyword.value == name) or (
                arg.keyword is None and position < len(order) and order[position] == name):
            return arg.value
    return None
