"""Built-in `nn.TransformerEncoderLayer` / `DecoderLayer` and the `nn.TransformerEncoder` /
`Decoder` that stacks them, and whole `nn.Transformer`s, found inside one function (usually a
model's `__init__`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import libcst as cst

from tf_migrate.analysis.dataflow import Binding, FunctionFlow
from tf_migrate.analysis.names import argument, may_call, self_attribute
from tf_migrate.analysis.nodes import find_types

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext

LAYERS = {"torch.nn.TransformerEncoderLayer": "torch.nn.TransformerEncoder",
          "torch.nn.TransformerDecoderLayer": "torch.nn.TransformerDecoder"}
NORM_FIRST_POSITION = 7  # d_model, nhead, dim_feedforward, dropout, activation, eps, batch_first
TRANSFORMER = "torch.nn.Transformer"
# d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout, activation,
# custom_encoder, custom_decoder, layer_norm_eps, batch_first, norm_first
_TRANSFORMER_NORM_FIRST, _CUSTOM_ENCODER, _CUSTOM_DECODER = 11, 7, 8


@dataclass
class BuiltinLayer:
    call: cst.Call
    norm_first: cst.BaseExpression | None
    stack: cst.Call | None  # the nn.TransformerEncoder/Decoder(...) that stacks it
    stack_attr: str | None  # self.<attr> = stack


def builtin_layers(ctx: "FileContext", function: cst.FunctionDef) -> Iterator[BuiltinLayer]:
    if not may_call(ctx, *LAYERS):
        return iter(())
    return _builtin_layers(ctx, function)


def _builtin_layers(ctx: "FileContext", function: cst.FunctionDef) -> Iterator[BuiltinLayer]:
    flow = None  # built for the first layer found
    calls = find_types(function, cst.Call)
    for call in calls:
        stack_name = LAYERS.get(ctx.names.callee(call))
        if stack_name is None:
            continue
        if flow is None:
            flow = FunctionFlow(ctx, function)
        stack = next((s for s in calls if ctx.names.callee(s) == stack_name
                      and _stacks(ctx, flow, s, call)), None)
        attr = None
        if stack is not None:
            small = flow.statement_of(stack)
            small = small.body[0] if isinstance(small, cst.SimpleStatementLine) else None
            if isinstance(small, cst.Assign) and small.value is stack and len(small.targets) == 1:
                attr = self_attribute(small.targets[0].target)
        yield BuiltinLayer(call, argument(call, NORM_FIRST_POSITION, "norm_first"), stack, attr)


@dataclass
class BuiltinTransformer:
    call: cst.Call
    norm_first: cst.BaseExpression | None
    custom: cst.BaseExpression | None  # custom_encoder= or custom_decoder=, when given


def builtin_transformers(ctx: "FileContext", function: cst.FunctionDef) -> Iterator[BuiltinTransformer]:
    """`nn.Transformer(...)` calls: their encoder and decoder always end in a norm of their own."""
    if not may_call(ctx, TRANSFORMER):
        return iter(())
    return _builtin_transformers(ctx, function)


def _builtin_transformers(ctx: "FileContext", function: cst.FunctionDef) -> Iterator[BuiltinTransformer]:
    for call in find_types(function, cst.Call):
        if ctx.names.callee(call) == TRANSFORMER:
            custom = argument(call, _CUSTOM_ENCODER, "custom_encoder") or argument(
                call, _CUSTOM_DECODER, "custom_decoder")
            yield BuiltinTransformer(call, argument(call, _TRANSFORMER_NORM_FIRST, "norm_first"), custom)


def transformer_subclass_init(ctx: "FileContext", cls) -> Iterator[BuiltinTransformer]:
    """`class Seq2Seq(nn.Transformer)`: the `super().__init__(...)` call of its `__init__`, which
    takes nn.Transformer's arguments."""
    if not any(ctx.names.imported(base.value) == TRANSFORMER for base in cls.node.bases):
        return
    init = cls.methods.get("__init__")
    for call in find_types(init, cst.Call) if init is not None else ():
        func = call.func
        if (isinstance(func, cst.Attribute) and func.attr.value == "__init__" and isinstance(func.value, cst.Call)
                and isinstance(func.value.func, cst.Name) and func.value.func.value == "super"):
            custom = argument(call, _CUSTOM_ENCODER, "custom_encoder") or argument(
                call, _CUSTOM_DECODER, "custom_decoder")
            yield BuiltinTransformer(call, argument(call, _TRANSFORMER_NORM_FIRST, "norm_first"), custom)


def _stacks(ctx, flow: FunctionFlow, stack: cst.Call, layer: cst.Call) -> bool:
    first = argument(stack, 0, "encoder_layer") or argument(stack, 0, "decoder_layer")
    if first is layer:
        return True
    if isinstance(first, cst.Name):
        definition = flow.definition(first.value, flow.statement_of(stack))
        return isinstance(definition, Binding) and definition.value is layer
    return False


def with_norm_first(call: cst.Call) -> cst.Call:
    """The layer call with `norm_first=True` (replacing an explicit False)."""
    true = cst.Name("True")
    if any(a.keyword and a.keyword.value == "norm_first" for a in call.args):
        return call.with_changes(args=[a.with_changes(value=true) if a.keyword and
                                       a.keyword.value == "norm_first" else a for a in call.args])
    return call.with_changes(args=_append(list(call.args), cst.parse_expression("f(norm_first=True)").args[0]))


def stack_with_norm(ctx, layer: BuiltinLayer, nn: str, new_layer: cst.Call) -> cst.Call:
    """The stack call with `norm=nn.LayerNorm(d_model, eps=..., bias=...)` as the layer has."""
    d_model = argument(layer.call, 0, "d_model")
    eps = argument(layer.call, 5, "layer_norm_eps")
    bias = argument(layer.call, 99, "bias")
    text = f"{nn}.LayerNorm({ctx.code(d_model)}"
    text += f", eps={ctx.code(eps)}" if eps is not None else ""
    text += f", bias={ctx.code(bias)}" if bias is not None else ""
    arg = cst.parse_expression(f"f(norm={text}))").args[0]
    args = [a.with_changes(value=new_layer) if a.value is layer.call else a for a in layer.stack.args]
    return layer.stack.with_changes(args=_append(args, arg))


def _append(args: list[cst.Arg], new: cst.Arg) -> list[cst.Arg]:
    """Add a keyword argument last, in the call's own layout (one line, or one per line)."""
    if not args:
        return [new]
    last = args[-1]
    if last.comma is cst.MaybeSentinel.DEFAULT:
        comma = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
        return args[:-1] + [last.with_changes(comma=comma), new]
    between = args[-2].comma if len(args) > 1 else last.comma
    return args[:-1] + [last.with_changes(comma=between), new.with_changes(comma=last.comma)]
