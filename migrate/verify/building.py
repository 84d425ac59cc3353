"""Evaluates the user's --build and --input expressions in a model module's namespace."""

from __future__ import annotations

import types
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
    except Exception as exc:
        raise LoadError(f"evaluating {expr!r} in {module.__file__} failed: {type(exc).__name__}: {exc}") from exc


def build_model(expr: str, module: types.ModuleType, seed: int) -> nn.Module:
    model = evaluate(expr, module, seed)
    if not isinstance(model, nn.Module):
        raise LoadError(f"--build {expr!r} gave a {type(model).__name__}, not an nn.Module")
    return model.eval()


def as_args(value: Any) -> tuple:
    """A tuple is several positional arguments; anything else is the single argument."""
    return value if isinstance(value, tuple) else (value,)
