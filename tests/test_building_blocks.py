"""The semantic building blocks rules ask instead of matching names: linear layers, activations,
softmax / layer norm / dropout, and following a call into a project helper. Positives in several
files and spellings; negatives that look alike."""

from __future__ import annotations

from pathlib import Path

import libcst as cst
import pytest

from tf_migrate.analysis.activations import activation_of
from tf_migrate.analysis.helpers import bind_arguments, resolve_call
from tf_migrate.analysis.layer_kinds import is_dropout, is_layer_norm, is_softmax
from tf_migrate.analysis.linear import is_linear_layer, linear_elements

from project_support import context, expression, module_class, write_project

LAYERS = {
    "pkg/__init__.py": "",
    "pkg/utils.py": """
        import copy
        import math
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        def Linear(in_features, out_features, bias=True):
            m = nn.Linear(in_features, out_features, bias)
            nn.init.xavier_uniform_(m.weight)
            return m

        def NormedLinear(i, o):
            m = nn.Linear(i, o)
            m = nn.Sequential(m, nn.LayerNorm(o))
            return m

        def clones(module, N):
            return nn.ModuleList([copy.deepcopy(module) for _ in range(N)])

        class CastLinear(nn.Linear):
            def forward(self, x):
                return super().forward(x.float()).to(x.dtype)

        class ScaledLinear(nn.Linear):
            def forward(self, x):
                return super().forward(x) * 2

        def gelu(x):
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))

        def gelu_erf(x):
            return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))

        def swish(x):
            return x * torch.sigmoid(x)

        def not_elementwise(x):
            return x - x.mean(-1, keepdim=True)

        class QuickGELU(nn.Module):
            def forward(self, x):
                return x * torch.sigmoid(1.702 * x)

        class Normalise(nn.Module):
            def forward(self, x):
                return x / x.norm(dim=-1, keepdim=True)

        ACT2FN = {"gelu": gelu, "relu": F.relu, "swish": swish, "gelu_new": nn.GELU}

        def get_activation(name):
            return ACT2FN[name]

        def softmax(x, dim):
            return F.softmax(x.float(), dim=dim).type_as(x)

        try:
            from apex.normalization import FusedLayerNorm as LayerNorm
        except ImportError:
            class LayerNorm(nn.Module):
                def __init__(self, hidden, eps=1e-12):
                    super().__init__()
                    self.weight = nn.Parameter(torch.ones(hidden))
                    self.bias = nn.Parameter(torch.zeros(hidden))
                    self.eps = eps

                def forward(self, x):
                    u = x.mean(-1, keepdim=True)
                    s = (x - u).pow(2).mean(-1, keepdim=True)
                    x = (x - u) / torch.sqrt(s + self.eps)
                    return self.weight * x + self.bias

        class RMSNorm(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.weight = nn.Parameter(torch.ones(d))

            def forward(self, x):
                return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

        class MyDropout(nn.Dropout):
            pass

        def attention(query, key, value, mask=None, dropout=None):
            scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(query.size(-1))
            return torch.matmul(scores.softmax(-1), value)
        """,
    "pkg/model.py": """
        import copy
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
        from torch.nn import Linear as Lin
        from .utils import (Linear, NormedLinear, clones, CastLinear, ScaledLinear, gelu, gelu_erf, swish,
                            not_elementwise, QuickGELU, Normalise, ACT2FN, get_activation, softmax,
                            LayerNorm, RMSNorm, MyDropout, attention)
        from . import utils

        class Block(nn.Module):
            def __init__(self, d, config, act_layer=nn.GELU, use_gelu=True):
                super().__init__()
                self.a = nn.Linear(d, 2 * d, bias=False)
                self.b = Lin(d, d)
                self.c = Linear(d, d, bias=False)
                self.n = NormedLinear(d, d)
                self.e = CastLinear(d, d)
                self.f = ScaledLinear(d, d)
                self.g = utils.Linear(d, 4 * d)
                self.linears = clones(nn.Linear(d, d), 4)
                self.comp = nn.ModuleList([nn.Linear(d, d) for _ in range(3)])
                lin = nn.Linear(d, d)
                self.copies = nn.ModuleList([copy.deepcopy(lin) for _ in range(2)])
                self.listed = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, 2 * d)])
                self.act = act_layer()
                self.gelu_module = nn.GELU(approximate="tanh")
                self.quick = QuickGELU()
                self.normalise = Normalise()
                self.table_act = ACT2FN[config.hidden_act]
                self.fixed_act = ACT2FN["swish"]
                self.getter_act = get_activation("gelu")
                self.either = nn.GELU() if use_gelu else nn.ReLU()
                self.fn_attr = F.gelu
                self.sm = nn.Softmax(dim=-1)
                self.ln = nn.LayerNorm(d)
                self.own_ln = LayerNorm(d)
                self.rms = RMSNorm(d)
                self.drop = nn.Dropout(0.1)
                self.my_drop = MyDropout(0.1)

            def forward(self, x, mask):
                y = self.act(x) + self.gelu_module(x) + self.quick(x) + self.normalise(x)
                y = y + self.table_act(x) + self.fixed_act(x) + self.getter_act(x) + self.either(x)
                y = y + F.gelu(x) + x.relu() + nn.GELU()(x) + gelu(x) + gelu_erf(x) + swish(x)
                y = y + not_elementwise(x) + self.fn_attr(x) + torch.relu(x) + F.gelu(x, approximate="tanh")
                p = F.softmax(x, dim=-1) + x.softmax(-1) + self.sm(x) + nn.Softmax(dim=1)(x) + softmax(x, -1)
                p = p + torch.exp(x)
                z = self.ln(x) + self.own_ln(x) + self.rms(x) + F.layer_norm(x, (4,))
                z = self.drop(x) + self.my_drop(x) + F.dropout(x, 0.1, self.training) + nn.Dropout(0.2)(x)
                return attention(x, x, x, mask=mask) + self.helper(x) + self.linears[0](x) + self.linears[5](x)

            def helper(self, x, scale=2):
                return x * scale
        """,
}


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    project = write_project(root, LAYERS)
    ctx = context(project, root / "pkg" / "model.py")
    return ctx, module_class(ctx, "Block")


