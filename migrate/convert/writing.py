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


_STAGING, _REPLACED = "tf-migrate-staging", "tf-migrate-replaced"


def _temporary_folder(out: Path, kind: str) -> Path:
    """A folder beside OUT (same filesystem, so moves are atomic), named for what it is and for
    the process that made it, so a later run can tell a killed run's leftovers from a live one's."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-{os.getpid()}-", dir=out.parent))


def staging(out: Path) -> Path:
    return _temporary_folder(out, _STAGING)


def remove_stale(out: Path) -> None:
    """Clean up what a killed run left beside OUT: its staging folders, and a replaced OUT that
    was moved aside (put back where OUT is missing, deleted where the new OUT made it)."""
    if not out.parent.is_dir():
        return
    for leftover in out.parent.glob(f".{glob_escape(out.name)}.tf-migrate-*-*-*"):
        kind, _, rest = leftover.name[len(out.name) + 2:].rpartition("-")[0].rpartition("-")
        if kind not in (_STAGING, _REPLACED) or not rest.isdigit() or _alive(int(rest)):
            continue
        old = leftover / out.name
        if kind == _REPLACED and (old.exists() or old.is_symlink()) and not (out.exists() or out.is_symlink()):
            os.replace(old, out)
        shutil.rmtree(leftover, ignore_errors=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        _save_torch({ckpt.wrapper_key: state} if ckpt.wrapper_key else state, target)
    return target


def _save_torch(state: dict[str, Any], path: Path) -> None:
    import torch

    with _write_failures_as_oserror():
        torch.save(state, path)


@contextmanager
def _write_failures_as_oserror() -> Iterator[None]:
    """torch.save reports a failed write (a full disk: "unexpected pos 64 vs 0") as RuntimeError,
    safetensors as its own SafetensorError: inside a save call both are the OSError that the
    caller reports as one line."""
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
        if name.endswith(".safetensors"):
            _save_safetensors(state, folder / name, ckpt.shards[index].metadata)
        else:
            _save_torch(state, folder / name)
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
    aside = _temporary_folder(out, _REPLACED)
    os.replace(out, aside / out.name)
    os.replace(produced, out)
    shutil.rmtree(aside)
