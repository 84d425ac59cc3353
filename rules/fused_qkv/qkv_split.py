"""The forward side of a q/k/v fusion: one split binds the three outputs, the calls go away.

`name = self.proj(x)` lines are replaced by the split outright (their names are kept); in longer
statements (`k = self.key(x).view(...)`) the call becomes the name the split bound (`q`, `k`, `v`).
"""

from __future__ import annotations

import libcst as cst

from tf_migrate.analysis.dataflow import binds, loads, read_names
from tf_migrate.engine.edits import replace_nodes
from tf_migrate.analysis.nodes import find
from tf_migrate.rules.fused_qkv.projections import ROLES, Application


class Blocked(Exception):
    """The fusion cannot be written safely here; the message says why."""


class CrossCall(Blocked):
    """A call in the tree passes different tensors as q, k and v: the truest reason there is."""


def forward_edits(ctx, apps: list[Application], value: str) -> dict:
    """Bind the three outputs to `value` (the fused product, split) before the first use; each
    application becomes the name it binds."""
    statements = [a.statement for a in apps]
    block = ctx.parents.get(statements[0])
    if any(ctx.parents.get(s) is not block for s in statements):
        raise Blocked("the three projections are applied in different blocks")
    body = list(block.body)
    first = min(statements, key=body.index)
    names = [_output_name(a, role) for a, role in zip(apps, ROLES)]
    if len(set(names)) != 3:
        raise Blocked("the projections' outputs would need the same name")
    function = _function_of(ctx, block)
    for app, name in zip(apps, names):
        _check_free(ctx, body, first, app, name, function)
    split = cst.parse_statement(f"{', '.join(names)} = {value}")
    edits: dict = {}
    calls: dict = {}  # several projections may share one statement (`q, k = self.q(x), self.k(x)`)
    for app, name in zip(apps, names):
        if _plain_binding(app) is not None:
            edits[app.statement] = cst.RemoveFromParent()
        else:
            calls.setdefault(app.statement, {})[app.call] = cst.Name(name)
    edits.update({statement: replaced(ctx, statement, swaps) for statement, swaps in calls.items()})
    kept = edits[first]
    split = split.with_changes(leading_lines=first.leading_lines)
    if isinstance(kept, cst.RemovalSentinel):
        edits[first] = split  # the old line's shape comment described one projection, not three
    else:
        edits[first] = cst.FlattenSentinel([split, kept.with_changes(leading_lines=[])])
    return edits


def replaced(ctx, node: cst.CSTNode, swaps: dict) -> cst.CSTNode:
    """`replace_nodes(node, swaps)` for nodes of the analysed file: with its parent map only the
    paths down to the swapped nodes are visited (the rest of `node` comes back as it is, where a
    whole visit rebuilt every node of it). A tree whose index holds a node in two places, or a
    node the index does not hold, gets the whole visit."""
    index = ctx.index
    whole = index.shared or node not in index or any(swapped not in index for swapped in swaps)
    return replace_nodes(node, swaps, None if whole else ctx.parents)


def _plain_binding(app) -> str | None:
    """`name = self.proj(x)`: the name, whose statement the split replaces outright."""
    small = app.statement.body[0] if len(app.statement.body) == 1 else None
    if (isinstance(small, cst.Assign) and len(small.targets) == 1 and small.value is app.call
            and isinstance(small.targets[0].target, cst.Name)):
        return small.targets[0].target.value
    return None


def _output_name(app, role: str) -> str:
    return _plain_binding(app) or role


def _function_of(ctx, node):
    while node is not None and not isinstance(node, cst.FunctionDef):
        node = ctx.parents.get(node)
    return node


def _check_free(ctx, body, first, app, name: str, function) -> None:
    """The split binds `name` early: nothing between may read or bind it, and the old use may not
    read it outside the projection call that the name replaces (`k = self.w_k(k).view(...)` reads
    parameter k only as the projection's input). A name the old use did not bind (`q` for
    `h = self.shape(self.query(x))`) is new to the function: nothing else in it may mention it."""
    statement = app.statement
    between = body[body.index(first):body.index(statement)]
    if any(loads(s, name) or binds(s, name) for s in between):
        raise Blocked(f"`{name}` is used between the projections")
    if loads(replaced(ctx, statement, {app.call: cst.Name("_")}), name):
        raise Blocked(f"`{name}` is read where a projection is applied")
    if not binds(statement, name) and (function is None or _mentions(function, name)):
        raise Blocked(f"the split would bind `{name}`, a name this function already uses elsewhere")


def _mentions(function, name: str) -> bool:
    declared = find(function, lambda n: isinstance(n, (cst.Global, cst.Nonlocal)) and any(
        item.name.value == name for item in n.names))  # `global q`: binding q would write the global
    return bool(declared) or bool(loads(function, name)) or binds(function, name)


