"""Where a stack's forward runs its blocks, for loops `stacks.find_run` does not read: a loop over
`enumerate(self.layer)` or over `range(n)` with `m = self.layer[i]`, whose body rebinds the stream
from the block's output (`x = outputs[0]`, the block called directly or through a checkpointing
helper). The final norm goes right after that loop."""

from __future__ import annotations

import libcst as cst

from tf_migrate.analysis.dataflow import loads
from tf_migrate.analysis.names import self_attribute
from tf_migrate.analysis.nodes import find
from tf_migrate.rules.prenorm.stacks import Stack, StackRun, find_run


def loop_run(stack: Stack) -> StackRun | None:
    """`for ... in enumerate(self.layer)` / `for i in range(...): m = self.layer[i]`, whose body
    rebinds the stream from the block's output once at its top level (`x = m(x, ...)[0]`, or
    through `outputs = m(x, ...)` / a checkpointed call: `x = outputs[0]`)."""
    found = find_run(stack)
    if found is not None:
        return found
    forward = stack.cls.methods.get("forward")
    if forward is None or not isinstance(forward.body, cst.IndentedBlock):
        return None
    references = find(forward, lambda node: self_attribute(node) == stack.attr)
    if len(references) != 1:
        return None
    for statement in forward.body.body:
        if isinstance(statement, cst.For) and statement.orelse is None and isinstance(statement.body, cst.IndentedBlock):
            element = element_of(statement, stack.attr)
            if element is not None:
                variable = _carried(statement, element)
                return StackRun(statement, variable) if variable else None
    return None


def element_of(loop: cst.For, attr: str) -> str | None:
    """The name the loop gives each block: its target over `self.<attr>` or `enumerate(...)`, or
    `m = self.<attr>[i]` at the top of its body with `i` the loop's index."""
    targets = [e.value for e in loop.target.elements] if isinstance(loop.target, cst.Tuple) else [loop.target]
    names = [t.value for t in targets if isinstance(t, cst.Name)]
    iterable = loop.iter
    if self_attribute(iterable) == attr and len(names) == 1:
        return names[0]
    if isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Name) and iterable.func.value == "enumerate" \
            and iterable.args and self_attribute(iterable.args[0].value) == attr and len(names) == 2:
        return names[1]
    if isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Name) and iterable.func.value == "range" \
            and len(names) == 1:
        for statement in loop.body.body:
            small = statement.body[0] if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 else None
            if isinstance(small, cst.Assign) and len(small.targets) == 1 and isinstance(small.targets[0].target, cst.Name) \
                    and isinstance(small.value, cst.Subscript) and self_attribute(small.value.value) == attr \
                    and len(small.value.slice) == 1 and isinstance(small.value.slice[0].slice, cst.Index) \
                    and isinstance(small.value.slice[0].slice.value, cst.Name) \
                    and small.value.slice[0].slice.value.value == names[0]:
                return small.targets[0].target.value
    return None


def _carried(loop: cst.For, element: str) -> str | None:
    """The stream: bound once at the top level of the body from the block's output, and read by
    a statement calling the block before that."""
    bound = {}  # name -> every statement binding it in the body
    for node in find(loop.body, lambda n: isinstance(n, cst.AssignTarget)):
        if isinstance(node.target, cst.Name):
            bound.setdefault(node.target.value, []).append(node)
    top = [s for s in loop.body.body if isinstance(s, cst.SimpleStatementLine) and len(s.body) == 1
           and isinstance(s.body[0], cst.Assign) and len(s.body[0].targets) == 1
           and isinstance(s.body[0].targets[0].target, cst.Name)]
    for statement in top:
        small = statement.body[0]
        variable = small.targets[0].target.value
        if len(bound.get(variable, ())) != 1 or not _from_block(loop, small.value, element, bound):
            continue
        callers = [c for c in find(loop.body, lambda n: isinstance(n, cst.Call))
                   if loads(c, element) and loads(c, variable)]
        if callers:
            return variable
    return None


def _from_block(loop: cst.For, value: cst.BaseExpression, element: str, bound) -> bool:
    """`m(x, ...)`, `out[0]` or `out` where every binding of `out` in the loop calls the block."""
    if isinstance(value, cst.Call) and loads(value, element):
        return True
    if isinstance(value, cst.Subscript) and len(value.slice) == 1 and isinstance(value.slice[0].slice, cst.Index) \
            and isinstance(value.slice[0].slice.value, cst.Integer) and value.slice[0].slice.value.value == "0":
        value = value.value
    if not isinstance(value, cst.Name) or value.value not in bound:
        return False
    for target in bound[value.value]:
        assign = _assign_of(loop, target)
        if assign is None or not isinstance(assign.value, cst.Call) or not loads(assign.value, element):
            return False
    return True


def _assign_of(loop: cst.For, target: cst.AssignTarget) -> cst.Assign | None:
    for node in find(loop.body, lambda n: isinstance(n, cst.Assign)):
        if any(t is target for t in node.targets) and len(node.targets) == 1:
            return node
    return None
