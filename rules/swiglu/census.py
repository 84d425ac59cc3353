"""TFM301's census: two projections (Linear, Conv1D or a 1x1 conv, or raw weights) with an
element-wise nonlinearity between them, inside a transformer block.

Found in any method of a class, in one expression or over statements, with any activation
(function, method, module, looked up by name), and in `nn.Sequential(Linear, act, ..., Linear)`.
A gated form (`act(w1(x)) * w3(x)`) is already modern and is not a component. "Inside a block"
is the matcher's criterion (analysis/ffn.py `in_block`): an MLP head or a timestep embedding
next to no attention is not an FFN. Built-in `nn.Transformer*` layers are components too.
"""

from __future__ import annotations

import ast
import re
from typing import Iterator

from tf_migrate.analysis.census import (
    ACTIVATIONS, Function, builtin_layers, enclosing_class, is_activation, last_name, line_span,
    product_operands, projection_name, self_attribute, unit_projection_class, walker,
)
from tf_migrate.analysis.ffn import attention_classes, in_block
from tf_migrate.analysis.project.index import dotted_text
from tf_migrate.analysis.walked import walked
from tf_migrate.engine.rule import Component


def components(ctx, code: str) -> Iterator[Component]:
    """The census, computed once per file version: the rule's check asks it too (`_replayed_elsewhere`)."""
    return iter(ctx.memo(f"swiglu.components.{code}", lambda: list(_components(ctx, code))))


def _components(ctx, code: str) -> Iterator[Component]:
    index = walker(ctx).index
    blocks = _block_classes(ctx)
    found = list(_chains(ctx, blocks)) + list(_sequentials(index, blocks, code))
    found += list(_matcher_shapes(ctx, code, found))
    yield from found
    for call, cls, name in builtin_layers(index):
        if not _torch_layer(ctx, call):
            continue  # a project class named like torch's (fairseq's `TransformerEncoderLayer(args)`)
        yield Component(code, "builtin-layer", cls, call.lineno, call.end_lineno or call.lineno,
                        f"built-in `nn.{name}`")


def _matcher_shapes(ctx, code: str, found: list[Component]) -> Iterator[Component]:
    """What the matcher reads as an FFN (its own recognisers: chains, Sequentials, temporal conv
    pairs, split halves) in a block class, where the name-based walk above found nothing: a
    finding of the rule always has a component (IfExp activations, Swish modules, wrappers)."""
    import libcst as cst

    from tf_migrate.analysis import ffn as recognise
    from tf_migrate.analysis.dataflow import FunctionFlow

    attention = attention_classes(ctx)
    covered = [(c.start_line, c.end_line) for c in found]

    def new(cls, node, what: str) -> Component | None:
        line = ctx.line(node)
        if any(a <= line <= b for a, b in covered):
            return None
        covered.append((line, line))
        span = (ctx.line(cls.node), ctx.line(cls.node) + ctx.code(cls.node).count("\n"))
        return Component(code, "ffn", cls.qualname, line, line, what, scopes=(span,))

    for cls in ctx.module_classes:
        if not recognise.in_block(ctx, cls, attention):
            continue
        shapes = []
        from tf_migrate.rules.swiglu import _branch_built_layer_list

        chosen = _branch_built_layer_list(ctx, cls)
        if chosen is not None:
            loop = next(n for n in recognise.find(cls.node, lambda n: isinstance(n, cst.For)) if ctx.line(n) == chosen.line)
            shapes.append((loop, "a layer list applied in turn: projection, dropout, Linear"))
        temporal = recognise.temporal_conv(ctx, cls)
        if temporal is not None:
            method = next(m for m in cls.methods.values() if ctx.line(m) <= temporal.line <= ctx.line(m) + ctx.code(m).count("\n"))
            act = next((n for n in recognise._calls_and_ops(method) if ctx.line(n) == temporal.line), method)
            shapes.append((act, f"`{temporal.first}` -> activation -> `{temporal.second}` (Conv1d)"))
        for method in cls.methods.values():
            for ffn, _ in recognise._chains(ctx, cls, FunctionFlow(ctx, method), method):
                shapes.append((ffn.activation, f"`{ffn.first.weight}` -> activation -> `{ffn.second.weight}`"))
            for act in recognise.split_activations(ctx, cls, method):
                shapes.append((act, "an activation of a Linear whose second projection is in another module"))
        for attribute in cls.submodules:
            sequential = recognise.sequential_feed_forward(ctx, cls, attribute)
            if sequential is not None:
                shapes.append((sequential.call, "nn.Sequential of a projection, an activation and a projection"))
        for node, what in shapes:
            if isinstance(node, cst.CSTNode):
                component = new(cls, node, what)
                if component is not None:
                    yield component


def _torch_layer(ctx, call: ast.Call) -> bool:
    """The callee is torch's class (or cannot be resolved at all), not a project class."""
    text = dotted_text(call.func)
    symbols = ctx.project.resolve_dotted(ctx.source_path, text) if text else []
    return not symbols or any(s.kind == "external" and s.qualified.startswith("torch.") for s in symbols)


