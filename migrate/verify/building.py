"""Evaluates the user's --build and --input expressions in a model module's namespace.

A model in another dtype is built again from the expression and given the state it should hold,
never copied: `copy.deepcopy` keeps lambdas and closures pointing at the original's submodules.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch
from tf_migrate.verify.loading import LoadError
from torch import nn


def evaluate(expr: str, module: types.ModuleType, seed: int) -> Any:
    namespace = dict(vars(module))
    namespace.setdefault("torch", torch)
    torch.manual_seed(seed)
    try:
        return eval(expr, namespace)  # the user's own expression, on the user's own code
    except SystemExit as exc:
        raise LoadError(f"evaluating {expr!r} in {module.__file__} called sys.exit({exc.code!r})") from exc
    except Exception as exc:
        raise LoadError(f"evaluating {expr!r} in {module.__file__} failed: {type(exc).__name__}: {exc}") from exc


def build_model(expr: str, module: types.ModuleType, seed: int) -> nn.Module:
    model = evaluate(expr, module, seed)
    if not isinstance(model, nn.Module):
        raise LoadError(f"--build {expr!r} gave a {type(model).__name__}, not an nn.Module")
    return model.eval()


@dataclass
class Builder:
    """Builds one side's model again, in any dtype, holding a given state."""

    expr: str
    module: types.ModuleType
    seed: int

    def build(self) -> nn.Module:
        return build_model(self.expr, self.module, self.seed)

    def with_state(self, state: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
        model = self.build().to(dtype)
        model.load_state_dict({key: value.to(dtype) if value.is_floating_point() else value
                               for key, value in state.items()}, strict=True)
        return model.eval()


def as_args(value: Any) -> tuple:
    """A tuple is several positional arguments; anything else is the single argument."""
    return value if isinstance(value, tuple) else (value,)