def _attr(ctx, cls, name: str) -> cst.CSTNode:
    return expression(ctx, cls, "forward", f"self.{name}") if name != "self" else None


def _code(ctx, node) -> str | None:
    return None if node is None else ctx.code(node)


@pytest.mark.parametrize("attribute, construct, features", [
    ("a", "nn.Linear", ("d", "2 * d", "False")),
    ("b", "nn.Linear", ("d", "d", None)),
    ("c", "factory Linear", ("d", "d", "False")),
    ("e", "subclass CastLinear", ("d", "d", None)),
    ("g", "factory Linear", ("d", "4 * d", "True")),
])
def test_linear_layers_in_their_spellings(block, attribute, construct, features) -> None:
    ctx, cls = block
    from tf_migrate.analysis.names import self_attribute
    from tf_migrate.analysis.nodes import find

    node = find(cls.methods["__init__"], lambda n: self_attribute(n) == attribute)[0]
    layer = is_linear_layer(ctx, cls, node)
    assert layer is not None and layer.construct == construct
    assert (_code(ctx, layer.in_features), _code(ctx, layer.out_features), _code(ctx, layer.bias)) == features


@pytest.mark.parametrize("attribute", ["n", "f", "act", "linears"])
def test_not_linear_layers(block, attribute) -> None:
    """A factory that wraps the Linear with a norm, a subclass whose forward scales, an activation,
    a list of Linears (itself not one)."""
    ctx, cls = block
    from tf_migrate.analysis.names import self_attribute
    from tf_migrate.analysis.nodes import find

    node = find(cls.methods["__init__"], lambda n: self_attribute(n) == attribute)[0]
    assert is_linear_layer(ctx, cls, node) is None


