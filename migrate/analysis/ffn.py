"""Recognising position-wise feed-forward networks: `lin2(drop(act(lin1(x))))` in its spellings.

Three shapes are recognised inside an `nn.Module` class:
- attributes: two `nn.Linear` submodules applied in one expression or over several statements,
  with a functional (`F.relu`, `torch.relu`, `F.gelu`) or module (`self.act = nn.GELU()`)
  activation and optional dropout (module or `F.dropout`) between them;
- raw parameters: the same chain with `x @ self.w1 (+ self.b1)`, `torch.matmul` or `F.linear`;
- `nn.Sequential(Linear, ReLU|GELU, [Dropout], Linear, [Dropout])` built in `__init__`.

Only FFNs that sit in a transformer block count (`in_block`): see there for the criterion.
"""

from __future__ import annotations


from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import libcst as cst


from tf_migrate.analysis.activations import activation_of
from tf_migrate.analysis.dataflow import Binding, FunctionFlow
from tf_migrate.analysis.linear import is_linear_layer
from tf_migrate.analysis.names import argument, self_attribute
from tf_migrate.analysis.nodes import children, find

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

LINEAR = "torch.nn.Linear"
PARAMETER = "torch.nn.Parameter"
DROPOUT = "torch.nn.Dropout"
ACTIVATION_MODULES = ("torch.nn.ReLU", "torch.nn.GELU")
ACTIVATION_FUNCTIONS = (
    "torch.nn.functional.relu", "torch.nn.functional.gelu", "torch.relu",
)
# What a ReLU/GELU feed-forward may apply (the rule's scope), by `activations.activation_of` kind.
FFN_ACTIVATION_KINDS = frozenset({"relu", "gelu", "gelu_tanh", "gelu_sigmoid"})
_DROPOUT_FUNCTIONS = ("torch.nn.functional.dropout",)
_ATTENTION_CALLS = (
    "torch.softmax", "torch.nn.functional.softmax", "torch.nn.Softmax",
    "torch.nn.functional.scaled_dot_product_attention", "torch.nn.MultiheadAttention",
)
BUILTIN_LAYERS = ("torch.nn.TransformerEncoderLayer", "torch.nn.TransformerDecoderLayer", "torch.nn.Transformer")


class NotFeedForward(Exception):
    pass


class Refused(Exception):
    def __init__(self, line: int, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.line, self.reason, self.hint = line, reason, hint


@dataclass
class Projection:
    """One application of a projection: `self.fc(h)` or `h @ self.w (+ self.b)`."""

    node: cst.BaseExpression
    input: cst.BaseExpression
    weight: str  # the submodule (module form) or the weight parameter (raw form)
    bias: str | None = None  # raw form only: the bias parameter
    raw: bool = False


@dataclass
class FeedForward:
    cls: "ModuleClass"
    first: Projection
    second: Projection
    activation: cst.Call  # the node the rewrite replaces with the gated product
    gate_input: cst.BaseExpression  # what the activation was applied to (lin1's output)
    # The FFN input is a submodule call such as `self.norm(x)` (a pre-norm block): bind it to a
    # local before this statement, so the gate does not compute it a second time.
    hoist_before: cst.BaseStatement | None = None


@dataclass
class SequentialFeedForward:
    cls: "ModuleClass"
    attribute: str
    call: cst.Call
    first: cst.Call
    second: cst.Call
    dropout: cst.BaseExpression | None  # p of the Dropout between the projections
    trailing: cst.Call | None  # a Dropout after the second projection
    indices: tuple[int, int] = (0, 3)
    modules: list[str] = field(default_factory=list)


def _self_calls(ctx, node: cst.BaseExpression, cls, *callees: str) -> str | None:
    if isinstance(node, cst.Call) and cls.submodule_of(node.func, *callees) is not None:
        return self_attribute(node.func)
    return None


def _linear_like(ctx, cls, node: cst.BaseExpression) -> str | None:
    """`self.fc(x)` where fc is built like nn.Linear by a subclass or a factory (`Linear(d, h)`)."""
    if not isinstance(node, cst.Call) or self_attribute(node.func) not in cls.submodules:
        return None
    layer = is_linear_layer(ctx, cls, node.func)
    return self_attribute(node.func) if layer is not None and layer.linear_signature else None


def _parameter(cls, node: cst.CSTNode) -> str | None:
    sub = cls.submodule_of(node, PARAMETER)
    return sub.name if sub is not None else None


def projection(ctx: "FileContext", cls, node: cst.BaseExpression) -> Projection | None:
    """`node` as one projection application, or None."""
    name = _self_calls(ctx, node, cls, LINEAR) or _linear_like(ctx, cls, node)
    if name is not None and len(node.args) == 1 and not node.args[0].keyword:
        return Projection(node, node.args[0].value, name)
    bias = None
    core = node
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Add):
        bias = _parameter(cls, node.right)
        core = node.left if bias else node
    if isinstance(core, cst.BinaryOperation) and isinstance(core.operator, cst.MatrixMultiply):
        weight = _parameter(cls, core.right)
        return Projection(node, core.left, weight, bias, raw=True) if weight else None
    if isinstance(core, cst.Call) and ctx.names.is_call(core, "torch.matmul"):
        weight = _parameter(cls, argument(core, 1, "other"))
        return Projection(node, argument(core, 0, "input"), weight, bias, raw=True) if weight else None
    if isinstance(core, cst.Call) and bias is None and ctx.names.is_call(core, "torch.nn.functional.linear"):
        weight = _parameter(cls, argument(core, 1, "weight"))
        b = argument(core, 2, "bias")
        bias = _parameter(cls, b) if b is not None else None
        if weight and (b is None or bias):
            return Projection(node, argument(core, 0, "input"), weight, bias, raw=True)
    return None


