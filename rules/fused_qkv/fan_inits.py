"""`nn.init` calls that would see a stacked weight's shape, not its parts'.

Stacking three (d, d) weights into one changes a fresh model only where an initialiser reads the
shape: xavier uses fan_in and fan_out, kaiming one of them, orthogonal/sparse/eye/dirac the whole
matrix. torch reads fan_in from dim 1 and fan_out from dim 0 of a 2-D weight. A call that names one
weight of the class (`self.w_o`, `self.proj.weight`) is the rule's business; a generic one
(`for p in self.parameters(): xavier_uniform_(p)`, `xavier_uniform_(module.weight)` in an
`apply` hook) may reach the stacked weight, and its fresh values then differ in distribution.
Converted checkpoints are unaffected: this only concerns models trained from scratch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.names import argument

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext

_WHOLE_MATRIX = ("xavier_uniform", "xavier_normal", "orthogonal", "sparse", "eye", "dirac")
_KAIMING = ("kaiming_uniform", "kaiming_normal")
_NAMES = {f"{name}{tail}" for name in _WHOLE_MATRIX + _KAIMING for tail in ("_", "")}


def generic_shape_inits(ctx: "FileContext", stacked_dim: int) -> list[cst.Call]:
    """Generic initialiser calls in the file whose result changes when a weight grows along
    `stacked_dim` (0: fan_out, 1: fan_in); once per file version, not once per fused class."""
    return ctx.memo(f"fan_inits.{stacked_dim}", lambda: [
        call for call in ctx.memo("fan_inits", lambda: _generic_calls(ctx)) if _reads_dim(ctx, call, stacked_dim)])


def _generic_calls(ctx: "FileContext") -> list[cst.Call]:
    if not any(name in ctx.text for name in _WHOLE_MATRIX + _KAIMING):
        return []
    candidates = ctx.index.of_type(ctx.module, cst.Call, predicate=lambda n: isinstance(n.func, (cst.Name, cst.Attribute))
                                   and (n.func.value if isinstance(n.func, cst.Name) else n.func.attr.value) in _NAMES)
    return [call for call in candidates
            if (ctx.names.callee(call) or "").rsplit(".", 1)[0] == "torch.nn.init"
            and call.args and not _names_one_weight(call.args[0].value)]


def _names_one_weight(target: cst.BaseExpression) -> bool:
    """`self.w`, `self.proj.weight`: a weight the class names, not a loop variable or a parameter."""
    while isinstance(target, cst.Attribute):
        target = target.value
    return isinstance(target, cst.Name) and target.value == "self"


def _reads_dim(ctx: "FileContext", call: cst.Call, stacked_dim: int) -> bool:
    name = (ctx.names.callee(call) or "").rsplit(".", 1)[-1].rstrip("_")
    if name not in _KAIMING:
        return True
    mode = argument(call, 2, "mode")
    fan_out = isinstance(mode, cst.SimpleString) and mode.evaluated_value == "fan_out"
    return stacked_dim == (0 if fan_out else 1)


def warning(ctx: "FileContext", calls: list[cst.Call]) -> str:
    lines = ", ".join(str(ctx.line(call)) for call in calls[:3]) + (" ..." if len(calls) > 3 else "")
    return (f"; fresh models initialise differently: the generic nn.init call(s) on line(s) {lines} "
            "see the stacked weight's shape (checkpoints converted with the plan are unaffected)")
