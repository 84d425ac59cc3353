"""Reading checkpoints: PyTorch pickles (weights only), safetensors, and sharded checkpoints of
either (`model.safetensors.index.json` or `pytorch_model.bin.index.json` beside its shards).

A checkpoint is a list of shards; each shard lists its keys and loads one tensor at a time, so a
sharded model never has to be in memory at once.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from tf_migrate.convert.errors import ConvertError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module", "net")


@dataclass
class Shard:
    path: Path
    keys: list[str]
    shape: Callable[[str], tuple[int, ...]]
    get: Callable[[str], Any]
    metadata: dict[str, str] | None = None

    def release(self) -> None:
        """Let go of whatever the shard holds open (nothing, for an in-memory state_dict)."""


@dataclass
class Checkpoint:
    kind: str  # "torch" | "safetensors" | "sharded"
    path: Path
    shards: list[Shard]
    wrapper_key: str | None = None  # `model` in {"model": state_dict, "optimizer": ...}
    left_out: list[str] = field(default_factory=list)
    index: dict[str, Any] | None = None

    def keys(self) -> list[str]:
        return [k for shard in self.shards for k in shard.keys]

    @cached_property
    def shard_of(self) -> dict[str, int]:
        return {k: i for i, shard in enumerate(self.shards) for k in shard.keys}

    def shape(self, key: str) -> tuple[int, ...]:
        return self.shards[self.shard_of[key]].shape(key)

    def get(self, key: str) -> Any:
        return self.shards[self.shard_of[key]].get(key)

    def release(self, keep: int | None = None) -> None:
        for index, shard in enumerate(self.shards):
            if index != keep:
                shard.release()


def read_checkpoint(path: Path, unsafe_pickle: bool = False) -> Checkpoint:
    if not path.exists():
        raise ConvertError(f"{path}: no such file or directory")
    if path.is_dir() or path.name.endswith(".index.json"):
        return _read_sharded(path)
    if path.suffix == ".safetensors":
        return Checkpoint("safetensors", path, [_safetensors_shard(path)])
    return _read_torch(path, unsafe_pickle)


def _read_torch(path: Path, unsafe_pickle: bool) -> Checkpoint:
    import pickle

    import torch

    if unsafe_pickle:
        print(f"tf-migrate: warning: unpickling {path} with weights_only=False runs any code the "
              "file contains; do this only for files you trust", file=sys.stderr)
    try:
        loaded = _torch_load(torch, path, not unsafe_pickle)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) and _is_zip_or_pickle(path):
            raise ConvertError(f"{path}: contains objects other than tensors; loading it needs "
                               "--unsafe-pickle (only for files you trust)") from None
        raise ConvertError(f"{path}: not a PyTorch checkpoint ({_first_line(exc)})") from None
    except Exception as exc:  # torch.load raises almost anything on garbage (IndexError, KeyError, ...)
        raise ConvertError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt "
                           f"({_first_line(exc)})") from None
    state, wrapper_key, left_out = _state_dict(path, loaded, torch)
    return Checkpoint("torch", path, [_in_memory_shard(path, state)], wrapper_key, left_out)


def _in_memory_shard(path: Path, state: dict) -> Shard:
    return Shard(path, list(state), lambda k: tuple(state[k].shape), state.__getitem__)


class _LazyTorchShard(Shard):
    """One `pytorch_model-0000N-of-0000M.bin` shard: a plain state_dict, loaded weights-only
    (memory-mapped where the file allows) when first read and let go by `release()`, like a
    safetensors shard, so a sharded .bin checkpoint is not held in memory at once."""

    def __init__(self, path: Path) -> None:
        self.path, self._state = path, None
        super().__init__(path, list(self._load()), self._shape, self._get)
        self._state = None

    def _load(self) -> dict:
        if self._state is None:
            checkpoint = _read_torch(self.path, unsafe_pickle=False)
            if checkpoint.wrapper_key is not None:
                raise ConvertError(f"{self.path}: a shard of a sharded checkpoint must hold a plain "
                                   f"state_dict, not one wrapped under {checkpoint.wrapper_key!r}")
            self._state = {k: checkpoint.shards[0].get(k) for k in checkpoint.shards[0].keys}
        return self._state

    def _shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._load()[key].shape)

    def _get(self, key: str):
        return self._load()[key]

    def release(self) -> None:
        self._state = None


def _torch_load(torch, path: Path, weights_only: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def _is_zip_or_pickle(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _state_dict(path: Path, loaded: Any, torch) -> tuple[dict, str | None, list[str]]:
    if not isinstance(loaded, dict):
        raise ConvertError(f"{path}: holds a {type(loaded).__name__}, not a state_dict")
    if loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return loaded, None, []
    for key in _WRAPPER_KEYS:
        inner = loaded.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner, key, [k for k in loaded if k != key]
    raise ConvertError(f"{path}: no state_dict found (top-level keys: {', '.join(map(str, loaded))[:300]})")


def _safetensors_shard(path: Path) -> Shard:
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), framework="pt")
        keys = list(handle.keys())
        metadata = handle.metadata()
    except (SafetensorError, OSError) as exc:
        raise ConvertError(f"{path}: not a readable safetensors file, truncated or corrupt "
                           f"({_first_line(exc)})") from None
    return _LazySafetensors(path, keys, metadata)


class _LazySafetensors(Shard):
    """A safetensors shard opened on demand and closed by `release()`.

    An open handle keeps the file mapped, and every page read through it counts towards the
    process's memory: closing it after each shard is what keeps the peak near one shard.
    """

    def __init__(self, path: Path, keys: list[str], metadata: dict[str, str] | None) -> None:
        super().__init__(path, keys, self._shape, self._get, metadata)
        self._handle = None

    def _open(self):
        from safetensors import safe_open

        if self._handle is None:
            self._handle = safe_open(str(self.path), framework="pt")
        return self._handle

    def _shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._open().get_slice(key).get_shape())

    def _get(self, key: str):
        return self._open().get_tensor(key)

    def release(self) -> None:
        self._handle = None


def _shard(path: Path) -> Shard:
    return _safetensors_shard(path) if path.suffix == ".safetensors" else _LazyTorchShard(path)


def _read_sharded(path: Path) -> Checkpoint:
    index_path = path
    if path.is_dir():
        found = sorted(path.glob("*.index.json"))
        if len(found) != 1:
            raise ConvertError(f"{path}: expected one *.index.json, found {len(found)}")
        index_path = found[0]
    try:
        index = json.loads(index_path.read_text())
        weight_map: dict[str, str] = index["weight_map"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConvertError(f"{index_path}: not a sharded checkpoint index ({_first_line(exc)})") from None
    files = list(dict.fromkeys(weight_map.values()))
    missing = [name for name in files if not (index_path.parent / name).is_file()]
    if missing:
        raise ConvertError(f"{index_path}: lists shard {missing[0]}, which is not in {index_path.parent}")
    shards = [_shard(index_path.parent / name) for name in files]
    for shard in shards:
        listed = {k for k, f in weight_map.items() if f == shard.path.name}
        if listed != set(shard.keys):
            missing = sorted(listed - set(shard.keys))[:3]
            raise ConvertError(f"{shard.path}: keys disagree with {index_path.name} (e.g. {missing})")
    return Checkpoint("sharded", index_path, shards, index=index)
