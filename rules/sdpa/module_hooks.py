"""Hooks on the softmax or dropout module a chain calls: they would silently stop firing.

`self.softmax = nn.Softmax(dim=-1)` and `self.attn_drop = nn.Dropout(p)` stay in the class after
the rewrite, but SDPA no longer calls them: a forward hook registered on them (to read the
attention map, a common visualisation trick) would never run again, without any error.

This file's registrations and type tests come from `analysis.contracts` (the same reading that
finds hooks in other files, `consumers_of`); here the owner class counts too.
"""

from __future__ import annotations

from tf_migrate.analysis.attention import Refused
from tf_migrate.analysis.contracts import hook_registrations, type_tests
from tf_migrate.analysis.names import self_attribute

_MODULES = frozenset({"torch.nn.Softmax", "torch.nn.Dropout"})


def refuse_hooked(ctx, cls, call) -> None:
    """Raise Refused when a module the chain calls (softmax, dropout) can have a hook in this file."""
    called = {name for node in call.removed_subtree_nodes()
              if (name := self_attribute(node)) and name in cls.submodules
              and cls.submodules[name].callee in _MODULES}
    if not called:
        return
    hooks = hook_registrations(ctx.project, ctx.source_path)
    for hook in hooks:
        if hook.target in called:
            raise Refused(hook.line, f"`{hook.callee}` on line {hook.line} hooks the `{hook.target}` module this "
                          "attention calls; SDPA would not call it, and the hook would silently stop firing",
                          "keep this attention as it is, or move the hook")
    by_type = type_tests(ctx.project, ctx.source_path, _MODULES) if hooks else []
    if by_type:
        test = by_type[0]
        raise Refused(test.line, f"modules are picked by type on line {test.line} (`{test.text}`) and hooks are "
                      f"registered in this file (line {hooks[0].line}): a hook on this attention's softmax or "
                      "dropout would silently stop firing", "keep this attention as it is, or move the hook")
