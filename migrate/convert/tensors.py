"""Producing output tensors from the key map, one output shard at a time."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from tf_migrate.convert.errors import ConvertError
from tf_migrate.convert.mapping import NEEDS_TARGET, KeyMap, Op
from tf_migrate.convert.reading import Checkpoint
from tf_migrate.plan import parse_init


def output_shards(ckpt: Checkpoint, keymap: KeyMap,
                  fresh: Mapping[str, Any] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(shard index, {key: tensor}) for each input shard, holding at most one shard at a time.

    `fresh` is a freshly built migrated model's state_dict: where new keys with init "default"
    get their values.
    """
    for index, shard in enumerate(ckpt.shards):
        out: dict[str, Any] = {}
        for key in shard.keys:
            for target in keymap.placed.get(key, []):
                out[target] = _produce(ckpt, keymap.ops[target], target, out, fresh)
                ckpt.release(keep=index)  # a group's sources from other shards: unmap them now
        yield index, out
        ckpt.release()


def _produce(ckpt: Checkpoint, op: Op, key: str, siblings: dict[str, Any], fresh) -> Any:
    import torch

    if op.kind == "copy":
        return ckpt.get(op.sources[0])
    if op.kind == "cat":
        parts = [ckpt.get(s) for s in op.sources]
        dtypes = {part.dtype for part in parts}
        if len(dtypes) > 1:  # torch.cat would promote them silently: the fused weight changes dtype
            found = ", ".join(f"{s} {part.dtype}".replace("torch.", "") for s, part in zip(op.sources, parts))
            raise ConvertError(f"dtype mismatch: cannot fuse {found} into {key}; cast the checkpoint "
                               "to one dtype first")
        return torch.cat(parts, dim=op.dim)
    dtype = next((t.dtype for t in siblings.values() if t.is_floating_point()), torch.float32)
    if parse_init(op.init)[0] == "default":
        if fresh is None or key not in fresh:
            raise ConvertError(f"new key {key} (init 'default') needs the migrated model's fresh "
                               f"state_dict; {NEEDS_TARGET}")
        return fresh[key].detach().to(dtype=dtype, copy=True)
    return initial_value(op.init, op.shape, dtype)


def initial_value(init: str, shape: tuple[int, ...], dtype) -> Any:
    """The tensor a deterministic or seeded init (not "default") gives; ValueError if unknown."""
    import torch

    kind, std = parse_init(init)
    if kind == "ones":
        return torch.ones(shape, dtype=dtype)
    if kind == "zeros":
        return torch.zeros(shape, dtype=dtype)
    if kind == "identity":
        if len(shape) == 2 and shape[0] == shape[1]:
            return torch.eye(shape[0], dtype=dtype)
        return torch.ones(shape, dtype=dtype)  # a norm's scale: identity means weight 1
    if kind == "normal":
        generator = torch.Generator().manual_seed(0)
        return torch.randn(shape, generator=generator, dtype=torch.float32).mul_(std).to(dtype)
    raise ValueError(f"init {init!r} has no value of its own (it is the migrated model's)")


def unshared(state: dict[str, Any]) -> dict[str, Any]:
    """safetensors refuses tensors that share storage (tied embeddings): give each its own."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[key] = tensor.clone() if ident in seen or not tensor.is_contiguous() else tensor
        seen.add(ident)
    return out
