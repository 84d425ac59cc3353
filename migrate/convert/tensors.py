"""Producing output tensors from the key map, one output shard at a time."""

from __future__ import annotations

import re
from typing import Any, Iterator

from tf_migrate.convert.errors import ConvertError
from tf_migrate.convert.mapping import KeyMap, Op
from tf_migrate.convert.reading import Checkpoint


def output_shards(ckpt: Checkpoint, keymap: KeyMap) -> Iterator[tuple[int, dict[str, Any]]]:
    """(shard index, {key: tensor}) for each input shard, holding at most one shard at a time."""
    for index, shard in enumerate(ckpt.shards):
        out: dict[str, Any] = {}
        for key in shard.keys:
            for target in keymap.placed.get(key, []):
                out[target] = _produce(ckpt, keymap.ops[target], target, out)
                ckpt.release(keep=index)  # a group's sources from other shards: unmap them now
        yield index, out
        ckpt.release()


def _produce(ckpt: Checkpoint, op: Op, key: str, siblings: dict[str, Any]) -> Any:
    import torch

    if op.kind == "copy":
        return ckpt.get(op.sources[0])
    if op.kind == "cat":
        return torch.cat([ckpt.get(s) for s in op.sources], dim=op.dim)
    dtype = next((t.dtype for t in siblings.values() if t.is_floating_point()), torch.float32)
    return _initial(op.init, op.shape, dtype, key)


def _initial(init: str, shape: tuple[int, ...], dtype, key: str) -> Any:
    import torch

    if init == "ones":
        return torch.ones(shape, dtype=dtype)
    if init == "zeros":
        return torch.zeros(shape, dtype=dtype)
    if init == "identity":
        if len(shape) == 2 and shape[0] == shape[1]:
            return torch.eye(shape[0], dtype=dtype)
        return torch.ones(shape, dtype=dtype)  # a norm's scale: identity means weight 1
    normal = re.fullmatch(r"normal\(std=([0-9.eE+-]+)\)", init)
    if normal:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(shape, generator=generator, dtype=torch.float32).mul_(float(normal[1])).to(dtype)
    raise ConvertError(f"new key {key}: unknown init {init!r} (ones, zeros, identity, normal(std=...))")


def unshared(state: dict[str, Any]) -> dict[str, Any]:
    """safetensors refuses tensors that share storage (tied embeddings): give each its own."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[key] = tensor.clone() if ident in seen or not tensor.is_contiguous() else tensor
        seen.add(ident)
    return out