@pytest.mark.parametrize("attribute, construct, count, size", [
    ("linears", "clones (clones)", 4, 1),
    ("comp", "comprehension", 3, 1),
    ("copies", "deepcopy comprehension", 2, 1),
    ("listed", "list", 2, 2),
])
def test_lists_of_linear_layers(block, attribute, construct, count, size) -> None:
    ctx, cls = block
    listed = linear_elements(ctx, cls, attribute)
    assert listed is not None and (listed.construct, listed.count, len(listed.elements)) == (construct, count, size)
    assert listed.element(count - 1) is not None and listed.element(count) is None


def test_a_list_element_by_index(block) -> None:
    ctx, cls = block
    first = is_linear_layer(ctx, cls, expression(ctx, cls, "forward", "self.linears[0]"))
    assert first is not None and ctx.code(first.out_features) == "d"
    assert is_linear_layer(ctx, cls, expression(ctx, cls, "forward", "self.linears[5]")) is None


@pytest.mark.parametrize("application, kinds, construct", [
    ("self.act(x)", {"gelu"}, "module attribute (parameter default)"),
    ("self.gelu_module(x)", {"gelu_tanh"}, "module attribute (module)"),
    ("self.quick(x)", {"gelu_sigmoid"}, "module attribute (module)"),
    ("self.table_act(x)", {"gelu_tanh", "relu", "silu", "gelu"}, "module attribute (table (key not known))"),
    ("self.fixed_act(x)", {"silu"}, "module attribute (table)"),
    ("self.getter_act(x)", {"gelu_tanh"}, "module attribute (getter)"),
    ("self.either(x)", {"gelu", "relu"}, "module attribute (conditional)"),
    ("self.fn_attr(x)", {"gelu"}, "module attribute (function)"),
    ("F.gelu(x)", {"gelu"}, "function"),
    ("F.gelu(x, approximate=\"tanh\")", {"gelu_tanh"}, "function"),
    ("torch.relu(x)", {"relu"}, "function"),
    ("x.relu()", {"relu"}, "method"),
    ("nn.GELU()(x)", {"gelu"}, "inline module"),
    ("gelu(x)", {"gelu_tanh"}, "function"),
    ("gelu_erf(x)", {"gelu"}, "function"),
    ("swish(x)", {"silu"}, "function"),
])
def test_activations_in_their_spellings(block, application, kinds, construct) -> None:
    ctx, cls = block
    found = activation_of(ctx, cls, expression(ctx, cls, "forward", application))
    assert found is not None and found.kinds == kinds and found.construct == construct
    assert ctx.code(found.argument) == "x"


def test_an_act_layer_default_names_the_parameter_a_caller_may_override(block) -> None:
    ctx, cls = block
    assert activation_of(ctx, cls, expression(ctx, cls, "forward", "self.act(x)")).parameter == "act_layer"


@pytest.mark.parametrize("application", [
    "not_elementwise(x)", "self.normalise(x)", "torch.exp(x)", "self.ln(x)", "self.drop(x)", "x.softmax(-1)"])
def test_not_activations(block, application) -> None:
    ctx, cls = block
    assert activation_of(ctx, cls, expression(ctx, cls, "forward", application)) is None


@pytest.mark.parametrize("application, construct, dim", [
    ("F.softmax(x, dim=-1)", "function", "-1"),
    ("x.softmax(-1)", "method", "-1"),
    ("self.sm(x)", "module attribute (Softmax)", "-1"),
    ("nn.Softmax(dim=1)(x)", "inline module (Softmax)", "1"),
    ("softmax(x, -1)", "wrapper", "-1"),
])
def test_softmax_in_its_spellings(block, application, construct, dim) -> None:
    ctx, cls = block
    found = is_softmax(ctx, cls, expression(ctx, cls, "forward", application))
    assert found is not None and found.construct == construct and ctx.code(found.dim) == dim
    assert ctx.code(found.argument) == "x"


