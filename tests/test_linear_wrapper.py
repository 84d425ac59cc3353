"""One recogniser of "a project class that is an nn.Linear under another key prefix"
(`analysis.linear.linear_wrapper`): TFM102 asks it as a LinearWrapper, TFM301 as a LinearLayer
(`wrapped_linear`), and both get the same answer for every spelling."""

from __future__ import annotations

import textwrap

import libcst as cst
import pytest

from tf_migrate.analysis.linear import linear_wrapper, wrapped_linear
from tf_migrate.analysis.names import self_attribute
from tf_migrate.analysis.nodes import find

from project_support import context, module_class, write_project

PLAIN = """
    class Dense(nn.Module):
        def __init__(self, in_features, out_features, bias=True):
            super().__init__()
            self.inner = nn.Linear(in_features, out_features, bias=bias)

        def forward(self, x):
            return self.inner(x)
"""

USER = """
    class User(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.proj = Dense(d, 4 * d)
"""


def _ask(tmp_path, wrapper: str, call: str = "Dense(d, 4 * d)"):
    text = "import torch\nfrom torch import nn\n" + textwrap.dedent(wrapper) + textwrap.dedent(USER).replace(
        "Dense(d, 4 * d)", call)
    project = write_project(tmp_path, {"model.py": text})
    ctx = context(project, tmp_path / "model.py")
    cls = module_class(ctx, "User")
    [assign] = [n for n in find(cls.methods["__init__"], lambda n: isinstance(n, cst.Assign))
                if self_attribute(n.targets[0].target) == "proj"]
    return ctx, assign.value, linear_wrapper(ctx, assign.value), wrapped_linear(ctx, assign.value)


@pytest.mark.parametrize("wrapper, call, features", [
    (PLAIN, "Dense(d, 4 * d)", ("d", "4 * d", "True")),
    (PLAIN, "Dense(d, 4 * d, bias=False)", ("d", "4 * d", "False")),
    (PLAIN.replace("bias=True", "bias=False"), "Dense(d, 4 * d)", ("d", "4 * d", "False")),
    (PLAIN.replace(", bias=True", "").replace(", bias=bias", ", bias=False"), "Dense(d, 4 * d)",
     ("d", "4 * d", "False")),
    (PLAIN.replace("            return self.inner(x)", '            """Applies the layer."""\n'
                   "            return self.inner(x)"), "Dense(d, 4 * d)", ("d", "4 * d", "True")),
    (PLAIN.replace("bias=bias)\n", "bias=bias)\n            nn.init.xavier_uniform_(self.inner.weight)\n"
                   "            if bias:\n                nn.init.zeros_(self.inner.bias)\n"),
     "Dense(d, 4 * d)", ("d", "4 * d", "True")),
], ids=["plain", "bias-passed", "bias-default-false", "bias-fixed", "docstring", "nn-init"])
def test_a_wrapper_is_one_linear_for_both_callers(tmp_path, wrapper, call, features) -> None:
    ctx, node, as_wrapper, as_layer = _ask(tmp_path, wrapper, call)
    assert as_wrapper is not None and as_layer is not None
    assert (as_wrapper.qualname, as_wrapper.inner) == ("Dense", "inner")
    assert (as_layer.construct, as_layer.inner, as_layer.linear_signature) == ("wrapper Dense", "inner", True)
    assert tuple(ctx.code(e) for e in (as_layer.in_features, as_layer.out_features, as_layer.bias)) == features


def test_a_call_not_like_linear_keeps_the_wrapper_but_not_the_signature(tmp_path) -> None:
    _, _, as_wrapper, as_layer = _ask(tmp_path, PLAIN, "Dense(d)")
    assert as_wrapper is not None and as_wrapper.arguments(as_layer.call) is None
    assert as_layer.linear_signature is False and as_layer.in_features is None


# Each was taken for a Linear by TFM301's former recogniser (`_wrapped_layer`) and refused by
# TFM102's: the safe answer, refused, is now the answer of both.
@pytest.mark.parametrize("wrapper", [
    # weight_norm replaces inner.weight by inner.weight_g/weight_v: other keys than a Linear's
    PLAIN.replace("bias=bias)\n", "bias=bias)\n            nn.utils.weight_norm(self.inner)\n"),
    # a parameter of its own beside the Linear: a key the Linear's plan does not carry
    PLAIN.replace("bias=bias)\n", "bias=bias)\n            self.gain = nn.Parameter(torch.ones(out_features))\n"),
    # another method may be called by the user's code
    PLAIN.replace("        def forward", "        def reset_parameters(self):\n"
                  "            self.inner.weight.data.zero_()\n\n        def forward"),
    # the forward takes more than the input
    PLAIN.replace("def forward(self, x):", "def forward(self, x, *rest):"),
    # `__init__` and `forward` inherited from another project wrapper
    PLAIN + "\n    class Wide(Dense):\n        pass\n",
], ids=["weight-norm", "own-parameter", "other-method", "more-inputs", "inherited"])
def test_a_wrapper_that_is_more_than_a_linear_is_neither(tmp_path, wrapper) -> None:
    call = "Wide(d, 4 * d)" if "class Wide" in wrapper else "Dense(d, 4 * d)"
    _, _, as_wrapper, as_layer = _ask(tmp_path, wrapper, call)
    assert as_wrapper is None and as_layer is None


@pytest.mark.parametrize("wrapper", [
    PLAIN.replace("nn.Linear(in_features, out_features", "nn.Linear(in_features, 4 * out_features"),
    PLAIN.replace("return self.inner(x)", "return self.inner(x) * 2"),
    PLAIN.replace("class Dense(nn.Module):", "class Dense(nn.Linear):"),
], ids=["other-size", "forward-scales", "linear-subclass"])
def test_not_wrappers(tmp_path, wrapper) -> None:
    _, _, as_wrapper, as_layer = _ask(tmp_path, wrapper)
    assert as_wrapper is None and as_layer is None
