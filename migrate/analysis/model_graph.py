"""Which module classes a model is built from, as far as one file shows it.

Follows the calls in each class's `__init__` (inside `nn.ModuleList`/`nn.Sequential` too) to the
classes of the same file, and reports what it cannot see into: built-in transformer layers, and
submodules constructed from classes imported from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.names import self_attribute
from tf_migrate.analysis.nodes import find_types

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

BUILTIN_ATTENTION = (
    "torch.nn.MultiheadAttention", "torch.nn.Transformer", "torch.nn.TransformerEncoder",
    "torch.nn.TransformerDecoder", "torch.nn.TransformerEncoderLayer", "torch.nn.TransformerDecoderLayer",
)
_FUNCTIONAL_ATTENTION = "torch.nn.functional.multi_head_attention_forward"
_CONTAINERS = ("torch.nn.ModuleList", "torch.nn.Sequential", "torch.nn.ModuleDict")


@dataclass
class ModelParts:
    classes: list["ModuleClass"] = field(default_factory=list)
    builtin: list[tuple[str, int]] = field(default_factory=list)  # (qualified name, line)
    foreign: list[tuple[str, int]] = field(default_factory=list)


def model_parts(ctx: "FileContext", root: "ModuleClass") -> ModelParts:
    by_name = {cls.node.name.value: cls for cls in ctx.module_classes}
    parts = ModelParts()
    pending = [root]
    while pending:
        cls = pending.pop(0)
        if cls in parts.classes:
            continue
        parts.classes.append(cls)
        for call in find_types(cls.node, cst.Call):
            if ctx.names.callee(call) == _FUNCTIONAL_ATTENTION:
                parts.builtin.append((_FUNCTIONAL_ATTENTION, ctx.line(call)))
        init = cls.methods.get("__init__")
        for call in find_types(init, cst.Call) if init is not None else []:
            if isinstance(call.func, cst.Name) and call.func.value in by_name:
                pending.append(by_name[call.func.value])
                continue
            name = ctx.names.callee(call)
            if name in BUILTIN_ATTENTION:
                parts.builtin.append((name, ctx.line(call)))
            elif name and _is_class_name(name) and not name.startswith("torch.") and _builds_submodule(ctx, call):
                parts.foreign.append((name, ctx.line(call)))
    return parts


def _is_class_name(qualified: str) -> bool:
    return qualified.rsplit(".", 1)[-1][:1].isupper()  # CapWords: a class, not `math.sqrt`


def _builds_submodule(ctx: "FileContext", call: cst.Call) -> bool:
    """`self.x = Foreign(...)`, or `Foreign(...)` inside an nn container."""
    current = ctx.parents.get(call)
    while current is not None and not isinstance(current, cst.SimpleStatementLine):
        if ctx.names.callee(current) in _CONTAINERS:
            return True
        if isinstance(current, cst.Assign):
            return any(self_attribute(t.target) for t in current.targets) and current.value is call
        current = ctx.parents.get(current)
    return False


def outside_users(ctx: "FileContext", cls: "ModuleClass", inside: list["ModuleClass"]) -> list[int]:
    """Lines where `cls` is instantiated other than in the `__init__` of a class of `inside`."""
    name = cls.node.name.value
    allowed = {id(c.methods["__init__"]) for c in inside if "__init__" in c.methods}
    lines = []
    for call in ctx.index.calls_of(ctx.module, name):
        current = ctx.index.enclosing(call, cst.FunctionDef)
        if current is None or id(current) not in allowed:
            lines.append(ctx.line(call))
    return lines
