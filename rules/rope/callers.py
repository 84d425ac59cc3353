"""What a refusal of a rotation says when keys and queries come from different parameters of
forward: the call in the file that passes them different tensors, or that no call was found."""

from __future__ import annotations

import libcst as cst


def key_query_evidence(ctx, cls, method: cst.FunctionDef, query: set[str], key: set[str]) -> str:
    """The first call of a `cls` instance in this file that passes different tensors as the query
    and key parameters, or why none is named."""
    if method.name.value != "forward":
        return f"the attention is in `{method.name.value}`, not forward: its callers are not followed"
    only_query, only_key = query - key, key - query
    if len(only_key) != 1 or len(query) != 1 and len(only_query) != 1:
        return "no one parameter holds the keys and another the queries"
    query = query if len(query) == 1 else only_query  # `B = query.size(0)` read for the keys' shape
    params = [p.name.value for p in method.params.params][1:]  # without self
    (q_param,), (k_param,) = query, only_key
    calls = list(_instance_calls(ctx, cls.node.name.value))
    for call in calls:
        q_arg, k_arg = _argument(call, params, q_param), _argument(call, params, k_param)
        if q_arg is None or k_arg is None or ctx.code(q_arg) != ctx.code(k_arg):
            shown = lambda arg: "nothing" if arg is None else f"`{ctx.code(arg)}`"  # noqa: E731
            return (f"`{' '.join(ctx.code(call).split())}` on line {ctx.line(call)} passes {shown(k_arg)} as "
                    f"`{k_param}` and {shown(q_arg)} as `{q_param}`")
    if not calls:
        return f"no call of a `{cls.node.name.value}` is in this file to show that they are one tensor"
    return (f"every call of a `{cls.node.name.value}` in this file ({len(calls)}) passes one tensor as "
            f"`{q_param}` and `{k_param}`, but calls in other files are not followed")


def _instance_calls(ctx, name: str):
    """`self.<a>(...)` / `self.<a>.forward(...)` for every `self.<a> = <name>(...)` of the file."""
    for owner in ctx.module_classes:
        for sub in owner.submodules.values():
            if not (isinstance(sub.call.func, cst.Name) and sub.call.func.value == name):
                continue
            for ref in owner.self_references(sub.name):
                parent = ctx.parents.get(ref)
                if isinstance(parent, cst.Attribute) and parent.attr.value == "forward":
                    ref, parent = parent, ctx.parents.get(parent)
                if isinstance(parent, cst.Call) and parent.func is ref:
                    yield parent


def _argument(call: cst.Call, params: list[str], name: str) -> cst.BaseExpression | None:
    for position, arg in enumerate(call.args):
        if arg.star:
            return None
        if (arg.keyword is not None and arg.keyword.value == name) or (
                arg.keyword is None and position < len(params) and params[position] == name):
            return arg.value
    return None