def _activation_argument(ctx, cls, node: cst.BaseExpression) -> cst.BaseExpression | None:
    if isinstance(node, cst.Call) and not node.args and isinstance(node.func, cst.Attribute):
        return _other_spelling(ctx, cls, node)  # `x.relu()`
    if not isinstance(node, cst.Call) or len(node.args) < 1 or node.args[0].keyword:
        return None
    if ctx.names.callee(node) in ACTIVATION_FUNCTIONS:
        return node.args[0].value
    if len(node.args) == 1 and _self_calls(ctx, node, cls, *ACTIVATION_MODULES):
        return node.args[0].value
    return _other_spelling(ctx, cls, node)


def _other_spelling(ctx, cls, node: cst.Call) -> cst.BaseExpression | None:
    """A ReLU/GELU spelled otherwise: `x.relu()`, a project `gelu(x)`, `ACT2FN[...]`, `act_layer()`..."""
    found = activation_of(ctx, cls, node)
    if found is not None and found.argument is not None and found.kinds <= FFN_ACTIVATION_KINDS:
        return found.argument
    return None


def _dropout_argument(ctx, cls, node: cst.BaseExpression) -> cst.BaseExpression | None:
    if isinstance(node, cst.Call) and node.args and not node.args[0].keyword:
        if ctx.names.callee(node) in _DROPOUT_FUNCTIONS or _self_calls(ctx, node, cls, DROPOUT):
            return node.args[0].value
    return None


class _Tracer:
    """Follows a value backwards through local bindings in one method, remembering them."""

    def __init__(self, ctx, flow: FunctionFlow) -> None:
        self.ctx, self.flow = ctx, flow
        self.followed: list[Binding] = []

    def back(self, node: cst.BaseExpression) -> cst.BaseExpression:
        if not isinstance(node, cst.Name):
            return node
        statement = self.flow.statement_of(node)
        if statement is None or not self.flow.contains(statement):
            return node
        found = self.flow.definition(node.value, statement)
        if not isinstance(found, Binding):
            return node
        self.followed.append(found)
        return found.value

    def check_single_use(self) -> None:
        for binding in self.followed:
            if len(self.flow.uses(binding)) != 1:
                raise Refused(self.ctx.line(binding.statement),
                              f"`{binding.name}` inside the feed-forward is read more than once",
                              "compute the FFN in one chain whose intermediate values are not reused")


def _calls_and_ops(node: cst.CSTNode) -> list[cst.BaseExpression]:
    return find(node, lambda n: isinstance(n, (cst.Call, cst.BinaryOperation)))


def feed_forwards(ctx: "FileContext", cls, method: cst.FunctionDef) -> Iterator[FeedForward]:
    """Every `second(drop(act(first(x))))` chain in `method`; raises Refused for unsafe ones."""
    flow = FunctionFlow(ctx, method)
    for found, tracer in _chains(ctx, cls, flow, method):
        if not _changes_width(ctx, cls, found.first, found.second):
            tracer.check_single_use()
            _check_input(ctx, flow, found)
            yield found


