"""q/k/v projections the census traced from an attention that the matcher never paired (their
names are not a q/k/v triple it knows): refused when how they are built already rules fusion out.

Fusion concatenates three Linear weights, so each projection must be one Linear layer built once.
A projection built as a stack of layers (`nn.Sequential(*layers)`) or built by different
constructors in the branches of an `if` is named with its line; anything else stays "not
understood" for the census to report.
"""

from __future__ import annotations

import ast
from typing import Iterator

from tf_migrate.analysis.census import ClassInfo, last_name, unit_projection_class
from tf_migrate.engine.census import unsuppressed
from tf_migrate.engine.rule import Refusal


def unmatched_refusals(ctx, code: str, lines: list[int]) -> Iterator[Refusal]:
    from tf_migrate.rules.fused_qkv.census import reached

    for cls, names, component in reached(ctx, code):
        if any(name.endswith("[*]") for name in names) or len(set(names)) != 3:
            continue
        functions = component.scopes[:-1]
        spans = [(component.start_line, component.end_line), *functions, *((a, a) for a in component.anchors)]
        if any(a <= line <= b for line in lines for a, b in spans) or not unsuppressed([component], ctx.skips):
            continue
        reason = _built(cls, names)
        if reason is not None:
            yield Refusal(component.start_line, f"q/k/v projections not fused: {reason}",
                          "fuse by hand, or mark the class `# tf-migrate: skip[TFM102]`")


def _built(cls: ClassInfo, names: list[str]) -> str | None:
    """Why the way one of the projections is built rules fusion out; None when nothing does."""
    for name in names:
        calls = [v for v in cls.attributes.get(name, ()) if isinstance(v, ast.Call)]
        if not calls:
            continue
        stacks = [c for c in calls if last_name(c.func) in ("Sequential", "ModuleList", "ModuleDict")]
        if stacks:
            return (f"`self.{name}` is built as `{_short(stacks[0])}` (line {stacks[0].lineno}), a stack of "
                    "layers, not one Linear")
        builders = sorted({ast.unparse(c.func) for c in calls})
        if len(builders) > 1:
            shown = " or ".join(f"`{ast.unparse(c.func)}(...)` (line {c.lineno})" for c in calls[:3])
            return f"`self.{name}` is built as {shown}, depending on the branch `__init__` takes"
        if not unit_projection_class(calls[0]):
            return f"`self.{name}` is built by `{ast.unparse(calls[0].func)}(...)` (line {calls[0].lineno}), not a Linear"
    return None


def _short(node: ast.AST, limit: int = 60) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
