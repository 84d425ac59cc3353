"""Recognising position-wise feed-forward networks: `lin2(drop(act(lin1(x))))` in its spellings.

Three shapes are recognised inside an `nn.Module` class:
- attributes: two `nn.Linear` (or kernel-1 `nn.Conv1d`) submodules applied in one expression or over several statements,
  with a ReLU/GELU (`activations.activation_of`: `F.relu`, `h.relu()`, `self.act = nn.GELU()`,
  a file-local GELU, `act_layer()`, ...) and optional dropout (module or `F.dropout`) between them;
- raw parameters: the same chain with `x @ self.w1 (+ self.b1)`, `torch.matmul` or `F.linear`;
- `nn.Sequential(Linear, ReLU|GELU, [Dropout], Linear, [Dropout])` built in `__init__`.

Only FFNs that sit in a transformer block count (`in_block`): see there for the criterion. An
attention class computes softmax itself or through a function of the file.
"""

from __future__ import annotations


import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterator

import libcst as cst


from tf_migrate.analysis.activations import Activation, activation_of
from tf_migrate.analysis.dataflow import Binding, FunctionFlow, binds
from tf_migrate.analysis.legacy_attention import classifier_softmaxes
from tf_migrate.analysis.linear import LinearLayer, is_linear_layer, transposed_linear, wrapped_linear
from tf_migrate.analysis.symbols import is_parameter, parameter_default, symbols_of
from tf_migrate.analysis.names import argument, int_value, may_call, self_attribute
from tf_migrate.analysis.project.index import absolute
from tf_migrate.analysis.nodes import find, find_types

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

LINEAR = "torch.nn.Linear"
CONV1D = "torch.nn.Conv1d"  # kernel size 1 over channels: a Linear applied per position
PARAMETER = "torch.nn.Parameter"
DROPOUT = "torch.nn.Dropout"
LAYER_NORM = "torch.nn.LayerNorm"
ACTIVATION_MODULES = ("torch.nn.ReLU", "torch.nn.GELU")
ACTIVATION_FUNCTIONS = (
    "torch.nn.functional.relu", "torch.nn.functional.gelu", "torch.relu",
)
# What a ReLU/GELU feed-forward may apply (the rule's scope), by `activations.activation_of` kind
# (a Swish FFN, `x * sigmoid(x)`, becomes SwiGLU just the same).
FFN_ACTIVATION_KINDS = frozenset({"relu", "gelu", "gelu_tanh", "gelu_sigmoid", "silu"})
# Options a configured choice (`ACT2FN[config.act]`, `get_activation_fn(args.act)`) may offer
# beside those: elementwise functions a config can name. The gate replaces the whole choice.
_CHOICE_KINDS = frozenset({"tanh", "sigmoid", "mish", "leaky_relu", "elu", "softplus", "relu6", "hardswish",
                           "identity", "elementwise", "configured"})
_CHOICES = ("table (key not known)", "getter (name not known)", "conditional")


def ffn_activation(found: "Activation | None") -> bool:
    """Whether a feed-forward may apply `found`: ReLU, GELU (any approximation) or SiLU, or a
    choice left to the configuration among elementwise functions that offers one of them."""
    if found is None or not found.kinds:
        return False
    if found.kinds <= FFN_ACTIVATION_KINDS:
        return True
    return any(choice in found.construct for choice in _CHOICES) and bool(found.kinds & FFN_ACTIVATION_KINDS) \
        and found.kinds <= FFN_ACTIVATION_KINDS | _CHOICE_KINDS
_DROPOUT_FUNCTIONS = ("torch.nn.functional.dropout",)
_METADATA = ("dtype", "shape", "device", "ndim", "size", "dim")  # reads that are not of the values
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
    transposed: LinearLayer | None = None  # a Conv1D-style layer (weight stored (in, out))


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
    # The FFN input name is rebound before the activation (`x = self.fc1(x)`, `x = self.act(x)`):
    # the gate is applied where the first projection is, which still reads the input.
    gate_at_first: bool = False


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
    norm: cst.Call | None = None  # a LayerNorm first in the Sequential (pre-norm inside the FFN)
    inner: str = ""  # the projections are Linear wrappers holding the nn.Linear as `.<inner>`


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


def _transposed(ctx, cls, node: cst.BaseExpression) -> LinearLayer | None:
    """`self.c_fc(x)` where c_fc is built by a Conv1D-style class (`linear.transposed_linear`)."""
    name = self_attribute(node.func) if isinstance(node, cst.Call) else None
    if name is None or name not in cls.submodules or not isinstance(cls.submodules[name].call, cst.Call):
        return None
    return transposed_linear(ctx, cls.submodules[name].call)


def _parameter(cls, node: cst.CSTNode) -> str | None:
    sub = cls.submodule_of(node, PARAMETER)
    return sub.name if sub is not None else None


