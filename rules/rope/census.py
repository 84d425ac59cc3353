"""TFM401's census: a table of sin/cos of positions times frequencies that reaches the tokens.

Any spelling, any file: the table may be a buffer, a parameter, a plain attribute, computed per
call, built by a helper (numpy included) or copied into an `nn.Embedding`. Positions are `arange`
or `range` values (through helpers of the same file); frequencies come from `exp`, `pow` or `**`.
The table must reach an addition (the token stream). Not components: timestep embeddings (the
positions are an input passed in from outside), relative-distance tables (a difference of two
position ranges), and tables that never meet an addition.
"""

from __future__ import annotations

import ast
from typing import Iterator

from tf_migrate.analysis.census import Function, last_name, literal_string, self_attribute, walker
from tf_migrate.engine.rule import Component

_TRIG = ("sin", "cos", "sin_", "cos_")
_RANGES = ("arange", "range")
_POWERS = ("exp", "pow", "power", "float_power", "exp2", "logspace")


def components(ctx, code: str) -> Iterator[Component]:
    walk = walker(ctx)
    index = walk.index
    groups: dict[int, tuple[ast.AST, list[ast.Call]]] = {}
    for call in index.calls:
        if last_name(call.func) not in _TRIG:
            continue
        argument = call.args[0] if call.args else (
            call.func.value if isinstance(call.func, ast.Attribute) else None)
        if argument is None or not _positions_times_frequencies(walk, argument):
            continue
        addition = walk.forward(call, hit=_is_addition, follow_call=_carries_table,
                                follow_returns=lambda f: _return_sites(walk, f))
        if addition is None or _not_tokens(walk, addition):
            continue
        groups.setdefault(id(addition), (addition, []))[1].append(call)
    for addition, calls in groups.values():
        functions = {index.function_of(n) for n in (*calls, addition)}
        classes = {f.cls for f in functions if f.cls is not None}
        classes |= {c for c in index.classes for held in list(classes)
                    if any(v.rsplit(".", 1)[-1] == held.node.name
                           for v in map(c.constructor, c.attributes))}
        owner = index.function_of(calls[0])
        scopes = tuple(sorted(f.lines for f in functions)) + tuple(
            sorted((c.node.lineno, c.node.end_lineno or c.node.lineno) for c in classes))
        lines = [c.lineno for c in calls]
        yield Component(code, "sinusoidal-positions", owner.cls.qualname if owner.cls else owner.qualname,
                        min(lines), max(c.end_lineno or c.lineno for c in calls),
                        f"sin/cos table of positions x frequencies (line {min(lines)}) added to the token "
                        f"stream (line {addition.lineno})", (addition.lineno,), scopes)


def _positions_times_frequencies(walk, argument: ast.AST) -> bool:
    def hit(node, function):
        factors = _factors(node)
        return factors is not None and any(
            _positions(walk, a) and _frequencies(walk, b) for a, b in (factors, factors[::-1]))

    return walk.back(argument, hit=hit, into_functions=True) is not None


def _factors(node: ast.AST) -> tuple[ast.AST, ast.AST] | None:
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div, ast.MatMult)):
        return node.left, node.right
    if isinstance(node, ast.Call) and last_name(node.func) in ("outer", "ger", "einsum", "matmul"):
        tensors = [a for a in node.args if literal_string(a) is None]
        if len(tensors) == 2:
            return tensors[0], tensors[1]
    return None


def _is_range(node: ast.AST, function: Function) -> bool:
    return isinstance(node, ast.Call) and last_name(node.func) in _RANGES


def _positions(walk, node: ast.AST) -> bool:
    """Computed from `arange`/`range`, not from an input of the model, not a difference of two."""
    if walk.back(node, hit=_is_range, stop=_is_range, into_functions=True) is None:
        return False

    def outside_input(n, function):
        return isinstance(n, ast.arg) and n.arg != "self" and not walk.arguments_for(n)

    def difference(n, function):
        return isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and all(
            walk.back(side, hit=_is_range, stop=_is_range, into_functions=True) is not None
            for side in (n.left, n.right))

    return walk.back(node, hit=outside_input, stop=_is_range, into_functions=True) is None \
        and walk.back(node, hit=difference, stop=_is_range, into_functions=True) is None


def _frequencies(walk, node: ast.AST) -> bool:
    def hit(n, function):
        return (isinstance(n, ast.Call) and last_name(n.func) in _POWERS) or (
            isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow))

    return walk.back(node, hit=hit, into_functions=True) is not None


def _not_tokens(walk, addition: ast.BinOp) -> bool:
    """Both sides of the addition come from convolutions or the table: audio or image features,
    not tokens (an embedding lookup, or an input whose origin is unknown)."""
    def module_call(kind):
        def hit(n, function):
            attribute = self_attribute(n.func) if isinstance(n, ast.Call) else None
            built = function.cls.constructor(attribute).lower() if attribute and function.cls else ""
            return kind in built or (kind == "embed" and attribute is not None and "emb" in attribute.lower())
        return hit

    sides = (addition.left, addition.right)
    convolved = any(walk.back(s, hit=module_call("conv"), into_functions=True) is not None for s in sides)
    embedded = any(walk.back(s, hit=module_call("embed"), into_functions=True) is not None for s in sides)
    return convolved and not embedded


def _is_addition(node: ast.AST, function: Function) -> bool:
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)


_TABLE_CALLS = ("cat", "stack", "from_pretrained", "Parameter", "tensor", "from_numpy", "FloatTensor",
                "Tensor", "as_tensor", "array", "unsqueeze", "to", "register_buffer", "copy_",
                "dropout", "Dropout", "flatten", "view", "reshape", "expand", "repeat", "interleave")


def _carries_table(call: ast.Call, function: Function) -> bool:
    name = last_name(call.func)
    attribute = self_attribute(call.func)
    if attribute is not None:
        built = function.cls.constructor(attribute).lower() if function.cls else ""
        return "dropout" in built or "drop" == attribute
    return name in _TABLE_CALLS or name.startswith(("stack", "cat"))


def _return_sites(walk, function: Function) -> Iterator[ast.AST]:
    yield from walk._callers(function) if hasattr(function.node, "name") else ()
