"""Forward inputs: the user's --input expressions, or inferred from the model's first layer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# (batch, length): batch 1 and >1, a short and a longer sequence; kept small so verify is fast.
_SHAPES = ((1, 8), (2, 16))


class InputError(Exception):
    pass


def infer_inputs(model: nn.Module, seed: int) -> list[tuple]:
    first = _first_layer(model)
    generator = torch.Generator().manual_seed(seed)
    if isinstance(first, nn.Embedding):
        return [(torch.randint(0, first.num_embeddings, shape, generator=generator),) for shape in _SHAPES]
    if isinstance(first, nn.Linear):
        return [(torch.randn(*shape, first.in_features, generator=generator),) for shape in _SHAPES]
    name = type(first).__name__ if first is not None else "no layer with parameters"
    raise InputError(f"cannot infer inputs from the first layer ({name}); pass --input EXPR")


def _first_layer(model: nn.Module) -> nn.Module | None:
    for module in model.modules():
        if next(module.children(), None) is None and next(module.parameters(False), None) is not None:
            return module
    return None


def cast_floats(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(cast_floats(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: cast_floats(v, dtype) for k, v in value.items()}
    return value


def paired_tensors(old: Any, new: Any, inside: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """The tensors of two outputs side by side, and how many tensors of `old` the migrated side
    returns as `None` inside a tuple whose other elements it still returns (TFM101 returns `None`
    for probabilities no caller reads: the whole-model check proves no caller does). Outputs of
    other shapes are flattened as `tensors` does."""
    if inside and isinstance(old, torch.Tensor) and new is None:
        return [], [], 1
    if isinstance(old, (tuple, list)) and isinstance(new, (tuple, list)) and len(old) == len(new) \
            and any(b is not None for b in new):
        pairs = [paired_tensors(a, b, inside=True) for a, b in zip(old, new)]
        return ([t for p in pairs for t in p[0]], [t for p in pairs for t in p[1]], sum(p[2] for p in pairs))
    return tensors(old), tensors(new), 0


def tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) output, in a stable order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors(v)]
    if isinstance(value, dict):
        return [t for k in sorted(value, key=str) for t in tensors(value[k])]
    return []