def pointwise_conv(call: cst.Call) -> bool:
    """`nn.Conv1d(c_in, c_out, kernel_size=1)` with default stride, padding, dilation and groups."""
    if int_value(argument(call, 2, "kernel_size")) != 1:
        return False
    defaults = {"stride": (3, 1), "padding": (4, 0), "dilation": (5, 1), "groups": (6, 1)}
    return all(argument(call, i, k) is None or int_value(argument(call, i, k)) == v for k, (i, v) in defaults.items())


def projection(ctx: "FileContext", cls, node: cst.BaseExpression) -> Projection | None:
    """`node` as one projection application, or None."""
    name = _self_calls(ctx, node, cls, LINEAR, CONV1D)
    if name is not None and cls.submodules[name].callee == CONV1D and not pointwise_conv(cls.submodules[name].call):
        name = None
    name = name or _linear_like(ctx, cls, node)
    if name is not None and len(node.args) == 1 and not node.args[0].keyword:
        return Projection(node, node.args[0].value, name)
    transposed = _transposed(ctx, cls, node)
    if transposed is not None and len(node.args) == 1 and not node.args[0].keyword and not node.args[0].star:
        return Projection(node, node.args[0].value, self_attribute(node.func), transposed=transposed)
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
    if ctx.names.is_call(node, *ACTIVATION_FUNCTIONS):
        return node.args[0].value
    if len(node.args) == 1 and _self_calls(ctx, node, cls, *ACTIVATION_MODULES):
        return node.args[0].value
    return _other_spelling(ctx, cls, node)


def _other_spelling(ctx, cls, node: cst.Call) -> cst.BaseExpression | None:
    """A ReLU/GELU spelled otherwise: `x.relu()`, a project `gelu(x)`, `ACT2FN[...]`, `act_layer()`..."""
    found = activation_of(ctx, cls, node)
    if found is not None and found.argument is not None and ffn_activation(found):
        return found.argument
    return None


def _dropout_argument(ctx, cls, node: cst.BaseExpression) -> cst.BaseExpression | None:
    if isinstance(node, cst.Call) and node.args and not node.args[0].keyword:
        if ctx.names.is_call(node, *_DROPOUT_FUNCTIONS) or _self_calls(ctx, node, cls, DROPOUT):
            return node.args[0].value
    return None


class _Tracer:
    """Follows a value backwards through local bindings in one method, remembering them."""

    def __init__(self, ctx, flow: FunctionFlow) -> None:
        self.ctx, self.flow = ctx, flow
        self.followed: list[Binding] = []
        self.reads: dict[int, cst.Name] = {}  # id of a followed binding -> the chain's read of it

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
        self.reads[id(found)] = node
        return found.value

    def check_single_use(self) -> None:
        for binding in self.followed:
            uses = self.flow.uses(binding)
            if len(uses) != 1:
                chain = self.reads.get(id(binding))
                other = next((u for u in uses if u is not chain), None)
                raise Refused(self.ctx.line(binding.statement), self._reread(binding.name, other),
                              "compute the FFN in one chain whose intermediate values are not reused")

    def _reread(self, name: str, use: cst.Name | None) -> str:
        """The one read outside the chain: `h.shape` is a read of metadata, not of the values, but
        the rewrite removes `h` all the same."""
        if use is None:
            return f"`{name}` inside the feed-forward is read more than once"
        line = self.ctx.line(use)
        parent = self.ctx.parents.get(use)
        if isinstance(parent, cst.Attribute) and parent.value is use and parent.attr.value in _METADATA:
            return (f"`{name}.{parent.attr.value}` is read at line {line}, outside the feed-forward: the "
                    f"rewrite removes `{name}` (read it from the FFN's input or output instead)")
        return f"`{name}` inside the feed-forward is read again at line {line}"


def _calls_and_ops(node: cst.CSTNode) -> list[cst.BaseExpression]:
    return find_types(node, (cst.Call, cst.BinaryOperation))


def feed_forwards(ctx: "FileContext", cls, method: cst.FunctionDef) -> Iterator[FeedForward]:
    """Every `second(drop(act(first(x))))` chain in `method`; raises Refused for unsafe ones."""
    flow = FunctionFlow(ctx, method)
    for found, tracer in _chains(ctx, cls, flow, method):
        if not _changes_width(ctx, cls, found.first, found.second):
            tracer.check_single_use()
            _check_input(ctx, flow, found)
            _check_activation_callers(ctx, cls, found)
            yield found


def _check_activation_callers(ctx, cls, ffn: FeedForward) -> None:
    """`self.act = act_layer()` with `act_layer=nn.GELU`: every call of the class in the file must
    pass an activation class for it (or a parameter of its own function that defaults to one)."""
    found = activation_of(ctx, cls, ffn.activation)
    name = found.parameter if found is not None else None
    init = cls.methods.get("__init__")
    if name is None or init is None:
        return
    positional = [p.name.value for p in init.params.params[1:]]
    for call in _calls_and_ops(ctx.module):
        if not (isinstance(call, cst.Call) and isinstance(call.func, cst.Name) and call.func.value == cls.node.name.value):
            continue
        passed = argument(call, positional.index(name) if name in positional else 99, name)
        if passed is not None and not (_activation_class(ctx, passed) or _forwarded_activation(ctx, passed)):
            raise Refused(ctx.line(call), f"`{name}` is given `{ctx.code(passed)}` here, which is not known "
                          "to be an activation class: the FFN may not be a ReLU/GELU feed-forward",
                          f"pass an activation class as `{name}`, or mark the class `# tf-migrate: skip[TFM301]`")


