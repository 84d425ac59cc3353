"""Maps the original state_dict through the checkpoint plan and loads it strictly.

Plans are per class with keys relative to an instance; each module of the original model whose
class a plan names gets the plan applied under its own prefix (`blocks.3.attn.`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tf_migrate.plan import ClassPlan, parse_init
from torch import nn


@dataclass
class LoadReport:
    applied: list[str] = field(default_factory=list)  # "prefix: class (rules)"
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    plan_errors: list[str] = field(default_factory=list)
    new_keys: dict[str, str] = field(default_factory=dict)  # key -> "ok" or why not
    error: str = ""

    @property
    def ok(self) -> bool:
        bad_init = [k for k, v in self.new_keys.items() if not v.startswith(("ok", "not checked"))]
        return not (self.missing or self.unexpected or self.plan_errors or self.error or bad_init)


def planned_instances(model: nn.Module, plans: list[ClassPlan], root: Path | None) -> list[tuple[str, ClassPlan]]:
    """(module path, plan) for every module of `model` whose class a plan names."""
    found = []
    for path, module in model.named_modules():
        for plan in plans:
            if plan.qualname == type(module).__qualname__ and _same_file(plan.file, type(module), root):
                found.append((path, plan))
    return found


def _same_file(plan_file: str, cls: type, root: Path | None) -> bool:
    """`root` None: a single file was given, so every plan is about it, whatever its name was."""
    if root is None:
        return True
    try:
        defined = Path(_class_file(cls)).resolve().relative_to(root)
    except (TypeError, ValueError):
        return False
    want = Path(plan_file).parts
    return want[-len(defined.parts):] == defined.parts


def _class_file(cls: type) -> str:
    """The file defining `cls`, also when its module has left sys.modules (verify's loading does that)."""
    try:
        return inspect.getfile(cls)
    except TypeError:
        code = next((f.__code__ for f in vars(cls).values() if hasattr(f, "__code__")), None)
        if code is None:
            raise
        return code.co_filename


def map_and_load(before: nn.Module, after: nn.Module, plans: list[ClassPlan], root: Path | None) -> LoadReport:
    report = LoadReport()
    state = dict(before.state_dict())
    fresh = after.state_dict()
    for path, plan in planned_instances(before, plans, root):
        prefix = f"{path}." if path else ""
        report.applied.append(f"{path or '<root>'}: {plan.qualname} ({', '.join(plan.rules)})")
        _apply(plan, prefix, state, fresh, report)
    try:
        result = after.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches are raised even when strict=False
        report.error = str(exc).strip()
        return report
    report.missing, report.unexpected = sorted(result.missing_keys), sorted(result.unexpected_keys)
    return report


def _apply(plan: ClassPlan, prefix: str, state: dict, fresh: dict, report: LoadReport) -> None:
    def take(key: str) -> torch.Tensor | None:
        if prefix + key not in state:
            report.plan_errors.append(f"plan names {prefix + key} but the original has no such key")
            return None
        return state.pop(prefix + key)

    for key in plan.dropped:
        take(key)
    for old, new in plan.renamed.items():
        value = take(old)
        if value is not None:
            state[prefix + new] = value
    for cat in plan.concatenated:
        parts = [take(source) for source in cat.sources]
        if all(p is not None for p in parts):
            state[prefix + cat.target] = torch.cat(parts, dim=cat.dim)
    for new in plan.new:
        key = prefix + new.key
        if key not in fresh:
            report.plan_errors.append(f"plan declares new key {key} but the migrated model has none")
            continue
        state[key] = fresh[key]
        report.new_keys[key] = _check_init(fresh[key], new.init)


def _check_init(value: torch.Tensor, init: str) -> str:
    """`value` is the fresh migrated model's: does it start as the plan's init says?"""
    from tf_migrate.convert.tensors import initial_value

    kind, _ = parse_init(init)  # from_json already refused an unknown init
    if kind == "default":
        return "ok (default: the fresh migrated model's own value, by definition)"
    if kind == "normal":
        return f"not checked (random init {init!r})"
    expected = initial_value(init, tuple(value.shape), value.dtype)
    return "ok" if torch.equal(value, expected) else f"not {init} as the plan declares"
