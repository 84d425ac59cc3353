"""Attention that returns its probabilities beside the output (`return p @ v, p`): the rewrite
returns None in their place, only when every caller in the run's files ignores them."""

from __future__ import annotations

import libcst as cst

from tf_migrate.analysis.attention import Refused
from tf_migrate.analysis.dataflow import FunctionFlow
from tf_migrate.analysis.result_uses import result_keeper
from tf_migrate.analysis.project.places import shown_root


def ignored_by_callers(ctx, cls, method: cst.FunctionDef, call, free: bool) -> None:
    """Raise Refused naming the first caller that may read the returned probabilities; otherwise
    set the call up to return None in their place."""
    refusal = _kept(ctx, cls, method, call.found, free)
    if refusal is not None:
        try:
            raise refusal
        finally:
            refusal = None  # the error's traceback holds this frame: a local naming it is a cycle
    element = call.found.returned[0]
    line = ctx.line(element)
    call.returned_none = element.value
    call.notes.append(f"the probabilities returned at line {line} are None now: every caller in the tree "
                      "ignores them")


def returned_reason(ctx, cls, method: cst.FunctionDef, matcher, free: bool) -> Refused | None:
    """When a chain whose probabilities are returned is refused for another reason, a caller that
    reads them is the first reason to give (None: no such caller, or nothing returned)."""
    found = getattr(matcher, "last", None)
    if found is None or found.returned is None:
        return None
    return _kept(ctx, cls, method, found, free)


def _kept(ctx, cls, method: cst.FunctionDef, found, free: bool) -> Refused | None:
    element, position, length = found.returned
    name = ctx.code(element.value)
    line = ctx.line(element)
    kind, qualname = ("function", method.name.value) if free else ("class", cls.qualname)
    keeper = result_keeper(ctx.project, ctx.source_path, qualname, kind, position, length)
    if keeper is None:
        return None
    refusal = Refused(line, f"the attention {_stage(ctx, method, found, element)} `{name}` are returned at line {line}, and "
                      f"{keeper.describe(shown_root(ctx.project, keeper.path))}",
                      "SDPA does not return the attention probabilities; keep this attention as it is, "
                      "or stop reading them there")
    refusal.whole_tree = True
    return refusal


def _stage(ctx, method: cst.FunctionDef, found, element: cst.Element) -> str:
    """"scores" when the returned name is bound before the softmax's line, else "probabilities"."""
    if not found.softmax_line or not isinstance(element.value, cst.Name):
        return "probabilities"
    flow = FunctionFlow(ctx, method)
    definition = flow.definition(element.value.value, flow.statement_of(element))
    statement = getattr(definition, "statement", None)
    return "scores" if statement is not None and ctx.line(statement) < found.softmax_line else "probabilities"
