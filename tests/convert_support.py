"""Helpers for the fusion and convert tests: legacy models, migrated copies, checkpoints on disk."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from helpers import load_module, manifest  # noqa: F401  (re-exported for the convert tests)
from tf_migrate.cli import main

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "fixtures" / "models"


def build(module, expression: str):
    import torch

    return eval(expression, {**vars(module), "torch": torch})


def inputs(module, expressions: list[str]) -> list[tuple]:
    import torch

    found = []
    for expression in expressions:
        value = eval(expression, {**vars(module), "torch": torch})
        found.append(value if isinstance(value, tuple) else (value,))
    return found


def migrate(stem: str, out: Path, select: str = "TFM101,TFM102") -> tuple[Path, Path]:
    """Migrated copy of a legacy model and its plan."""
    plan = out / f"{stem}.plan.json"
    result = CliRunner().invoke(main, [str(MODELS / f"{stem}.py"), "--select", select,
                                       "--output-dir", str(out / "after"), "--plan", str(plan)])
    assert result.exit_code in (0, 1), result.output
    return out / "after" / f"{stem}.py", plan


def convert(*args: str):
    return CliRunner().invoke(main, ["convert", *map(str, args)])


def save_sharded(state: dict, folder: Path, shards: int = 3) -> Path:
    """HF-style sharded safetensors: keys dealt round-robin so fused groups span shards."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    parts: list[dict] = [{} for _ in names]
    weight_map = {}
    for i, (key, tensor) in enumerate(state.items()):
        parts[i % shards][key] = tensor.detach().clone().contiguous()
        weight_map[key] = names[i % shards]
    for name, part in zip(names, parts):
        save_file(part, str(folder / name))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def outputs_close(a, b, atol: float = 1e-5) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=0)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(outputs_close(x, y, atol) for x, y in zip(a, b))
    return a == b
