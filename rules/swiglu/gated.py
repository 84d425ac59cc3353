"""Writing gated feed-forward code (SwiGLU / GeGLU) and its checkpoint-plan entries."""

from __future__ import annotations

import libcst as cst

from tf_migrate.analysis.names import argument, self_attribute
from tf_migrate.plan import NewKey

LINEAR_NOTE = "nn.Linear's own init (kaiming_uniform), or the model's if it re-initialises"
CONV_NOTE = "nn.Conv1d's own init (kaiming_uniform), or the model's if it re-initialises"
CONV1D = "torch.nn.Conv1d"
HELPER_NAMES = {"swiglu": "SwiGLUFeedForward", "geglu": "GeGLUFeedForward"}
GATE_FUNCTIONS = {"swiglu": "silu", "geglu": "gelu"}

_HELPER = '''class {name}({nn}.Module):
    """w2(dropout({act}(w1(x)) * w3(x))): the gated feed-forward written by tf-migrate (TFM301)."""

    def __init__(self, dim, hidden, dropout=0.0, bias=True):
        super().__init__()
        self.w1 = {nn}.Linear(dim, hidden, bias=bias)
        self.w2 = {nn}.Linear(hidden, dim, bias=bias)
        self.w3 = {nn}.Linear(dim, hidden, bias=bias)
        self.dropout = {nn}.Dropout(dropout)

    def forward(self, x):
        # x: (..., dim) -> (..., dim)
        return self.w2(self.dropout({F}.{act}(self.w1(x)) * self.w3(x)))
'''


class Unsupported(Exception):
    pass


def helper_class(kind: str, nn: str, functional: str) -> cst.ClassDef:
    code = _HELPER.format(name=HELPER_NAMES[kind], nn=nn, F=functional, act=GATE_FUNCTIONS[kind])
    return cst.parse_statement(code)  # type: ignore[return-value]


def code_of(node: cst.CSTNode) -> str:
    return cst.Module([]).code_for_node(node)


def gate_name(first: str, second: str, taken) -> str:
    """`fc1` -> `fc3`, `w_1` -> `w_3`, `b1` -> `b3`; otherwise `<first>_gate`."""
    if first[-1:] == "1":
        name = first[:-1] + "3"
    else:
        name = first + "_gate"
    while taken(name):
        name += "_"
    return name


def linear_bias(call: cst.Call, conv: bool = False) -> bool:
    value = argument(call, 7 if conv else 2, "bias")
    if value is None:
        return True
    if isinstance(value, cst.Name) and value.value in ("True", "False"):
        return value.value == "True"
    raise Unsupported(f"whether `{code_of(call)}` has a bias (`bias={code_of(value)}`) is not known")


def linear_features(call: cst.Call, conv: bool = False) -> tuple[cst.BaseExpression, cst.BaseExpression]:
    names = ("in_channels", "out_channels") if conv else ("in_features", "out_features")
    inp, out = argument(call, 0, names[0]), argument(call, 1, names[1])
    if inp is None or out is None:
        raise Unsupported(f"the sizes of `{code_of(call)}` are not readable")
    return inp, out


def matched_hidden(hidden: str, multiple: int) -> str:
    """2/3 of the old hidden size (truncated, as LLaMA does), rounded up to `multiple`."""
    inner = hidden if hidden.isidentifier() or hidden.isdigit() else f"({hidden})"
    return f"(2 * {inner} // 3 + {multiple - 1}) // {multiple} * {multiple}"


def linear_keys(prefix: str, in_: str, out: str, bias: bool, conv: bool = False) -> list[NewKey]:
    """The keys of a Linear (or a kernel-1 Conv1d: weight (out, in, 1))."""
    note = CONV_NOTE if conv else LINEAR_NOTE
    keys = [NewKey(f"{prefix}weight", "default", [out, in_, "1"] if conv else [out, in_], note)]
    if bias:
        keys.append(NewKey(f"{prefix}bias", "default", [out], note))
    return keys


def gated_product(act: cst.Call, function: str, gate_input: cst.BaseExpression,
                  gate: cst.BaseExpression, parenthesize: bool) -> cst.BinaryOperation:
    """`<function>(gate_input) * gate`, e.g. `F.silu(self.fc1(x)) * self.fc3(x)`."""
    if isinstance(gate, cst.BinaryOperation):  # `x @ self.w3 + self.b3`: `*` binds tighter than `+`
        gate = gate.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    product = cst.BinaryOperation(
        left=cst.Call(cst.parse_expression(function), [cst.Arg(gate_input)]),
        operator=cst.Multiply(), right=gate)
    if parenthesize:
        product = product.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    return product


class _Rename(cst.CSTTransformer):
    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    def leave_Attribute(self, original, updated):
        name = self_attribute(original)
        if name in self.names:
            return updated.with_changes(attr=cst.Name(self.names[name]))
        return updated


def renamed_copy(node: cst.CSTNode, names: dict[str, str]) -> cst.CSTNode:
    """A copy of `node` with `self.<old>` replaced by `self.<new>`."""
    return node.visit(_Rename(names))


def parameter_shape(value: cst.BaseExpression) -> list[str] | None:
    """The sizes of `nn.Parameter(torch.randn(a, b) * s)`-like values, as code."""
    if isinstance(value, cst.Call) and value.args:
        inner = value.args[0].value
        while isinstance(inner, cst.BinaryOperation):
            inner = inner.left
        if isinstance(inner, cst.Call):
            sizes = [a.value for a in inner.args if a.keyword is None and not a.star]
            return [code_of(s) for s in sizes] or None
    return None
