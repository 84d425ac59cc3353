"""Writing the converted checkpoint: into a temporary sibling first, moved into place at the end."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tf_migrate.convert.reading import Checkpoint
from tf_migrate.convert.tensors import unshared


def staging(out: Path) -> Path:
    """A temporary directory beside OUT (same filesystem, so the final move is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def write_all(ckpt: Checkpoint, shards: Iterator[tuple[int, dict[str, Any]]], out: Path,
              stage: Path) -> Path:
    """Write every output shard under `stage`; return the path that will become OUT."""
    if ckpt.kind == "sharded":
        return _write_sharded(ckpt, shards, stage)
    _, state = next(shards)
    target = stage / out.name
    if out.suffix == ".safetensors":
        _save_safetensors(unshared(state), target, ckpt.shards[0].metadata)
    else:
        import torch

        with _write_failures_as_oserror():
            torch.save({ckpt.wrapper_key: state} if ckpt.wrapper_key else state, target)
    return target


@contextmanager
def _write_failures_as_oserror() -> Iterator[None]:
    """torch.save reports a failed write (a full disk) as RuntimeError, safetensors as its own
    SafetensorError: both become the OSError that the caller reports as one line."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, RuntimeError) and type(exc).__name__ != "SafetensorError":
            raise
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise OSError(lines[-1]) from exc


def _save_safetensors(state: dict[str, Any], path: Path, metadata: dict[str, str] | None) -> None:
    from safetensors.torch import save_file

    with _write_failures_as_oserror():
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata or None)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # a checkpoint is not a secret: the usual mode, not 0600


def _write_sharded(ckpt: Checkpoint, shards, stage: Path) -> Path:
    folder = stage / "out"
    folder.mkdir()
    weight_map: dict[str, str] = {}
    total = 0
    for index, state in shards:
        name = ckpt.shards[index].path.name
        state = unshared(state)
        _save_safetensors(state, folder / name, ckpt.shards[index].metadata)
        weight_map.update({k: name for k in state})
        total += sum(t.numel() * t.element_size() for t in state.values())
        del state
    index = dict(ckpt.index or {})
    index["metadata"] = {**index.get("metadata", {}), "total_size": total}
    index["weight_map"] = weight_map
    (folder / ckpt.path.name).write_text(json.dumps(index, indent=2) + "\n")
    return folder


def commit(produced: Path, out: Path, force: bool) -> None:
    """Move the finished output into place; an existing OUT (with --force) goes only at the end."""
    if not (out.exists() or out.is_symlink()):
        os.replace(produced, out)
        return
    if not force:
        raise FileExistsError(out)
    if produced.is_file() and out.is_file() and not out.is_symlink():
        os.replace(produced, out)  # a file over a file: one atomic step
        return
    # A folder cannot replace another in one step: move the old one aside (into a fresh temporary
    # folder, so no leftover of an interrupted run is in the way), then delete it.
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced.", dir=out.parent))
    os.replace(out, aside / out.name)
    os.replace(produced, out)
    shutil.rmtree(aside)