def _activation_class(ctx, value: cst.BaseExpression | None) -> bool:
    found = activation_of(ctx, None, cst.Call(value)) if value is not None else None
    return ffn_activation(found)


def _forwarded_activation(ctx, value: cst.BaseExpression) -> bool:
    """A parameter of the calling function, not rebound, whose default is an activation class."""
    function = is_parameter(ctx, value)
    if function is None or binds(function.body, value.value):
        return False
    return _activation_class(ctx, parameter_default(function, value.value))


def _chains(ctx, cls, flow: FunctionFlow, method: cst.FunctionDef) -> Iterator[tuple[FeedForward, _Tracer]]:
    """Every `second(drop(act(first(x))))` chain of `method`, with the tracer that followed it.

    Found once per method (the rule's check, its split question, the census and the block
    question each ask): every caller gets its own copies, which `_check_input` and the fix
    writer change."""
    known = ctx.memo("ffn.chains", dict)
    key = (cls.node, method)
    if key not in known:
        known[key] = list(_find_chains(ctx, cls, flow, method))
    for found, tracer in known[key]:
        copy = _Tracer(ctx, flow)
        copy.followed, copy.reads = list(tracer.followed), dict(tracer.reads)
        yield FeedForward(cls, replace(found.first), replace(found.second), found.activation, found.gate_input), copy


def _find_chains(ctx, cls, flow: FunctionFlow, method: cst.FunctionDef) -> Iterator[tuple[FeedForward, _Tracer]]:
    for node in _calls_and_ops(method.body):
        second = projection(ctx, cls, node)
        if second is not None:
            tracer = _Tracer(ctx, flow)
            found = _chain(ctx, cls, tracer, second)
            if found is not None:
                yield found, tracer


def split_activations(ctx: "FileContext", cls, method: cst.FunctionDef) -> Iterator[cst.Call]:
    """Activations of a Linear's output with no second projection in this method (an MLP head's
    activation has one, which changes the width). Found once per method (the check and the census ask)."""
    known = ctx.memo("ffn.split_activations", dict)
    key = (cls.node, method)
    if key not in known:
        known[key] = list(_split_activations(ctx, cls, method))
    return iter(known[key])


def _split_activations(ctx: "FileContext", cls, method: cst.FunctionDef) -> Iterator[cst.Call]:
    flow = FunctionFlow(ctx, method)
    heads = {id(found.activation) for found, _ in _chains(ctx, cls, flow, method)
             if _changes_width(ctx, cls, found.first, found.second)}
    for node in _calls_and_ops(method.body):
        argument_ = _activation_argument(ctx, cls, node)
        parent = ctx.parents.get(node)
        if isinstance(parent, cst.BinaryOperation) and isinstance(parent.operator, cst.Multiply):
            continue  # `silu(gate(x)) * up(x)`: already a gated FFN
        if argument_ is not None and id(node) not in heads:
            first = projection(ctx, cls, _Tracer(ctx, flow).back(argument_))
            if first is not None:
                yield node


@dataclass
class SplitHalves:
    """The FFN's down half, in another class: `parent` builds both halves and feeds the up half's
    output only to the down half's first argument, whose first step is the projection `second`."""

    parent: str
    down: str  # the down half's class
    second: str  # its projection attribute
    second_call: cst.Call  # that projection's construction


def split_feed_forward(ctx: "FileContext", cls, method: cst.FunctionDef, act: cst.Call) -> tuple[FeedForward, SplitHalves]:
    """`act(self.dense(x))` returned by `forward`, the down projection in another class of this
    file (BERT's Intermediate / Output). Raises Refused naming what is not proven."""
    line = ctx.line(act)
    flow = FunctionFlow(ctx, method)
    tracer = _Tracer(ctx, flow)
    gate_input = _activation_argument(ctx, cls, act)
    first = projection(ctx, cls, tracer.back(gate_input)) if gate_input is not None else None
    if first is None or first.raw or first.transposed is not None or method.name.value != "forward":
        raise Refused(line, "an activation of a Linear with no second projection in this module: the FFN's "
                      "projections live in two modules", "move both projections of the FFN into one module, then rerun")
    halves = _halves_wiring(ctx, cls)
    if isinstance(halves, str):
        raise Refused(line, f"the FFN is split over two classes and {halves}",
                      "move both projections of the FFN into one module, then rerun")
    up = cls.submodules[first.weight].call
    up_in, up_out = argument(up, 0, "in_features"), argument(up, 1, "out_features")
    down_in, down_out = argument(halves.second_call, 0, "in_features"), argument(halves.second_call, 1, "out_features")
    if None in (up_in, up_out, down_in, down_out) or _width(ctx, up_in) != _width(ctx, down_out) \
            or _width(ctx, up_out) != _width(ctx, down_in):
        raise Refused(line, f"the FFN is split over two classes and `{halves.down}.{halves.second}` does not map "
                      f"{cls.node.name.value}.{first.weight}'s output back to its input width", "")
    ffn = FeedForward(cls, first, first, act, gate_input)
    tracer.check_single_use()
    _check_input(ctx, flow, ffn)
    return ffn, halves


