"""What a benchmark runs: one model built from a file and an expression, its inputs at a length, one step.

Shared by the timing loop (bench.py) and the fresh memory-measuring processes (bench_memory.py), so
both measure the same thing. Imports torch: only the bench path loads this module.
"""

from __future__ import annotations

import types
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tf_migrate.verify.building import as_args, build_model
from tf_migrate.verify.inputs import tensors
from tf_migrate.verify.loading import LoadError, Source, load_module
from torch import nn

MODES = ("forward", "forward+backward")
SEED = 0


@dataclass(frozen=True)
class ModelSpec:
    """How to build one side in any process: file (or tree + entry), build expression, inputs."""

    label: str
    path: str
    build: str
    entry: str | None = None
    inputs: str | None = None  # expression with `T` (length) and `B` (batch) bound; default: inferred
    batch: int = 1

    def to_json(self) -> dict:
        return asdict(self)


def load(spec: ModelSpec) -> tuple[nn.Module, types.ModuleType]:
    module = load_module(Source.from_args(Path(spec.path), spec.entry), "bench")
    return build_model(spec.build, module, SEED), module


def make_inputs(spec: ModelSpec, model: nn.Module, module: types.ModuleType, length: int) -> tuple:
    torch.manual_seed(SEED)
    if spec.inputs:
        namespace = dict(vars(module)) | {"T": length, "B": spec.batch}
        namespace.setdefault("torch", torch)
        return as_args(eval(spec.inputs, namespace))  # the user's own expression
    first = next((m for m in model.modules() if isinstance(m, (nn.Embedding, nn.Linear))), None)
    if isinstance(first, nn.Embedding):
        return (torch.randint(0, first.num_embeddings, (spec.batch, length)),)
    if isinstance(first, nn.Linear):
        return (torch.randn(spec.batch, length, first.in_features),)
    raise LoadError("cannot infer benchmark inputs (no Embedding or Linear); pass an inputs expression using T and B")


def step(model: nn.Module, args: tuple, mode: str) -> None:
    """One forward (no grad), or one forward and backward of the sum of the first output tensor."""
    if mode == "forward":
        with torch.no_grad():
            model(*args)
        return
    model.zero_grad(set_to_none=True)
    out = tensors(model(*args))
    out[0].float().sum().backward()


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120] if text else ''}"

