"""TFM101's contracts with the rest of the tree: modules the rewrite stops calling, and mask buffers
it would remove (see `analysis.contracts`)."""

from __future__ import annotations

from tf_migrate.analysis.contracts import consumers_of
from tf_migrate.analysis.names import self_attribute
from tf_migrate.analysis.project.places import shown_root

import libcst as cst


def _owner(ctx, cls):
    return ctx.project.class_symbol(ctx.source_path, cls.qualname)


def uncalled_module_consumer(ctx, cls, call) -> str | None:
    """Why the rewrite must not stop calling a softmax/dropout submodule: a hook on it elsewhere."""
    removed = {id(n) for n in call.removed_subtree_nodes()}
    for node in call.removed_subtree_nodes():
        if not isinstance(node, cst.Call):
            continue
        name = self_attribute(node.func)
        sub = cls.submodules.get(name) if name else None
        if sub is None or any(id(ref) not in removed and _is_call(ctx, ref) for ref in cls.self_references(name)):
            continue  # not a submodule, or still called elsewhere in the class
        types = frozenset({sub.callee}) if sub.callee else frozenset()
        found = consumers_of(ctx.project, _owner(ctx, cls), name, {"hook"}, types)
        if found:
            shown = found[0].describe(shown_root(ctx.project, found[0].path))
            return f"the rewrite would stop calling `self.{name}`, but {shown}: it would no longer fire"
    return None


def _is_call(ctx, ref) -> bool:
    parent = ctx.parents.get(ref)
    return isinstance(parent, cst.Call) and parent.func is ref


def kept_buffers(ctx, cls, unused: list[str]) -> tuple[list[str], list[str]]:
    """(buffers to remove, notes on the ones kept registered because something reads them)."""
    removed, notes = [], []
    for buffer in unused:
        found = consumers_of(ctx.project, _owner(ctx, cls), buffer, {"key", "string", "hook"})
        if found:
            shown = found[0].describe(shown_root(ctx.project, found[0].path))
            notes.append(f"unused buffer `{buffer}` kept registered: {shown}")
        else:
            removed.append(buffer)
    return removed, notes
