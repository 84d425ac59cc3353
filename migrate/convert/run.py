"""One `tf-migrate convert` run: read, map, write to a staging area, check, move into place."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tf_migrate.convert.errors import ConvertError
from tf_migrate.convert.mapping import KeyMap, build_mapping, group_pattern
from tf_migrate.convert.reading import TORCH_SUFFIXES, Checkpoint, read_checkpoint
from tf_migrate.convert.writing import remove_stale
from tf_migrate.plan import ClassPlan


@dataclass
class ConvertOptions:
    source: Path
    out: Path
    plan: Path
    force: bool = False
    unsafe_pickle: bool = False
    check_build: str | None = None
    model_source: Path | None = None


def read_plan(path: Path) -> list[ClassPlan]:
    try:
        document = json.loads(path.read_text())
        if document.get("version") != 1:
            raise ValueError(f"unsupported plan version {document.get('version')!r}")
        return [ClassPlan.from_json(entry) for entry in document["classes"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConvertError(f"{path}: not a tf-migrate plan ({exc})") from None


def convert(options: ConvertOptions, out: TextIO) -> None:
    _check_paths(options)
    plans = read_plan(options.plan)
    ckpt = read_checkpoint(options.source, options.unsafe_pickle)
    model = _target_model(options)
    from tf_migrate.convert.target import target_shapes

    from tf_migrate.convert.selection import model_plans

    plans, other_files = model_plans(plans, ckpt.keys(), options.model_source)
    keymap = build_mapping(plans, ckpt.keys(), ckpt.shape, target_shapes(model) if model else None)
    _write(options, ckpt, keymap, model)
    if other_files:
        out.write(f"plan entries of other models left out: {', '.join(other_files)}\n")
    _report(ckpt, keymap, options, out)


def _check_paths(options: ConvertOptions) -> None:
    if options.check_build and options.model_source is None:
        raise ConvertError("--check-build needs --source AFTER.py (the migrated model's file)")
    out = options.out.resolve()
    inputs = _inputs(options.source)
    # OUT may not be an input, hold one (a folder above it: --force would delete it), or lie in one.
    # Inputs are compared where their links point: Hugging Face's cache links every shard of
    # snapshots/<sha>/ into blobs/, and an OUT of blobs/ would delete them all.
    if any(out == p or out in p.parents or (p.is_dir() and p in out.parents) for p in inputs):
        raise ConvertError(f"{options.out}: would overwrite the input {options.source}; pick another OUT")
    remove_stale(options.out)
    if options.out.exists() or options.out.is_symlink():
        if not options.force:
            raise ConvertError(f"{options.out} exists; pass --force to replace it")
        _check_same_kind(options)


def _inputs(source: Path) -> set[Path]:
    """Every file and folder a conversion reads, as given and where its links point: a single
    checkpoint file, or a sharded checkpoint's folder with every shard and index in it."""
    if source.is_dir() or source.name.endswith(".index.json"):
        folder = source if source.is_dir() else source.parent
        given = {source, folder, *(p for p in folder.iterdir() if _is_checkpoint_part(p))}
    else:
        given = {source}
    return given | {p.resolve() for p in given}


def _is_checkpoint_part(path: Path) -> bool:
    return path.name.endswith((".safetensors", ".index.json", *TORCH_SUFFIXES))


def _check_same_kind(options: ConvertOptions) -> None:
    """--force replaces a file with a file and a folder with a folder, never one with the other:
    a folder OUT for a single-file checkpoint is far more likely a typo than something to delete."""
    sharded = options.source.is_dir() or options.source.name.endswith(".index.json")
    if sharded and not options.out.is_dir():
        raise ConvertError(f"{options.out} is a file, but a sharded checkpoint is written as a folder; "
                           "--force replaces only a folder here: pick another OUT")
    if not sharded and options.out.is_dir():
        raise ConvertError(f"{options.out} is a folder, but the output is one file; --force replaces "
                           "only a file here: pick a file path for OUT")


def _target_model(options: ConvertOptions):
    if not options.check_build:
        return None
    from tf_migrate.convert.target import build_model

    return build_model(options.check_build, options.model_source)


def _write(options: ConvertOptions, ckpt: Checkpoint, keymap: KeyMap, model) -> None:
    try:
        _stage_and_commit(options, ckpt, keymap, model)
    except OSError as exc:
        where = exc.filename or options.out
        raise ConvertError(f"{where}: cannot write the converted checkpoint ({exc.strerror or exc}); "
                           "nothing was written") from None
    except Exception as exc:
        # torch.save and safetensors report a full disk or a failed write as RuntimeError /
        # SafetensorError, not OSError; ConvertError (a failed strict load) passes through.
        if isinstance(exc, ConvertError) or not _is_write_failure(exc):
            raise
        raise ConvertError(f"{options.out}: cannot write the converted checkpoint "
                           f"({str(exc).strip().splitlines()[0][:200]}); nothing was written") from None


def _is_write_failure(exc: Exception) -> bool:
    return type(exc).__name__ == "SafetensorError" or (
        isinstance(exc, RuntimeError) and any(w in str(exc) for w in ("write", "No space", "file")))


def _stage_and_commit(options: ConvertOptions, ckpt: Checkpoint, keymap: KeyMap, model) -> None:
    from tf_migrate.convert.tensors import output_shards
    from tf_migrate.convert.writing import commit, staging, write_all

    stage = staging(options.out)
    try:
        fresh = model.state_dict() if model is not None else None
        produced = write_all(ckpt, output_shards(ckpt, keymap, fresh), options.out, stage)
        if model is not None:
            _check_load(model, ckpt, produced)
        commit(produced, options.out, options.force)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _check_load(model, ckpt: Checkpoint, produced: Path) -> None:
    from tf_migrate.convert.reading import read_checkpoint as read_back
    from tf_migrate.convert.target import load_strictly

    if ckpt.kind == "sharded":
        produced = produced / ckpt.path.name
    written = read_back(produced)
    state = {k: written.get(k) for k in written.keys()}
    load_strictly(model, state, str(produced.name))


def _report(ckpt: Checkpoint, keymap: KeyMap, options: ConvertOptions, out: TextIO) -> None:
    for instance in keymap.instances:
        where = instance.prefix.rstrip(".") or "(top level)"
        out.write(f"converted {where} [{instance.label}]: {'; '.join(instance.changes)}\n")
    if keymap.unmatched:
        out.write(f"no instance in this checkpoint: {', '.join(keymap.unmatched)}\n")
    untouched = group_pattern(keymap.untouched)
    out.write(f"untouched: {len(keymap.untouched)} key(s)\n")
    out.writelines(f"  {line}\n" for line in untouched)
    if ckpt.left_out:
        out.write(f"left out (only `{ckpt.wrapper_key}` is converted and written): "
                  f"{', '.join(map(str, ckpt.left_out))}\n")
    checked = " and loads strictly into the migrated model" if options.check_build else ""
    out.write(f"wrote {options.out}{checked}\n")
