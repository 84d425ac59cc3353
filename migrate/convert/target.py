"""`--check-build EXPR --source AFTER.py`: the migrated model, to read shapes off and load into."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from tf_migrate.convert.errors import ConvertError


def build_model(expression: str, source: Path) -> Any:
    import torch

    spec = importlib.util.spec_from_file_location(f"_tf_migrate_target_{abs(hash(source))}", source)
    if spec is None or spec.loader is None or not source.exists():
        raise ConvertError(f"{source}: cannot import the migrated source")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look classes up by module
    try:
        spec.loader.exec_module(module)
        model = eval(expression, {**vars(module), "torch": torch})  # noqa: S307 - the user's own expression
    except Exception as exc:
        raise ConvertError(f"--check-build {expression!r} failed in {source}: {exc!r}") from None
    if not isinstance(model, torch.nn.Module):
        raise ConvertError(f"--check-build {expression!r} gave a {type(model).__name__}, not an nn.Module")
    return model


def target_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_strictly(model: Any, state: dict[str, Any], where: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConvertError(f"the converted checkpoint does not load strictly into the migrated model "
                           f"({where}): {str(exc).strip()[:1500]}") from None
