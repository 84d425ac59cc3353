"""Per migrated module instance: its output on the inputs it really receives, before vs after.

Forward hooks on the original record each planned instance's inputs (cloned before the module
can change them) and output; the migrated model's module at the same path (the plan maps keys
inside the instance, never the instance's own place) is then called on those very inputs. Both
sides see identical inputs, so a difference belongs to the migrated module alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree
from tf_migrate.verify.direct import through_call
from tf_migrate.verify.inputs import cast_floats, paired_tensors, tensors
from tf_migrate.verify.numerics import compare_tensor_lists
from torch import nn

# A module shared by many call sites (one attention class for self- and cross-attention) is
# checked on its first calls per input; more calls of the same code add time, not evidence.
MAX_CALLS = 4


@dataclass
class InstanceCheck:
    path: str
    cls: str
    rules: list[str]
    dtype: str
    calls: int
    max_abs: float
    max_rel: float
    ok: bool
    problem: str = ""
    returned_none: int = 0  # output tensors the migrated module returns as None (unread probabilities)


@dataclass
class Call:
    args: tuple
    kwargs: dict
    raw: object  # the output as returned (tuple structure kept), for `paired_tensors`

    @property
    def output(self) -> list[torch.Tensor]:
        return tensors(self.raw)


def clone(value):
    return pytree.tree_map(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, value)


@torch.no_grad()
def record_calls(model: nn.Module, paths: list[str], inputs: list[tuple]) -> dict[str, list[Call]]:
    """path -> its first MAX_CALLS calls per input, inputs and output cloned as the module saw them."""
    modules = dict(model.named_modules())
    calls: dict[str, list[Call]] = {path: [] for path in paths}
    pending: dict[str, list] = {path: [] for path in paths}
    budget: dict[str, int] = {}
    handles = []
    for path in paths:
        def before(m, args, kwargs, path=path):
            pending[path].append((clone(args), clone(kwargs)))

        def after(m, args, kwargs, output, path=path):
            args_, kwargs_ = pending[path].pop()
            if budget[path] > 0:
                budget[path] -= 1
                calls[path].append(Call(args_, kwargs_, clone(output)))
        handles.append(modules[path].register_forward_pre_hook(before, with_kwargs=True))
        handles.append(modules[path].register_forward_hook(after, with_kwargs=True))
    try:
        with through_call(model, paths):  # a direct `.forward(...)` call reaches the hooks too
            for args in inputs:
                budget.update(dict.fromkeys(paths, MAX_CALLS))
                model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return calls


@torch.no_grad()
def compare_instances(before: nn.Module, after: nn.Module, planned: list[tuple[str, str, list[str]]],
                      inputs: list[tuple], dtype: torch.dtype, rtol: float, atol: float,
                      exact_rules: set[str], loose: dict[str, tuple[float, float]] | None = None) -> list[InstanceCheck]:
    """`planned`: (path, class name, rules) per migrated instance; rules outside `exact_rules`
    change the function on purpose, so their difference is reported, never judged. `loose`: path ->
    (rtol, atol) for instances whose original rounds below `dtype` itself (verify/precision.py)."""
    inputs = [cast_floats(args, dtype) for args in inputs]
    calls = record_calls(before, [path for path, _, _ in planned], inputs)
    modules = dict(after.named_modules())
    name = str(dtype).replace("torch.", "")
    checks = []
    for path, cls, rules in planned:
        exact = set(rules) <= exact_rules
        module = modules.get(path)
        if module is None:
            checks.append(InstanceCheck(path, cls, rules, name, 0, float("inf"), float("inf"), False,
                                        "the migrated model has no module at this path"))
            continue
        check = InstanceCheck(path, cls, rules, name, len(calls[path]), 0.0, 0.0 if exact else float("nan"), True)
        for call in calls[path]:
            try:
                returned = module(*clone(call.args), **clone(call.kwargs))
            except Exception as exc:  # noqa: BLE001 - a migrated module that crashes is a failure
                check.ok, check.problem = False, f"the migrated module raised {exc!r}"
                break
            old, new, check.returned_none = paired_tensors(call.raw, returned)
            found = compare_tensor_lists(old, new, *(loose or {}).get(path, (rtol, atol)))
            check.max_abs = max(check.max_abs, found.max_abs)
            if exact:
                check.max_rel = max(check.max_rel, found.max_rel)
                check.ok = check.ok and found.ok
                check.problem = check.problem or found.problem
        checks.append(check)
    return checks


@dataclass
class LowPrecision:
    """Max deviation from the float64 original, before and after, in a half-precision dtype."""

    path: str
    dtype: str
    before: float
    after: float
    problem: str = ""


@torch.no_grad()
def low_precision(reference: nn.Module, before: nn.Module, after: nn.Module, paths: list[str],
                  inputs: list[tuple], dtype: torch.dtype) -> list[LowPrecision]:
    """`reference` is the original in float64; `before`/`after` are both sides built in `dtype`."""
    calls = record_calls(reference, paths, [cast_floats(args, torch.float64) for args in inputs])
    old_modules, new_modules = dict(before.named_modules()), dict(after.named_modules())
    name = str(dtype).replace("torch.", "")
    found = []
    for path in paths:
        deviation, problem = [0.0, 0.0], ""
        for call in calls[path]:
            args, kwargs = cast_floats(call.args, dtype), cast_floats(call.kwargs, dtype)
            for side, modules in enumerate((old_modules, new_modules)):
                try:
                    out = tensors(modules[path](*clone(args), **clone(kwargs)))
                except Exception as exc:  # noqa: BLE001 - half precision is not supported by every kernel on CPU
                    problem = f"{('before', 'after')[side]} cannot run in {name}: {type(exc).__name__}: {exc}"[:200]
                    continue
                deviation[side] = max(deviation[side], _max_deviation(call.output, out))
        found.append(LowPrecision(path, name, deviation[0], deviation[1], problem))
    return found


def _max_deviation(reference: list, values: list) -> float:
    diffs = [float((a - b.double()).abs().nan_to_num(0.0).max()) for a, b in zip(reference, values)
             if a.is_floating_point() and a.shape == b.shape and a.numel()]
    return max(diffs, default=0.0)