def _halves_wiring(ctx: "FileContext", cls) -> SplitHalves | str:
    """The one class of the file that builds `cls`, and what it feeds the output to (a reason
    when that is not a single down half)."""
    name = cls.node.name.value
    builders = [c for c in ctx.module_classes if any(
        isinstance(n, cst.Call) and isinstance(n.func, cst.Name) and n.func.value == name for n in _calls_and_ops(c.node))]
    uses = [n for n in find(ctx.module, lambda n: isinstance(n, cst.Name) and n.value == name)
            if not _super_argument(ctx, n)]
    if len(builders) != 1 or len(uses) != 2:  # the class statement's name and one construction
        return f"`{name}` is built or named in more than one place in this file"
    if _built_in_other_files(ctx, cls):
        return f"another file of the project builds `{name}`"
    parent = builders[0]
    attribute = next((a for a, sub in parent.submodules.items()
                      if isinstance(sub.call, cst.Call) and isinstance(sub.call.func, cst.Name) and sub.call.func.value == name),
                     None)
    if attribute is None:
        return f"`{parent.node.name.value}` does not hold `{name}` as a submodule"
    consumers = set()
    for method in parent.methods.values():
        flow = FunctionFlow(ctx, method)
        for call in _calls_and_ops(method):
            if not (isinstance(call, cst.Call) and self_attribute(call.func) == attribute):
                continue
            consumer = _only_consumer(ctx, flow, call)
            if consumer is None:
                return f"`{parent.node.name.value}` uses the output of `self.{attribute}` other than as the first " \
                       "argument of one module"
            consumers.add(consumer)
    if len(consumers) != 1:
        return f"`{parent.node.name.value}` never or variously consumes `self.{attribute}`"
    down_sub = parent.submodules.get(consumers.pop())
    down = next((c for c in ctx.module_classes if down_sub is not None and isinstance(down_sub.call, cst.Call)
                 and isinstance(down_sub.call.func, cst.Name) and c.node.name.value == down_sub.call.func.value), None)
    if down is None or "forward" not in down.methods:
        return "the module consuming its output is not a class of this file"
    second = _first_projection(ctx, down, down.methods["forward"])
    if second is None:
        return f"`{down.node.name.value}.forward` does not start by projecting its first argument with a Linear"
    return SplitHalves(parent.node.name.value, down.node.name.value, second, down.submodules[second].call)


def _super_argument(ctx, name: cst.Name) -> bool:
    """`super(Name, self)`."""
    arg = ctx.parents.get(name)
    call = ctx.parents.get(arg)
    return isinstance(call, cst.Call) and isinstance(call.func, cst.Name) and call.func.value == "super"


def _built_in_other_files(ctx: "FileContext", cls) -> bool:
    """Another project file calls this class (a type annotation or an import alone is no use of
    its output)."""
    import re

    name, here = cls.node.name.value, os.path.abspath(ctx.source_path)
    project = ctx.project
    called = re.compile(rf"\b{re.escape(name)}\s*\(")
    for path in project.files:
        if os.path.abspath(path) != here and called.search(project.text(path) or ""):
            if any(s.kind == "class" and s.path and os.path.abspath(s.path) == here for s in project.resolve_name(path, name)):
                return True
    return False


def _only_consumer(ctx, flow: FunctionFlow, call: cst.Call) -> str | None:
    """`self.down(self.up(a), ...)` or `h = self.up(a)` read once, as `self.down(h, ...)`: "down"."""
    parent = ctx.parents.get(call)
    if isinstance(parent, cst.Arg):
        outer = ctx.parents.get(parent)
        if isinstance(outer, cst.Call) and outer.args and outer.args[0] is parent and self_attribute(outer.func):
            return self_attribute(outer.func)
        return None
    if isinstance(parent, cst.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0].target, cst.Name):
        statement = flow.statement_of(call)
        uses = []
        if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 and statement.body[0] is parent:
            uses = flow.uses(Binding(parent.targets[0].target.value, parent.value, statement))
        if len(uses) == 1:
            arg = ctx.parents.get(uses[0])
            outer = ctx.parents.get(arg)
            if isinstance(arg, cst.Arg) and isinstance(outer, cst.Call) and outer.args[0] is arg \
                    and self_attribute(outer.func):
                return self_attribute(outer.func)
    return None