def split_suffix(outs: list[str], dim: int = -1) -> str:
    """`.split(...)` that reproduces the three outputs, with sizes readable inside a method."""
    readable = all(read_names(cst.parse_expression(o)) <= {"self"} for o in outs)
    if readable:
        sizes = outs[0] if len(set(outs)) == 1 else f"[{', '.join(outs)}]"
        return f".split({sizes}, dim={dim})"
    if len(set(outs)) == 1:
        return f".chunk(3, dim={dim})"
    raise Blocked(f"output sizes ({', '.join(outs)}) differ and are not readable in forward")


def total_size(outs: list[str]) -> str:
    """The fused output size: `3 * d` for equal sizes, else their sum."""
    if len(set(outs)) == 1:
        single = cst.parse_expression(outs[0])
        return f"3 * {outs[0]}" if isinstance(single, (cst.Name, cst.Attribute, cst.Integer)) else f"3 * ({outs[0]})"
    return " + ".join(f"({o})" if isinstance(cst.parse_expression(o), cst.BinaryOperation) else o for o in outs)


def constructor_edits(ctx, statements: list[cst.SimpleStatementLine], text: str) -> dict:
    """The first of the three constructor statements becomes `text`; the other two go."""
    if len({id(ctx.parents.get(s)) for s in statements}) != 1:
        raise Blocked("the three are built in different blocks of __init__")
    ordered = sorted(statements, key=ctx.line)
    edits: dict = {ordered[0]: ordered[0].with_changes(body=[cst.parse_statement(text).body[0]])}
    edits.update({s: cst.RemoveFromParent() for s in ordered[1:]})
    return edits


def sizes_in_forward(ctx, cls, outs: list[str]) -> list[str]:
    """The output sizes, spelled so forward can read them: a constructor parameter the class keeps
    as `self.<a> = <name>` (its only assignment, in `__init__`, the parameter never rebound) is
    read as `self.<a>` (`n_head * d_k` -> `self.n_head * self.d_k`). Sizes built otherwise are
    returned as they are."""
    init = cls.methods.get("__init__")
    if init is None or all(read_names(cst.parse_expression(o)) <= {"self"} for o in outs):
        return outs
    params = {p.name.value for p in init.params.params}
    kept: dict[str, str] = {}
    for attribute, node in _plain_stores(init):
        if node.value in params and not binds(init.body, node.value) and _assigned_once(ctx, attribute):
            kept.setdefault(node.value, attribute)
    spelled = []
    for out in outs:
        expression = cst.parse_expression(out)
        if not _arithmetic(expression) or not read_names(expression) <= set(kept) | {"self"}:
            return outs
        spelled.append(cst.Module([]).code_for_node(replace_nodes(expression, {
            n: cst.parse_expression(f"self.{kept[n.value]}") for n in find(expression, lambda n: isinstance(n, cst.Name))})))
    return spelled


def _plain_stores(init) -> list[tuple[str, cst.Name]]:
    """(attribute, name) for each `self.<attribute> = <name>` statement of `__init__`."""
    found = []
    for node in find(init, lambda n: isinstance(n, cst.Assign)):
        if len(node.targets) == 1 and isinstance(node.value, cst.Name):
            target = node.targets[0].target
            if isinstance(target, cst.Attribute) and isinstance(target.value, cst.Name) and target.value.value == "self":
                found.append((target.attr.value, node.value))
    return found


def _assigned_once(ctx, attribute: str) -> bool:
    """`.<attribute>` is stored to exactly once in the file (augmented and tuple stores count)."""
    stores = 0
    for node in ctx.index.attributes(ctx.module, attribute):
        parent = ctx.parents.get(node)
        while isinstance(parent, (cst.Element, cst.StarredElement, cst.Tuple, cst.List)):
            parent = ctx.parents.get(parent)  # `self.a, self.b = ...` (or a tuple read: then not a store)
        if isinstance(parent, (cst.AssignTarget, cst.AugAssign, cst.AnnAssign, cst.CompFor, cst.For, cst.WithItem)):
            stores += 1
    return stores == 1


def _arithmetic(expression: cst.BaseExpression) -> bool:
    """Names, integers and + - * // of them, nothing else (no attribute, call or subscript)."""
    if isinstance(expression, (cst.Name, cst.Integer)):
        return True
    if isinstance(expression, cst.BinaryOperation):
        return isinstance(expression.operator, (cst.Add, cst.Subtract, cst.Multiply, cst.FloorDivide)) \
            and _arithmetic(expression.left) and _arithmetic(expression.right)
    return False
