"""Activations a configuration chooses (TFM301's scope): if/elif getters in another file, a
config that holds a table name or the callable itself, library tables; and which choices a
feed-forward may apply."""

from __future__ import annotations

import pytest

from tf_migrate.analysis.activations import Activation, activation_of
from tf_migrate.analysis.ffn import ffn_activation

from project_support import context, expression, module_class, write_project

FILES = {
    "pkg/__init__.py": "",
    "pkg/acts.py": """
        import math
        import torch
        import torch.nn.functional as F

        def erf_gelu(x):
            if hasattr(F, "gelu"):
                return F.gelu(x)
            else:
                return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))

        def tanh_gelu(x):
            if not hasattr(tanh_gelu, "_c"):
                tanh_gelu._c = math.sqrt(2 / math.pi)
            return 0.5 * x * (1 + torch.tanh(tanh_gelu._c * (x + 0.044715 * torch.pow(x, 3))))

        def branchy(x):
            if x.dim() > 2:
                return F.relu(x)
            else:
                return torch.tanh(x)

        def by_name(name):
            if name == "relu":
                return F.relu
            elif name == "gelu":
                return erf_gelu
            elif name == "gelu_tanh":
                return tanh_gelu
            elif name == "tanh":
                return torch.tanh
            elif name == "linear":
                return lambda x: x
            raise RuntimeError(name)

        def with_softmax(name):
            if name == "relu":
                return F.relu
            return F.softmax
    """,
    "pkg/model.py": """
        import torch.nn.functional as F
        from torch import nn
        from transformers.activations import ACT2FN as HF_TABLE

        from . import acts

        TABLE = {"relu": F.relu, "gelu": F.gelu}

        class Block(nn.Module):
            def __init__(self, config, name):
                super().__init__()
                self.by_option = acts.by_name(name=name)
                self.by_literal = acts.by_name("gelu_tanh")
                self.erf = acts.by_name("gelu")
                self.softmaxed = acts.with_softmax(name)
                self.branchy = acts.branchy
                if isinstance(config.act, str):
                    self.configured = TABLE[config.act]
                else:
                    self.configured = config.act
                self.held = config.act
                self.library = HF_TABLE[config.act]
                self.library_new = HF_TABLE["gelu_new"]

            def forward(self, x):
                return (self.by_option(x), self.by_literal(x), self.erf(x), self.softmaxed(x), self.branchy(x),
                        self.configured(x), self.held(x), self.library(x), self.library_new(x))
    """,
}


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    root = tmp_path_factory.mktemp("choices")
    project = write_project(root, FILES)
    ctx = context(project, root / "pkg" / "model.py")
    return ctx, module_class(ctx, "Block")


@pytest.mark.parametrize("application, kinds, construct", [
    ("self.by_option(x)", {"relu", "gelu", "gelu_tanh", "tanh", "identity"}, "getter (name not known)"),
    ("self.by_literal(x)", {"gelu_tanh"}, "getter"),
    ("self.erf(x)", {"gelu"}, "getter"),  # a feature check whose branches compute the same GELU
    ("self.configured(x)", {"relu", "gelu", "configured"}, None),  # two assignments: the choice itself
    ("self.library(x)", {"relu", "gelu", "gelu_tanh", "gelu_sigmoid", "silu", "tanh", "sigmoid", "mish", "relu6",
                         "identity", "leaky_relu"}, "table (key not known)"),
    ("self.library_new(x)", {"gelu_tanh"}, "table"),
])
def test_configured_choices(block, application, kinds, construct) -> None:
    ctx, cls = block
    found = activation_of(ctx, cls, expression(ctx, cls, "forward", application))
    assert found is not None and found.kinds == kinds, found
    assert found.construct == (f"module attribute ({construct})" if construct else "table (key not known)")
    assert ctx.code(found.argument) == "x"


@pytest.mark.parametrize("application", [
    "self.softmaxed(x)",  # one branch normalises
    "self.held(x)",  # a callable of the config with no table of names beside it
    "self.branchy(x)",  # the branches test the input and compute different functions
])
def test_not_known_choices(block, application) -> None:
    ctx, cls = block
    assert activation_of(ctx, cls, expression(ctx, cls, "forward", application)) is None


@pytest.mark.parametrize("kinds, construct, accepted", [
    ({"relu"}, "function", True),
    ({"silu"}, "module", True),  # a Swish FFN becomes SwiGLU just the same
    ({"tanh"}, "function", False),  # tanh heads (QA, pooler) are not feed-forwards
    ({"relu", "tanh", "identity"}, "module attribute (getter (name not known))", True),
    ({"relu", "configured"}, "module attribute (table (key not known))", True),
    ({"tanh", "sigmoid"}, "module attribute (table (key not known))", False),  # no ReLU/GELU/SiLU offered
    ({"relu", "tanh"}, "module attribute (module)", False),  # several kinds that are not a choice
])
def test_which_activations_a_feed_forward_may_apply(kinds, construct, accepted) -> None:
    assert ffn_activation(Activation(frozenset(kinds), construct)) is accepted