def _first_projection(ctx, cls, forward: cst.FunctionDef) -> str | None:
    """The Linear attribute `forward` applies first to its first parameter (`h = self.dense(h)`)."""
    params = [p.name.value for p in forward.params.params[1:]]
    if not params:
        return None
    for call in _calls_and_ops(forward):
        if isinstance(call, cst.Call) and call.args and isinstance(call.args[0].value, cst.Name) \
                and call.args[0].value.value == params[0]:
            found = projection(ctx, cls, call)
            return found.weight if found is not None and not found.raw and found.transposed is None \
                and cls.submodules[found.weight].callee == LINEAR else None
    return None


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
    if first.transposed is not None or second.transposed is not None:
        if first.transposed is None or second.transposed is None:
            return True  # one Conv1D-style, one not: not a pair this rule rewrites
        return _width(ctx, first.transposed.in_features) != _width(ctx, second.transposed.out_features)
    width_in = argument(cls.submodules[first.weight].call, 0, _SIZES.get(cls.submodules[first.weight].callee, _SIZES[LINEAR])[0])
    width_out = argument(cls.submodules[second.weight].call, 1, _SIZES.get(cls.submodules[second.weight].callee, _SIZES[LINEAR])[1])
    if width_in is None or width_out is None:
        return False
    width_in, width_out = _defaulted(cls, width_in), _defaulted(cls, width_out)
    return _width(ctx, width_in) != _width(ctx, width_out) and not _equal_at_every_call(ctx, cls, width_in, width_out)


def _equal_at_every_call(ctx, cls, a: cst.BaseExpression, b: cst.BaseExpression) -> bool:
    """`__init__(self, in_dim, hidden, out_dim)` and every call of the class in the file passes
    the same value for `in_dim` and `out_dim` (`FFN(self.dim, 4 * self.dim, self.dim)`)."""
    init = cls.methods.get("__init__")
    if init is None or not isinstance(a, cst.Name) or not isinstance(b, cst.Name):
        return False
    names = [p.name.value for p in init.params.params[1:]]
    if a.value not in names or b.value not in names:
        return False
    calls = [c for c in _calls_and_ops(ctx.module) if isinstance(c, cst.Call)
             and isinstance(c.func, cst.Name) and c.func.value == cls.node.name.value]
    passed = [(argument(c, names.index(a.value), a.value), argument(c, names.index(b.value), b.value)) for c in calls
              if not any(arg.star for arg in c.args)]
    return bool(calls) and len(passed) == len(calls) and all(
        x is not None and y is not None and _width(ctx, x) == _width(ctx, y) for x, y in passed)


_SIZES = {LINEAR: ("in_features", "out_features"), CONV1D: ("in_channels", "out_channels")}


def _defaulted(cls, size: cst.BaseExpression) -> cst.BaseExpression:
    """`out_features` after `out_features = out_features or in_features` in `__init__` (an
    optional size that defaults to another): the other one."""
    if not isinstance(size, cst.Name) or "__init__" not in cls.methods:
        return size
    values = [s.value for line in find(cls.methods["__init__"], lambda n: isinstance(n, cst.SimpleStatementLine))
              for s in line.body if isinstance(s, cst.Assign) and len(s.targets) == 1
              and isinstance(s.targets[0].target, cst.Name) and s.targets[0].target.value == size.value]
    if len(values) == 1 and isinstance(values[0], cst.BooleanOperation) and isinstance(values[0].operator, cst.Or) \
            and isinstance(values[0].left, cst.Name) and values[0].left.value == size.value:
        return values[0].right
    return size


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
    x = _viewed(x)
    if not isinstance(x, cst.Name) and self_attribute(x) is None:
        raise Refused(line, f"the feed-forward input `{ctx.code(ffn.first.input)}` is an expression; "
                      "the gate projection would compute it a second time",
                      "bind the FFN input to a local name first")
    if isinstance(x, cst.Name):
        at_first = flow.statement_of(ffn.first.node)
        at_act = flow.statement_of(ffn.activation)
        if at_first is not at_act:
            before, now = flow.definition(x.value, at_first), flow.definition(x.value, at_act)
            if getattr(before, "statement", None) is not getattr(now, "statement", None):
                ffn.gate_at_first = True


_VIEWS = ("transpose", "permute", "contiguous", "t", "unsqueeze", "squeeze")


def _viewed(x: cst.BaseExpression) -> cst.BaseExpression:
    """The tensor under `y.transpose(-1, 1)` (a chain of views with literal dims: reading it twice
    costs nothing and gives the same values), else `x` itself."""
    while (isinstance(x, cst.Call) and isinstance(x.func, cst.Attribute) and x.func.attr.value in _VIEWS
           and all(a.keyword is None and not a.star and int_value(a.value) is not None for a in x.args)):
        x = x.func.value
    return x


def _hoistable(cls, x: cst.BaseExpression) -> bool:
    """`self.<submodule>(name)`: one call of a module of this class on a plain name."""
    return (
        isinstance(x, cst.Call) and cls.submodule_of(x.func) is not None and len(x.args) == 1
        and isinstance(x.args[0].value, cst.Name) and x.args[0].keyword is None
    )


