"""Imports BEFORE and AFTER side by side as uniquely named packages.

Each tree is mounted as a synthetic package (`_tfm_before_<id>`), so two files with the same
name never clash in `sys.modules` and relative imports between sibling files keep working.
"""

from __future__ import annotations

import importlib
import itertools
import sys
import types
from dataclasses import dataclass
from pathlib import Path

_counter = itertools.count()


class LoadError(Exception):
    """The user's code could not be imported or evaluated (exit code 2)."""


@dataclass(frozen=True)
class Source:
    """One side of the comparison: a tree root and the file the --build expression runs in."""

    root: Path
    entry: Path
    single: bool  # one file given, not a tree

    @classmethod
    def from_args(cls, path: Path, entry: str | None) -> Source:
        path = path.resolve()
        if path.is_file():
            return cls(path.parent, path, True)
        if not path.is_dir():
            raise LoadError(f"{path}: no such file or directory")
        if not entry:
            raise LoadError(f"{path} is a directory: name the file that defines the model with --entry")
        target = (path / entry).resolve()
        if path not in target.parents:
            raise LoadError(f"--entry {entry}: must name a file inside {path}")
        if not target.is_file():
            raise LoadError(f"{path / entry}: no such file (from --entry {entry})")
        return cls(path, target, False)

    def relative(self, file: Path) -> Path:
        return file.resolve().relative_to(self.root)


def load_module(source: Source, tag: str) -> types.ModuleType:
    package = f"_tfm_{tag}_{next(_counter)}"
    root = types.ModuleType(package)
    root.__path__ = [str(source.root)]
    root.__package__ = package
    sys.modules[package] = root
    dotted = ".".join(source.relative(source.entry).with_suffix("").parts)
    try:
        return importlib.import_module(f"{package}.{dotted}")
    except Exception as exc:
        raise LoadError(f"importing {source.entry} failed: {type(exc).__name__}: {exc}") from exc