_FFN_NAMES = re.compile(r"feed_?forward|ffn|positionwise|intermediate", re.IGNORECASE)


def _block_classes(ctx) -> dict[str, bool]:
    """Class -> whether the matcher counts it as a block (else it is named for a block's FFN,
    `PositionwiseFeedForward`, `Mlp`, and its block is built in another file)."""
    attention = attention_classes(ctx)
    found = {}
    for c in ctx.module_classes:
        if in_block(ctx, c, attention):
            found[c.qualname] = True
        elif _FFN_NAMES.search(c.node.name.value):
            found[c.qualname] = False
    return found


_NOT_A_BLOCK = "the matcher counts an FFN only in a class built next to an attention in this file"


def _is_projection(node: ast.AST, function: Function, index) -> bool:
    name = projection_name(node, function, index)
    if name is None:
        return False
    attribute = self_attribute(node.func) if isinstance(node, ast.Call) else None
    if attribute is None or function.cls is None:
        members = _members(function, node)
        return not members or any(unit_projection_class(m) for m in members)
    return unit_projection_class(function.cls.constructor_call(attribute))


def _members(function: Function, node: ast.AST) -> list[ast.Call]:
    """The layers built into the ModuleList a loop applies (`for layer in self.layers: x = layer(x)`):
    its items (`nn.ModuleList([Block(...) for _ in ...])`) and what `__init__` appends to it;
    empty when that cannot be seen (a helper builds the list, or the call is no loop variable)."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and function.cls is not None):
        return []
    group = self_attribute(function.iterated.get(node.func.id))
    if group is None:
        return []
    found = []
    for value in function.cls.attributes.get(group, ()):
        if isinstance(value, ast.Call) and last_name(value.func) in ("ModuleList", "Sequential"):
            items = [i for a in value.args for i in (a.elts if isinstance(a, (ast.List, ast.Tuple)) else
                                                     [a.elt] if isinstance(a, ast.ListComp) else [a])]
            found.extend(i for i in items if isinstance(i, ast.Call))
    for call in walked(function.cls.node):
        if isinstance(call, ast.Call) and last_name(call.func) == "append" and isinstance(call.func, ast.Attribute) \
                and self_attribute(call.func.value) == group and call.args and isinstance(call.args[0], ast.Call):
            found.append(call.args[0])
    return found


def _chains(ctx, blocks: dict[str, bool]) -> Iterator[Component]:
    walk = walker(ctx)
    index = walk.index
    seen: set[int] = set()
    for second in index.calls + [n for n in walked(index.tree) if isinstance(n, ast.BinOp)]:
        function = index.function_of(second)
        if function.cls is None or function.cls.qualname not in blocks \
                or not _is_projection(second, function, index):
            continue
        source = _input(second, function)
        if source is None:
            continue

        def stop(n, f):
            return _is_projection(n, f, index) or product_operands(n) is not None \
                or isinstance(n, ast.arg)

        act = walk.back(source, hit=is_activation, stop=stop)
        if act is None or id(act) in seen or not isinstance(act, ast.Call):
            continue
        inner = act.args[0] if act.args else (act.func.value if isinstance(act.func, ast.Attribute) else None)
        first = walk.back(inner, hit=lambda n, f: _is_projection(n, f, index),
                          stop=lambda n, f: isinstance(n, ast.arg) or _mixing_layer(n, f)) if inner is not None else None
        if first is None or first is second or _gated(walk, source, index):
            continue
        seen.add(id(act))
        start, end = line_span(first, act, second)
        cls = function.cls
        names = [projection_name(n, index.function_of(n), index) for n in (first, second)]
        anchors = tuple(sorted({v.lineno for a in names for v in cls.attributes.get(a, ())}
                               | set(_configured_at(index, cls, act))))
        yield Component("TFM301", "ffn", cls.qualname, start, end,
                        f"`{names[0]}` -> {last_name(act) or 'activation'} -> `{names[1]}`",
                        anchors, (function.lines, (cls.node.lineno, cls.node.end_lineno or cls.node.lineno)),
                        _activation_step(act, cls) or ("" if blocks[cls.qualname] else _NOT_A_BLOCK))
    yield from _halves(walk, blocks, seen, attention_classes(ctx))


def _halves(walk, blocks: dict[str, bool], seen: set[int], attending: set[str]) -> Iterator[Component]:
    """An activation of a projection that `forward` returns: the FFN's second projection is in
    another module (BERT's Intermediate/Output pair). Not in a class that computes attention (an
    attention's scoring layer, `tanh(proj(x))`, is no half FFN)."""
    index = walk.index
    for act in index.calls:
        function = index.function_of(act)
        if id(act) in seen or function.cls is None or function.cls.qualname not in blocks \
                or function.cls.node.name in attending \
                or getattr(function.node, "name", "") != "forward" or not is_activation(act, function):
            continue
        inner = act.args[0] if act.args else None
        first = walk.back(inner, hit=lambda n, f: _is_projection(n, f, index),
                          stop=lambda n, f: isinstance(n, ast.arg) or _mixing_layer(n, f)) if inner is not None else None
        returned = walk.forward(act, hit=lambda n, f: isinstance(index.parents.get(n), ast.Return),
                                follow_call=lambda c, f: not _is_projection(c, f, index))
        if first is None or returned is None:
            continue
        if walk.forward(act, hit=lambda n, f: _is_projection(n, f, index), follow_call=lambda c, f: True):
            continue
        cls = function.cls
        yield Component("TFM301", "ffn", cls.qualname, first.lineno, act.end_lineno or act.lineno,
                        f"`{projection_name(first, function, index)}` -> {last_name(act)}, returned: "
                        "the second projection is in another module",
                        scopes=(function.lines, (cls.node.lineno, cls.node.end_lineno or cls.node.lineno)),
                        step="the FFN's two projections live in two modules")


def _configured_at(index, cls, act: ast.Call) -> list[int]:
    """The lines of this file that build `cls` when its activation is built from a parameter of
    `__init__` (`self.act = act_layer()`): each of them chooses the activation, so a finding there
    (a caller passing something that is not an activation class) belongs to this FFN."""
    attribute = self_attribute(act.func)
    init = cls.methods.get("__init__")
    if attribute is None or init is None:
        return []
    parameters = {a.arg for a in init.args.args + init.args.kwonlyargs}
    if not any(isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id in parameters
               for v in cls.attributes.get(attribute, ())):
        return []
    name = cls.node.name
    return [c.lineno for c in index.calls if last_name(c.func) == name and enclosing_class(index, c) is not cls]


def _mixing_layer(node: ast.AST, function: Function) -> bool:
    """A module of the class applied between the first projection and the activation that is
    not a dropout or a norm (SegFormer's depthwise conv over the image grid): the chain is no
    position-wise Linear-activation-Linear FFN."""
    attribute = self_attribute(node.func) if isinstance(node, ast.Call) else None
    if attribute is None or function.cls is None:
        return False
    built = function.cls.constructor_call(attribute)
    name = last_name(built.func) if built is not None else ""
    return not any(word in name.lower() for word in ("dropout", "norm")) and not is_activation(node, function)


def _activation_step(act: ast.Call, cls) -> str:
    """Why the matcher may not know this activation: not ReLU/GELU, or a module built by a name
    it cannot resolve (`act_layer()`, `ACT2FN[...]`)."""
    attribute = self_attribute(act.func)
    if attribute is None:
        name = last_name(act)
        return "" if name.lower() in ("relu", "gelu", "silu", "swish") else \
            f"the activation is `{name}`; the matcher knows ReLU, GELU and SiLU"
    values = cls.attributes.get(attribute, ())
    built = next((v for v in values), None)
    if isinstance(built, ast.Call) and last_name(built.func) in ("ReLU", "GELU", "SiLU"):
        return ""
    code = ast.unparse(built) if built is not None else "?"
    return (f"the activation `self.{attribute}` is `{code}` (line {getattr(built, 'lineno', '?')}), "
            "which the matcher cannot resolve to ReLU, GELU or SiLU")


def _input(projection: ast.AST, function: Function) -> ast.AST | None:
    pair = product_operands(projection)
    if pair is not None:
        return pair[0]
    return projection.args[0] if isinstance(projection, ast.Call) and projection.args else None


def _gated(walk, source: ast.AST, index) -> bool:
    """`act(w1(x)) * w3(x)`: a product of two projected branches is already a gated FFN."""
    def hit(node, function):
        if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)):
            return False
        return all(walk.back(side, hit=lambda n, f: projection_name(n, f, index) is not None,
                             stop=lambda n, f: isinstance(n, ast.arg)) is not None
                   for side in (node.left, node.right))

    return walk.back(source, hit=hit, stop=lambda n, f: projection_name(n, f, index) is not None) is not None


def _sequentials(index, blocks: dict[str, bool], code: str) -> Iterator[Component]:
    for call in index.calls:
        if last_name(call.func) != "Sequential" or len(call.args) < 3:
            continue
        cls = enclosing_class(index, call)
        if cls is None or cls.qualname not in blocks:
            continue
        items = [a for a in call.args if isinstance(a, ast.Call)]
        kinds = ["linear" if unit_projection_class(a) else
                 "act" if last_name(a.func).lower() in ACTIVATIONS or "activation" in last_name(a.func).lower()
                 else "drop" if "dropout" in last_name(a.func).lower() else "other" for a in items]
        text = "".join(k[0] for k in kinds)  # l, a, d, o
        if len(items) != len(call.args) or not re.fullmatch(r"lad*ld*", text):
            continue  # only projection, activation, [dropout], projection, [dropout]
        yield Component(code, "ffn", cls.qualname, call.lineno, call.end_lineno or call.lineno,
                        "nn.Sequential of a projection, an activation and a projection",
                        scopes=((cls.node.lineno, cls.node.end_lineno or cls.node.lineno),),
                        step="" if blocks[cls.qualname] else _NOT_A_BLOCK)