def sequential_feed_forward(ctx: "FileContext", cls, attribute: str) -> SequentialFeedForward | None:
    """`self.<attribute> = nn.Sequential([LayerNorm], Linear, ReLU|GELU, [Dropout], Linear, [Dropout])`."""
    sub = cls.submodules[attribute]
    if sub.callee != "torch.nn.Sequential" or any(a.keyword or a.star for a in sub.call.args):
        return None
    items = [a.value for a in sub.call.args]
    kinds = [ctx.names.callee(i) if isinstance(i, cst.Call) else None for i in items]
    inner = {}  # position -> the attribute a Linear wrapper holds its nn.Linear in
    for position, item in enumerate(items):
        wrapped = wrapped_linear(ctx, item) if isinstance(item, cst.Call) and kinds[position] != LINEAR else None
        if wrapped is not None and wrapped.linear_signature:
            kinds[position], inner[position] = LINEAR, wrapped.inner
        elif isinstance(item, cst.Call) and kinds[position] not in ACTIVATION_MODULES and not item.args \
                and ffn_activation(activation_of(ctx, cls, item)):
            kinds[position] = ACTIVATION_MODULES[0]  # `Swish()`, a project activation module
    start = 1 if kinds and kinds[0] == LAYER_NORM else 0
    if len(items) < start + 3 or kinds[start] != LINEAR or kinds[start + 1] not in ACTIVATION_MODULES:
        return None
    position, dropout = start + 2, None
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
    if inner.get(start, "") != inner.get(position, ""):
        return None  # one wrapped, one plain: two key layouts
    return SequentialFeedForward(cls, attribute, sub.call, items[start], items[position], dropout,
                                 trailing, (start, position), norm=items[0] if start else None,
                                 inner=inner.get(start, ""))


@dataclass
class TemporalConv:
    """Two `nn.Conv1d` applied in one method with an activation between, one of them with a
    kernel size not provably 1: it mixes neighbouring positions (FastSpeech's conv FFN)."""

    first: str
    second: str
    kernel: cst.BaseExpression | None  # the kernel size that is not 1 (None: not given)
    line: int  # of the activation


def temporal_conv(ctx: "FileContext", cls) -> TemporalConv | None:
    convs = [name for name, sub in cls.submodules.items() if sub.callee == CONV1D]
    if len(convs) != 2 or all(pointwise_conv(cls.submodules[n].call) for n in convs):
        return None
    for method in cls.methods.values():
        calls = {name: [c for c in _calls_and_ops(method) if isinstance(c, cst.Call) and self_attribute(c.func) == name]
                 for name in convs}
        if not all(calls.values()):
            continue
        first, second = sorted(convs, key=lambda n: ctx.line(calls[n][0]))
        start, end = ctx.line(calls[first][0]), ctx.line(calls[second][-1])
        for node in _calls_and_ops(method):
            found = activation_of(ctx, cls, node) if isinstance(node, cst.Call) else None
            if found is not None and found.argument is not None and start <= ctx.line(node) <= end:
                wide = next(n for n in (first, second) if not pointwise_conv(cls.submodules[n].call))
                return TemporalConv(first, second, argument(cls.submodules[wide].call, 2, "kernel_size"),
                                    ctx.line(node))
    return None


def _is_attention(ctx, node: cst.CSTNode, helpers: frozenset[str] = frozenset()) -> bool:
    """`node` calls softmax / SDPA / nn.MultiheadAttention, or a function of the file (`helpers`)
    that does (`x, self.attn = attention(q, k, v, mask)`)."""
    classifiers = classifier_softmaxes(ctx)  # a softmax over a Linear's output is a head, not attention
    for call in _calls_and_ops(node):
        if isinstance(call, cst.Call) and classifiers and (ctx.line(call), ctx.column(call)) in classifiers:
            continue
        if isinstance(call, cst.Call) and (
            ctx.names.is_call(call, *_ATTENTION_CALLS)
            or (isinstance(call.func, cst.Attribute) and call.func.attr.value == "softmax")
            or (isinstance(call.func, cst.Name) and call.func.value in helpers
                and ctx.names.imported(call.func) is None)
        ):
            return True
    return False


def _attention_functions(ctx: "FileContext") -> frozenset[str]:
    return frozenset(s.name.value for s in ctx.module.body
                     if isinstance(s, cst.FunctionDef) and _is_attention(ctx, s))


def attention_classes(ctx: "FileContext") -> set[str]:
    """Classes that compute attention, and attention wrappers that build one (also as heads in a
    ModuleList).

    A wrapper must be named for attention (`BertAttention` around `BertSelfAttention`): a block
    also holds an attention, and counting blocks would make every model class look like one.
    """
    direct = _direct_attention(ctx)
    wrappers = {c.node.name.value for c in ctx.module_classes
                if any(w in c.node.name.value.lower() for w in ("attn", "attention")) and "__init__" in c.methods
                and (_instantiates(c.methods["__init__"], direct) or _builds_project_attention(ctx, c.methods["__init__"]))}
    return direct | wrappers


def _direct_attention(ctx: "FileContext") -> set[str]:
    def compute() -> set[str]:
        helpers = _attention_functions(ctx)
        return {c.node.name.value for c in ctx.module_classes if _is_attention(ctx, c.node, helpers)}

    return ctx.memo("ffn.direct_attention", compute)


