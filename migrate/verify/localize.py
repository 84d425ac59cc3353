"""On a numerical failure: which submodule introduced the difference.

Both models run with forward hooks that record every submodule's inputs and outputs. Walking
the original's calls in completion order, the culprit is the first submodule whose output
diverges although its inputs agree; a module whose inputs already differ only inherited it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tf_migrate.verify.direct import through_call
from tf_migrate.verify.inputs import tensors
from torch import nn


@dataclass
class Divergence:
    path: str
    max_abs: float
    inherited: bool  # True when no module with agreeing inputs diverged (the first diverging one is named)


def _record(model: nn.Module, args: tuple) -> tuple[list[str], dict[str, list]]:
    order, calls, handles = [], {}, []
    for path, module in model.named_modules():
        def hook(m, a, kw, out, path=path or "<root>"):
            order.append(path)
            calls.setdefault(path, []).append((tensors((a, kw)), tensors(out)))
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad(), through_call(model, [path for path, _ in model.named_modules()]):
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return order, calls


def _close(xs: list, ys: list, rtol: float, atol: float) -> bool:
    return len(xs) == len(ys) and all(
        a.shape == b.shape and (torch.allclose(a.double(), b.double(), rtol, atol, equal_nan=True)
                                if a.is_floating_point() else torch.equal(a, b))
        for a, b in zip(xs, ys))


def _max_abs(xs: list, ys: list) -> float:
    diffs = [float((a.double() - b.double()).abs().nan_to_num(0.0).max())
             for a, b in zip(xs, ys) if a.shape == b.shape and a.is_floating_point() and a.numel()]
    return max(diffs, default=float("inf"))


def first_divergence(before: nn.Module, after: nn.Module, args: tuple,
                     rtol: float, atol: float) -> Divergence | None:
    order, old = _record(before, args)
    _, new = _record(after, args)
    seen: dict[str, int] = {}
    first = None
    for path in order:
        i = seen[path] = seen.get(path, -1) + 1
        if path not in new or i >= len(new[path]):
            continue
        (old_in, old_out), (new_in, new_out) = old[path][i], new[path][i]
        if _close(old_out, new_out, rtol, atol):
            continue
        if _close(old_in, new_in, rtol, atol):
            return Divergence(path, _max_abs(old_out, new_out), False)
        first = first or Divergence(path, _max_abs(old_out, new_out), True)
    return first
