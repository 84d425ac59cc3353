"""Routes a direct `module.forward(...)` call through `module(...)`, so hooks and tracers see it.

Forward hooks, and the module stack that torch.export and make_fx record, only see calls that go
through `nn.Module.__call__`. A model that calls `self.attention.forward(x, ...)` (BERT-pytorch
does) skips both: the instance's inputs are never recorded and its operations are attributed to
the caller. While `through_call` is active, each named instance gets an instance-level `forward`
that, when called directly, calls the module instead; a call that already came through
`__call__` (flagged by a pre-hook) runs the class's own forward. The model is left as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def through_call(model: nn.Module, paths: list[str]) -> Iterator[None]:
    modules = dict(model.named_modules())
    undo = []
    try:
        for path in dict.fromkeys(paths):
            module = modules.get(path)
            if path and module is not None and "forward" not in vars(module):
                undo.append(_reroute(module))
        yield
    finally:
        for restore in reversed(undo):
            restore()


def _reroute(module: nn.Module):
    own = type(module).forward.__get__(module)
    depth = [0]  # > 0 while a call through __call__ is under way

    def enter(m, args):
        depth[0] += 1

    def leave(m, args, output):
        depth[0] -= 1

    def forward(*args, **kwargs):
        if depth[0]:
            return own(*args, **kwargs)
        return module(*args, **kwargs)  # a direct `.forward(...)`: go through the hooks

    handles = [module.register_forward_pre_hook(enter, prepend=True),
               module.register_forward_hook(leave, always_call=True)]
    module.forward = forward

    def restore() -> None:
        vars(module).pop("forward", None)
        for handle in handles:
            handle.remove()
    return restore