def _builds_project_attention(ctx: "FileContext", init: cst.FunctionDef) -> bool:
    """`__init__` builds a class of another project file that computes attention itself."""
    known = ctx.memo("ffn.builds_project_attention", dict)  # per function, asked per class
    if init not in known:
        known[init] = _find_project_attention(ctx, init)
    return known[init]


def _find_project_attention(ctx: "FileContext", init: cst.FunctionDef) -> bool:
    for call in _calls_and_ops(init):
        if isinstance(call, cst.Call) and isinstance(call.func, cst.Name):
            for symbol in symbols_of(ctx, call.func):
                if symbol.kind != "class" or not symbol.path or not _may_compute_attention(ctx, symbol.path):
                    continue
                owner = _owner_context(ctx, symbol.path)
                if owner is not None and symbol.qualname in _direct_attention(owner):
                    return True
    return False


# Every callee `_is_attention` accepts ends with one of these (a dotted callee ends with its
# attribute, `names._ALIASES` keep it), and `.softmax(...)` spells one: a file whose text holds
# none of them computes no attention, and needs no parse to say so.
_ATTENTION_WORDS = ("softmax", "Softmax", "scaled_dot_product_attention", "MultiheadAttention")


def _may_compute_attention(ctx: "FileContext", path: str) -> bool:
    text = ctx.project.text(absolute(path))
    if text is None or any(word in text for word in _ATTENTION_WORDS):
        return True
    ctx.project.summary(path)  # the read `project.context` would have recorded
    return False


def _owner_context(ctx: "FileContext", path: str) -> "FileContext | None":
    """The context that answers for a class defined in `path`: the project's context of that file,
    None when there is none or when it is `ctx` itself.

    A file analysed by the engine is in the project too (at its current text): its project context
    would be a second parse of the same text, analysed once more. `ctx` answers for it instead
    (same text, same path, so the same answers); a context the project made stays excluded.
    """
    project = ctx.project
    if not ctx.memo("ffn.from_project", lambda: False) and absolute(path) == ctx.project_key \
            and project.text(ctx.project_key) == ctx.text:
        project.summary(path)  # the read `project.context` records
        return ctx
    owner = project.context(path)
    if owner is None or owner is ctx:
        return None
    owner.memo("ffn.from_project", lambda: True)
    return owner


def _instantiates(node: cst.CSTNode, names: set[str]) -> set[str]:
    return {c.func.value for c in _calls_and_ops(node)
            if isinstance(c, cst.Call) and isinstance(c.func, cst.Name) and c.func.value in names}


def in_block(ctx: "FileContext", cls, attention: set[str]) -> bool:
    """Whether an FFN held by `cls` sits in a transformer block.

    True when `cls` itself holds an attention (or is one, or is handed one by its caller, or builds
    one defined in another project file), or when
    some function of this file or of another project file that builds a `cls` also builds an
    attention in the same body (a block's `__init__`, or a `make_model` that passes both to a
    layer). An MLP head built next to an encoder stack, not
    next to an attention, does not count.
    """
    known = ctx.memo("ffn.in_block", dict)  # asked by the rule's check and twice by its census
    key = (cls.node, frozenset(attention))
    if key not in known:
        known[key] = _in_block(ctx, cls, attention)
    return known[key]


def _in_block(ctx: "FileContext", cls, attention: set[str]) -> bool:
    name = cls.node.name.value
    if name in attention or _instantiates(cls.node, attention) or _injected_attention(cls):
        return True
    if "__init__" in cls.methods and _builds_project_attention(ctx, cls.methods["__init__"]):
        return True  # `self.self_attn = MultiheadAttention(...)` from another file of the project
    called_by_function = ctx.memo("ffn.called", lambda: _called_names(ctx))
    if any(name in called and (called & attention or _BUILDS_MHA in called) for called in called_by_function):
        return True
    if any(name in called for called in called_by_function) and _built_beside_project_attention(ctx, name):
        return True
    return _ffn_shaped(ctx, cls) and _built_beside_attention_elsewhere(ctx, cls)


def _built_beside_project_attention(ctx: "FileContext", name: str) -> bool:
    """A function of this file builds `name` and an attention class defined in another project
    file (`self.attn = CausalSelfAttention(config)` imported from `attention.py`)."""
    for function in ctx.memo("ffn.functions_calling", lambda: _functions_calling(ctx)).get(name, ()):
        if _builds_project_attention(ctx, function):
            return True
    return False


def _functions_calling(ctx: "FileContext") -> dict[str, list[cst.FunctionDef]]:
    """Plain name -> the functions of the file (in source order) that call it, nested functions'
    calls included: one look-up per class instead of a search of every function."""
    functions = find_types(ctx.module, cst.FunctionDef)
    found: dict[str, list[cst.FunctionDef]] = {}
    for function, calls in zip(functions, ctx.memo("ffn.calls_by_function", lambda: _calls_by_function(ctx))):
        for name in dict.fromkeys(c.func.value for c in calls):
            found.setdefault(name, []).append(function)
    return found


