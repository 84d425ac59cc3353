"""Imports BEFORE and AFTER side by side, each as its own copy of the user's packages.

A file inside a package (its folder has `__init__.py`) is imported under its real dotted name with
the package root on `sys.path` (walking up while `__init__.py` exists), so absolute and relative
imports both work. A file outside any package is mounted as a synthetic package
(`_tfm_before_<id>`) over its tree, so relative imports between sibling files keep working, with
the tree on `sys.path` for sibling absolute imports. After each side is imported, the modules it
loaded from its tree leave `sys.modules`, so the other side imports its own same-named copies.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import keyword
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

_counter = itertools.count()
_MODULE_SPEC = re.compile(r"^\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*:(?!=)(.*)$", re.S)


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
            raise LoadError(f"{path} is a directory: name the file that defines the model with --entry "
                            "or --build MODULE:EXPR")
        target = (path / entry).resolve()
        if path not in target.parents:
            raise LoadError(f"--entry {entry}: must name a file inside {path}")
        if not target.is_file():
            raise LoadError(f"{path / entry}: no such file (from --entry {entry})")
        return cls(path, target, False)

    def relative(self, file: Path) -> Path:
        return file.resolve().relative_to(self.root)


def split_build(build: str) -> tuple[str | None, str]:
    """`pkg.model:Transformer(...)` -> ("pkg/model.py", "Transformer(...)"); a plain expression -> (None, it)."""
    found = _MODULE_SPEC.match(build)
    if not found or keyword.iskeyword(found.group(1).split(".")[0]):
        return None, build
    return found.group(1).replace(".", "/"), found.group(2).strip()


def module_entry(root: Path, dotted_path: str) -> str:
    """The file of module `pkg/model` under `root`: pkg/model.py or pkg/model/__init__.py."""
    for candidate in (f"{dotted_path}.py", f"{dotted_path}/__init__.py"):
        if (root / candidate).is_file():
            return candidate
    raise LoadError(f"--build: no module {dotted_path.replace('/', '.')} under {root}")


def package_top(folder: Path) -> Path | None:
    """The outermost folder of the package chain `folder` belongs to, or None when it is not a package."""
    top = None
    while (folder / "__init__.py").is_file():
        top, folder = folder, folder.parent
    return top


def load_module(source: Source, tag: str) -> types.ModuleType:
    top = package_top(source.entry.parent)
    if top is not None:
        search = top.parent
        dotted = ".".join(source.entry.relative_to(search).with_suffix("").parts)
    else:
        search = source.root
        dotted = _mount(source, tag) + "." + ".".join(source.relative(source.entry).with_suffix("").parts)
    dotted = dotted.removesuffix(".__init__")
    with _own_copies(search):
        try:
            return importlib.import_module(dotted)
        except SystemExit as exc:
            raise LoadError(f"importing {source.entry} called sys.exit({exc.code!r})") from exc
        except Exception as exc:
            raise LoadError(f"importing {source.entry} failed: {type(exc).__name__}: {exc}") from exc


def _mount(source: Source, tag: str) -> str:
    package = f"_tfm_{tag}_{next(_counter)}"
    root = types.ModuleType(package)
    root.__path__ = [str(source.root)]
    root.__package__ = package
    sys.modules[package] = root
    return package


@contextlib.contextmanager
def _own_copies(search: Path):
    """`search` first on sys.path while importing; afterwards the modules loaded from it leave sys.modules."""
    known = set(sys.modules)
    sys.path.insert(0, str(search))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(search))
        for name in set(sys.modules) - known:
            file = getattr(sys.modules[name], "__file__", None)
            if file and not name.startswith("_tfm_") and _under(Path(file), search):
                del sys.modules[name]


def _under(file: Path, folder: Path) -> bool:
    try:
        file.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
