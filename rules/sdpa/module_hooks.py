"""Hooks on the softmax or dropout module a chain calls: they would silently stop firing.

`self.softmax = nn.Softmax(dim=-1)` and `self.attn_drop = nn.Dropout(p)` stay in the class after
the rewrite, but SDPA no longer calls them: a forward hook registered on them (to read the
attention map, a common visualisation trick) would never run again, without any error.
"""

from __future__ import annotations

import libcst as cst

from tf_migrate.analysis.attention import Refused
from tf_migrate.analysis.names import self_attribute


_HOOKS = ("register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
          "register_full_backward_pre_hook", "register_backward_hook")
_MODULES = ("torch.nn.Softmax", "torch.nn.Dropout")


def refuse_hooked(ctx, cls, call) -> None:
    """Raise Refused when a module the chain calls (softmax, dropout) can have a hook in this file."""
    called = {name for node in call.removed_subtree_nodes()
              if (name := self_attribute(node)) and name in cls.submodules
              and cls.submodules[name].callee in _MODULES}
    if not called:
        return
    hooks = ctx.memo("sdpa.module_hooks", lambda: _hook_calls(ctx))
    for hook in hooks:
        receiver = hook.func.value
        if isinstance(receiver, cst.Attribute) and receiver.attr.value in called:
            raise Refused(ctx.line(hook), f"`{ctx.code(hook.func)}` on line {ctx.line(hook)} hooks the "
                          f"`{receiver.attr.value}` module this attention calls; SDPA would not call it, and "
                          "the hook would silently stop firing", "keep this attention as it is, or move the hook")
    by_type = ctx.memo("sdpa.module_type_tests", lambda: _type_tests(ctx))
    if hooks and by_type:
        test = by_type[0]
        raise Refused(ctx.line(test), f"modules are picked by type on line {ctx.line(test)} "
                      f"(`{ctx.code(test)}`) and hooks are registered in this file (line "
                      f"{ctx.line(hooks[0])}): a hook on this attention's softmax or dropout would "
                      "silently stop firing", "keep this attention as it is, or move the hook")


def _hook_calls(ctx) -> list[cst.Call]:
    return [n for n in ctx.index.of_type(ctx.module, cst.Call) if isinstance(n.func, cst.Attribute)
            and n.func.attr.value in _HOOKS]


def _type_tests(ctx) -> list[cst.Call]:
    """`isinstance(m, nn.Softmax)` / `nn.Dropout` (also in a tuple of types)."""
    found = []
    for node in ctx.index.of_type(ctx.module, cst.Call):
        if ctx.names.builtin(node.func) != "builtins.isinstance" or len(node.args) != 2:
            continue
        types = node.args[1].value
        elements = [e.value for e in types.elements] if isinstance(types, cst.Tuple) else [types]
        if any(ctx.names.imported(e) in _MODULES for e in elements):
            found.append(node)
    return found