def _ffn_shaped(ctx: "FileContext", cls) -> bool:
    """Holds a projection-activation-projection chain or a Sequential FFN (before asking other
    files, which costs more)."""
    return any(True for method in cls.methods.values() for _ in _chains(ctx, cls, FunctionFlow(ctx, method), method)) \
        or any(sequential_feed_forward(ctx, cls, attribute) for attribute in cls.submodules) \
        or temporal_conv(ctx, cls) is not None


def _built_beside_attention_elsewhere(ctx: "FileContext", cls) -> bool:
    """A function of another project file builds this class and an attention in one body (the
    block's `__init__` in `layers.py` building `PositionwiseFeedForward` from `sublayers.py`).
    Only files that import the class are parsed."""
    name, here = cls.node.name.value, os.path.abspath(ctx.source_path)
    project = ctx.project
    for path in sorted(project.files):
        if path == here or name not in (project.text(path) or ""):
            continue
        if not any(s.kind == "class" and s.path and os.path.abspath(s.path) == here and s.qualname == cls.qualname
                   for s in project.resolve_name(path, name)):
            continue
        other = project.context(path)
        if other is None:
            continue
        other.memo("ffn.from_project", lambda: True)
        for calls in other.memo("ffn.calls_by_function", lambda o=other: _calls_by_function(o)):
            ours = [c for c in calls if c.func.value == name and _is_class(other, c.func, here, cls.qualname)]
            if ours and any(_builds_attention(other, c) for c in calls if c.func.value != name):
                return True
    return False


def _calls_by_function(ctx: "FileContext") -> list[list[cst.Call]]:
    """Per function of the file, its calls of a plain name (nested functions' calls included)."""
    functions = find_types(ctx.module, cst.FunctionDef)
    return [[c for c in _calls_and_ops(f) if isinstance(c, cst.Call) and isinstance(c.func, cst.Name)]
            for f in functions]


def _is_class(ctx: "FileContext", node: cst.Name, path: str, qualname: str) -> bool:
    return any(s.kind == "class" and s.path and os.path.abspath(s.path) == path and s.qualname == qualname
               for s in symbols_of(ctx, node))


def _builds_attention(ctx: "FileContext", call: cst.Call) -> bool:
    """`call` builds an attention: a class of that file or of the project that computes one, or
    torch's nn.MultiheadAttention."""
    if ctx.names.callee(call) == "torch.nn.MultiheadAttention":
        return True
    if call.func.value in ctx.memo("ffn.attention", lambda: attention_classes(ctx)):
        return True
    for symbol in symbols_of(ctx, call.func):
        owner = ctx.project.context(symbol.path) if symbol.kind == "class" and symbol.path else None
        if owner is not None:
            owner.memo("ffn.from_project", lambda: True)
        if owner is not None and symbol.qualname in owner.memo("ffn.attention", lambda o=owner: attention_classes(o)):
            return True
    return False


def _injected_attention(cls) -> bool:
    """`__init__(self, attention, ...)` stores its argument as `self.attention` (any attribute
    named for attention) and a method calls it: the caller builds the block's attention."""
    init = cls.methods.get("__init__")
    if init is None:
        return False
    params = {p.name.value for p in init.params.params}
    for line in find(init, lambda n: isinstance(n, cst.SimpleStatementLine)):
        for small in line.body:
            if (isinstance(small, cst.Assign) and len(small.targets) == 1 and isinstance(small.value, cst.Name)
                    and small.value.value in params):
                attribute = self_attribute(small.targets[0].target) or ""
                if any(w in attribute.lower() for w in ("attn", "attention")) and any(
                        isinstance(c, cst.Call) and self_attribute(c.func) == attribute
                        for c in _calls_and_ops(cls.node)):
                    return True
    return False


# Stands for a built `nn.MultiheadAttention` among the names a function calls (never a real name).
_BUILDS_MHA = "<nn.MultiheadAttention>"


def _called_names(ctx: "FileContext") -> list[set[str]]:
    """Per function of the file, the plain names it calls, nested functions' calls included (and
    whether it builds torch's `nn.MultiheadAttention`, an attention under any alias). Read from the
    per-function calls the block questions keep, not from a walk of the whole module."""
    mha_named = may_call(ctx, "torch.nn.MultiheadAttention")  # else skip resolving
    found: list[set[str]] = []
    calls_by_function = ctx.memo("ffn.calls_by_function", lambda: _calls_by_function(ctx))
    for function, calls in zip(find_types(ctx.module, cst.FunctionDef), calls_by_function):
        called = {c.func.value for c in calls}
        if mha_named and any(isinstance(c, cst.Call) and ctx.names.is_call(c, "torch.nn.MultiheadAttention")
                             for c in _calls_and_ops(function)):
            called.add(_BUILDS_MHA)
        found.append(called)
    return found


def builtin_layers(ctx: "FileContext") -> Iterator[cst.Call]:
    if not may_call(ctx, *BUILTIN_LAYERS):
        return
    for call in _calls_and_ops(ctx.module):
        if isinstance(call, cst.Call) and ctx.names.callee(call) in BUILTIN_LAYERS:
            yield call