def _chains(ctx, cls, flow: FunctionFlow, method: cst.FunctionDef) -> Iterator[tuple[FeedForward, _Tracer]]:
    for node in _calls_and_ops(method.body):
        second = projection(ctx, cls, node)
        if second is not None:
            tracer = _Tracer(ctx, flow)
            found = _chain(ctx, cls, tracer, second)
            if found is not None:
                yield found, tracer


def split_activations(ctx: "FileContext", cls, method: cst.FunctionDef) -> Iterator[cst.Call]:
    """Activations of a Linear's output with no second projection in this method (an MLP head's
    activation has one, which changes the width)."""
    flow = FunctionFlow(ctx, method)
    heads = {id(found.activation) for found, _ in _chains(ctx, cls, flow, method)
             if _changes_width(ctx, cls, found.first, found.second)}
    for node in _calls_and_ops(method.body):
        argument_ = _activation_argument(ctx, cls, node)
        if argument_ is not None and id(node) not in heads:
            first = projection(ctx, cls, _Tracer(ctx, flow).back(argument_))
            if first is not None:
                yield node


def _chain(ctx, cls, tracer: _Tracer, second: Projection) -> FeedForward | None:
    value = tracer.back(second.input)
    while (inner := _dropout_argument(ctx, cls, value)) is not None:
        value = tracer.back(inner)
    gate_input = _activation_argument(ctx, cls, value)
    if gate_input is None:
        return None
    first = projection(ctx, cls, tracer.back(gate_input))
    if first is None or first.weight == second.weight or first.raw != second.raw:
        return None
    return FeedForward(cls, first, second, value, gate_input)


def _changes_width(ctx, cls, first: Projection, second: Projection) -> bool:
    """`Linear(d, h)` then `Linear(h, n_classes)`: an MLP head, not a feed-forward that maps the
    residual stream back to its own width."""
    if first.raw:
        return False
    width_in = argument(cls.submodules[first.weight].call, 0, "in_features")
    width_out = argument(cls.submodules[second.weight].call, 1, "out_features")
    return width_in is not None and width_out is not None and _width(ctx, width_in) != _width(ctx, width_out)


def _width(ctx, size: cst.BaseExpression) -> str:
    """A size's spelling, with `self.d_model` read as `d_model` (set from it in __init__)."""
    return ctx.code(size).replace(" ", "").replace("self.", "")


def _check_input(ctx, flow: FunctionFlow, ffn: FeedForward) -> None:
    """The gate reads the FFN input a second time: it must be a plain name still holding it."""
    x = ffn.first.input
    line = ctx.line(ffn.activation)
    if _hoistable(ffn.cls, x) and flow.statement_of(ffn.first.node) is flow.statement_of(ffn.activation):
        ffn.hoist_before = flow.statement_of(ffn.activation)
        return
    if not isinstance(x, cst.Name) and self_attribute(x) is None:
        raise Refused(line, f"the feed-forward input `{ctx.code(x)}` is an expression; the gate "
                      "projection would compute it a second time",
                      "bind the FFN input to a local name first")
    if isinstance(x, cst.Name):
        at_first = flow.statement_of(ffn.first.node)
        at_act = flow.statement_of(ffn.activation)
        if at_first is not at_act:
            before, now = flow.definition(x.value, at_first), flow.definition(x.value, at_act)
            if getattr(before, "statement", None) is not getattr(now, "statement", None):
                raise Refused(line, f"`{x.value}` is rebound between the first projection and "
                              "the activation", "apply the activation in the same statement")


def _hoistable(cls, x: cst.BaseExpression) -> bool:
    """`self.<submodule>(name)`: one call of a module of this class on a plain name."""
    return (
        isinstance(x, cst.Call) and cls.submodule_of(x.func) is not None and len(x.args) == 1
        and isinstance(x.args[0].value, cst.Name) and x.args[0].keyword is None
    )