@pytest.mark.parametrize("application", ["torch.exp(x)", "self.ln(x)", "F.gelu(x)"])
def test_not_softmax(block, application) -> None:
    ctx, cls = block
    assert is_softmax(ctx, cls, expression(ctx, cls, "forward", application)) is None


@pytest.mark.parametrize("application, construct", [
    ("self.ln(x)", "module attribute (LayerNorm)"),
    ("self.own_ln(x)", "module attribute (FusedLayerNorm or class LayerNorm)"),
    ("F.layer_norm(x, (4,))", "function"),
])
def test_layer_norms(block, application, construct) -> None:
    ctx, cls = block
    found = is_layer_norm(ctx, cls, expression(ctx, cls, "forward", application))
    assert found is not None and found.construct == construct


@pytest.mark.parametrize("application", ["self.rms(x)", "self.drop(x)", "self.normalise(x)"])
def test_not_layer_norms(block, application) -> None:
    ctx, cls = block
    assert is_layer_norm(ctx, cls, expression(ctx, cls, "forward", application)) is None


@pytest.mark.parametrize("application, construct", [
    ("self.drop(x)", "module attribute (Dropout)"),
    ("self.my_drop(x)", "module attribute (class MyDropout)"),
    ("F.dropout(x, 0.1, self.training)", "function"),
    ("nn.Dropout(0.2)(x)", "inline module (Dropout)"),
])
def test_dropouts(block, application, construct) -> None:
    ctx, cls = block
    found = is_dropout(ctx, cls, expression(ctx, cls, "forward", application))
    assert found is not None and found.construct == construct


@pytest.mark.parametrize("application", ["self.ln(x)", "F.gelu(x)"])
def test_not_dropouts(block, application) -> None:
    ctx, cls = block
    assert is_dropout(ctx, cls, expression(ctx, cls, "forward", application)) is None


def test_a_call_to_a_function_in_another_file_is_followed(block) -> None:
    ctx, cls = block
    call = expression(ctx, cls, "forward", "attention(x, x, x, mask=mask)")
    callee = resolve_call(ctx, call, cls)
    assert callee is not None and callee.qualname == "attention" and callee.path.endswith("utils.py")
    assert callee.ctx.code(callee.function).strip().startswith("def attention(query, key, value, mask=None, dropout=None)")
    bound = bind_arguments(callee.function, call)
    assert {k: callee.ctx.code(v) if v.deep_equals(cst.Name("None")) else ctx.code(v) for k, v in bound.items()} \
        == {"query": "x", "key": "x", "value": "x", "mask": "mask", "dropout": "None"}
    # the libcst context of the other file answers questions about its own code
    assert is_softmax(callee.ctx, None, next(
        n for n in __import__("tf_migrate.analysis.nodes", fromlist=["find"]).find(
            callee.function, lambda n: isinstance(n, cst.Call) and callee.ctx.code(n) == "scores.softmax(-1)")))


def test_a_method_call_is_followed_and_bound_without_self(block) -> None:
    ctx, cls = block
    call = expression(ctx, cls, "forward", "self.helper(x)")
    callee = resolve_call(ctx, call, cls)
    assert callee is not None and callee.method and callee.qualname == "Block.helper"
    bound = bind_arguments(callee.function, call, bound_self=True)
    assert {k: ctx.code(v) for k, v in bound.items()} == {"x": "x", "scale": "2"}


def test_arguments_that_cannot_be_bound(block) -> None:
    ctx, cls = block
    function = cst.parse_statement("def f(a, b=1):\n    pass\n")
    assert bind_arguments(function, cst.parse_expression("f(*xs)")) is None
    assert bind_arguments(function, cst.parse_expression("f(1, 2, 3)")) is None
    assert bind_arguments(function, cst.parse_expression("f(b=2)")) is None
    assert bind_arguments(function, cst.parse_expression("f(1, a=2)")) is None
