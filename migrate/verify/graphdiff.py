"""Outside the migrated module instances, the two graphs must be the same node for node.

A rule changes only the classes its plan names; every operation outside their instances (the
embeddings, the other layers, the code between blocks) must come out of the tracer unchanged:
same module path, same operation, same output shape, in the same order. The first node where the
sequences part is named with the user's line on each side.

Layout-only operations are left out: whether `.contiguous()` copies (and so appears in the graph)
depends on the strides of the tensor a migrated module returns (SDPA's output, transposed back,
is already contiguous where the original's matmul result was not); it never changes a value.
"""

from __future__ import annotations

from dataclasses import dataclass

from tf_migrate.verify.ops import Op


@dataclass
class OutsideDiff:
    compared: int  # operations outside the migrated instances, per side (the larger count)
    first: str = ""  # empty: identical

    @property
    def ok(self) -> bool:
        return not self.first


_LAYOUT_ONLY = {"contiguous"}


def inside(path: str, regions: list[str]) -> bool:
    return any(not region or path == region or path.startswith(region + ".") for region in regions)


def outside_diff(before: list[Op], after: list[Op], regions: list[str], changed=None) -> OutsideDiff:
    """`regions`: migrated module paths; `changed`: a regions.ChangedCode, the lines the rewriter
    changed (for rules whose change is not confined to the classes they name)."""
    def kept(op: Op, side: str) -> bool:
        return not (inside(op.path, regions) or op.name in _LAYOUT_ONLY or (changed and changed.holds(op, side)))

    old = [op for op in before if kept(op, "before")]
    new = [op for op in after if kept(op, "after")]
    result = OutsideDiff(max(len(old), len(new)))
    for index, (a, b) in enumerate(zip(old, new)):
        if a != b:
            result.first = f"node {index} outside the migrated modules: before {_describe(a)}, after {_describe(b)}"
            return result
    if len(old) != len(new):
        longer, side = (old, "before") if len(old) > len(new) else (new, "after")
        extra = longer[min(len(old), len(new))]
        result.first = f"node {min(len(old), len(new))} outside the migrated modules: only {side} has {_describe(extra)}"
    return result


def _describe(op: Op) -> str:
    shape = f" -> {list(op.shape)}" if op.shape else ""
    where = f" ({op.where})" if op.where else ""
    return f"{op.name} in {op.path or '<root>'}{shape}{where}"