def sequential_feed_forward(ctx: "FileContext", cls, attribute: str) -> SequentialFeedForward | None:
    """`self.<attribute> = nn.Sequential(Linear, ReLU|GELU, [Dropout], Linear, [Dropout])`."""
    sub = cls.submodules[attribute]
    if sub.callee != "torch.nn.Sequential" or any(a.keyword or a.star for a in sub.call.args):
        return None
    items = [a.value for a in sub.call.args]
    kinds = [ctx.names.callee(i) if isinstance(i, cst.Call) else None for i in items]
    if len(items) < 3 or kinds[0] != LINEAR or kinds[1] not in ACTIVATION_MODULES:
        return None
    position, dropout = 2, None
    if kinds[position] == DROPOUT:
        dropout = argument(items[position], 0, "p") or cst.Float("0.5")
        position += 1
    if position >= len(items) or kinds[position] != LINEAR:
        return None
    trailing = None
    if position + 1 < len(items):
        if position + 2 != len(items) or kinds[position + 1] != DROPOUT:
            return None
        trailing = items[position + 1]
    return SequentialFeedForward(cls, attribute, sub.call, items[0], items[position], dropout,
                                 trailing, (0, position))


def _is_attention(ctx, cls) -> bool:
    for call in _calls_and_ops(cls.node):
        if isinstance(call, cst.Call) and (
            ctx.names.callee(call) in _ATTENTION_CALLS
            or (isinstance(call.func, cst.Attribute) and call.func.attr.value == "softmax")
        ):
            return True
    return False


def attention_classes(ctx: "FileContext") -> set[str]:
    """Classes that compute attention, and attention wrappers that directly hold one.

    A wrapper must be named for attention (`BertAttention` around `BertSelfAttention`): a block
    also holds an attention, and counting blocks would make every model class look like one.
    """
    direct = {c.node.name.value for c in ctx.module_classes if _is_attention(ctx, c)}
    wrappers = {c.node.name.value for c in ctx.module_classes
                if any(w in c.node.name.value.lower() for w in ("attn", "attention"))
                and any(isinstance(s.call.func, cst.Name) and s.call.func.value in direct
                        for s in c.submodules.values())}
    return direct | wrappers


def _instantiates(node: cst.CSTNode, names: set[str]) -> set[str]:
    return {c.func.value for c in _calls_and_ops(node)
            if isinstance(c, cst.Call) and isinstance(c.func, cst.Name) and c.func.value in names}


def in_block(ctx: "FileContext", cls, attention: set[str]) -> bool:
    """Whether an FFN held by `cls` sits in a transformer block.

    True when `cls` itself holds an attention (or is one), or when some function of the file
    that builds a `cls` also builds an attention in the same body (a block's `__init__`, or a
    `make_model` that passes both to a layer). An MLP head built next to an encoder stack, not
    next to an attention, does not count.
    """
    name = cls.node.name.value
    if name in attention or _instantiates(cls.node, attention):
        return True
    called_by_function = ctx.memo("ffn.called", lambda: _called_names(ctx))
    return any(name in called and (called & attention or _BUILDS_MHA in called)
               for called in called_by_function)


# Stands for a built `nn.MultiheadAttention` among the names a function calls (never a real name).
_BUILDS_MHA = "<nn.MultiheadAttention>"


def _called_names(ctx: "FileContext") -> list[set[str]]:
    """Per function of the file, the plain names it calls, nested functions' calls included (and
    whether it builds torch's `nn.MultiheadAttention`, an attention under any alias). One walk."""
    found: list[set[str]] = []
    mha_named = "MultiheadAttention" in ctx.text  # else no call can resolve to it: skip resolving
    stack: list[tuple[cst.CSTNode, tuple[set[str], ...]]] = [(ctx.module, ())]
    while stack:
        node, owners = stack.pop()
        if isinstance(node, cst.FunctionDef):
            found.append(set())
            owners = owners + (found[-1],)
        elif isinstance(node, cst.Call) and owners:
            called = {node.func.value} if isinstance(node.func, cst.Name) else set()
            if mha_named and ctx.names.callee(node) == "torch.nn.MultiheadAttention":
                called.add(_BUILDS_MHA)
            for names in owners:
                names |= called
        stack.extend((child, owners) for child in children(node))
    return found


def builtin_layers(ctx: "FileContext") -> Iterator[cst.Call]:
    if not any(name.rsplit(".", 1)[1] in ctx.text for name in BUILTIN_LAYERS):
        return  # no spelling of these classes, aliased or not, can avoid naming them
    for call in _calls_and_ops(ctx.module):
        if isinstance(call, cst.Call) and ctx.names.callee(call) in BUILTIN_LAYERS:
            yield call
