"""One `tf-migrate convert` run: read, map, write to a staging area, check, move into place."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tf_migrate.convert.errors import ConvertError
from tf_migrate.convert.mapping import KeyMap, build_mapping, group_pattern
from tf_migrate.convert.reading import Checkpoint, read_checkpoint
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

    keymap = build_mapping(plans, ckpt.keys(), ckpt.shape, target_shapes(model) if model else None)
    _write(options, ckpt, keymap, model)
    _report(ckpt, keymap, options, out)


def _check_paths(options: ConvertOptions) -> None:
    if options.check_build and options.model_source is None:
        raise ConvertError("--check-build needs --source AFTER.py (the migrated model's file)")
    source, out = options.source.resolve(), options.out.resolve()
    # OUT may not be an input, hold one (a folder above it: --force would delete it), or lie in one.
    if any(out == p or out in p.parents for p in _inputs(source)) or source in out.parents:
        raise ConvertError(f"{options.out}: would overwrite the input {options.source}; pick another OUT")
    if options.out.exists() and not options.force:
        raise ConvertError(f"{options.out} exists; pass --force to replace it")


def _inputs(source: Path) -> set[Path]:
    """The files a conversion reads: a sharded checkpoint's folder and every shard and index in it."""
    if not (source.is_dir() or source.name.endswith(".index.json")):
        return {source}
    folder = source if source.is_dir() else source.parent
    return {source, folder, *folder.glob("*.safetensors"), *folder.glob("*.index.json")}


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
