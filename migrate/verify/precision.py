"""Where the original itself computes below float64 when run in float64.

A model that casts to float32 on purpose (`qk.float()` before a softmax, cast back after) cannot
agree with anything to float64 precision: built in float64 it still rounds there. verify's
float64 pass would then call float32 rounding a difference. This module runs the float64 original
once and finds each operation that takes a float64 tensor and returns a narrower float tensor,
with the module path it ran in and the user's line; modules that do so are judged at the float32
tolerances in the float64 pass, and the report names the line.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

_NARROW = (torch.float32, torch.float16, torch.bfloat16)


class _Narrowing(TorchFunctionMode):
    def __init__(self, stack: list[str], found: dict[str, str]):
        super().__init__()
        self.stack, self.found = stack, found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if self.stack[-1] not in self.found and _narrows((args, kwargs), result):
            self.found[self.stack[-1]] = _user_line()
        return result


def _narrows(inputs, result) -> bool:
    wide = any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tree_leaves(inputs))
    return wide and any(isinstance(t, torch.Tensor) and t.dtype in _NARROW for t in tree_leaves(result))


def _user_line() -> str:
    torch_dir = Path(torch.__file__).parent
    frames = [f for f in traceback.extract_stack()[:-2]
              if torch_dir not in Path(f.filename).parents and Path(f.filename) != Path(__file__)]
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}: {frames[-1].line}" if frames else ""


@torch.no_grad()
def narrowings(model: nn.Module, args: tuple) -> dict[str, str]:
    """module path -> "file:line: code" of the first float64 -> narrower cast in it ("" = root)."""
    stack, found, handles = [""], {}, []

    def leave(module, args, output) -> None:  # a hook that returned a value would replace the output
        stack.pop()

    for path, module in model.named_modules():
        if path:
            handles.append(module.register_forward_pre_hook(lambda m, a, p=path: stack.append(p) and None))
            handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        with _Narrowing(stack, found):
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return found


def narrowed_within(path: str, found: dict[str, str]) -> str:
    """The line of a narrowing inside module `path` (or one of its submodules), or ""."""
    return next((line for where, line in found.items()
                 if not path or where == path or where.startswith(path + ".")), "")
