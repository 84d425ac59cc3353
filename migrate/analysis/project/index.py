"""The whole-tree index: imports resolved to files, names to definitions, classes to their bases.

Built once per run from the list of files the run reads and a root (the nearest folder above them
with a pyproject.toml, setup.py or .git, else their common parent). It is lazy: a file is
summarised (`summary.FileSummary`, from Python's `ast`) the first time a question reaches it; the
file being migrated gives the tree the engine already parsed. Files under the root that the run
does not name are read when an import leads there. Pickling keeps only the root and the file list,
so each worker process rebuilds its own summaries (cheaper than shipping trees: see README).

While a file is analysed (`analysing(path)`), every other file whose summary a question reads is
recorded: the result cache keys that file's result on their bytes too (`reads`).
"""

from __future__ import annotations

import ast
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from tf_migrate.analysis.nn_bases import dotted_text
from tf_migrate.analysis.project.summary import Defined, FileSummary, Imported, Reference

ROOT_MARKERS = ("pyproject.toml", "setup.py", ".git")


@dataclass(frozen=True)
class Symbol:
    """What a name stands for: something outside the project (`kind` "external", `qualified` its
    dotted name such as "torch.nn.Linear"), a project module (`path`), or a class, function or
    module-level assignment defined in a project file (`path` + `qualname`, `node` its ast)."""

    kind: str  # "external" | "module" | "class" | "function" | "assign"
    qualified: str
    path: str | None = None
    qualname: str | None = None
    node: ast.AST | None = field(default=None, compare=False, hash=False)


def canonical(qualified: str) -> str:
    """One spelling per torch object: `torch.nn.modules.linear.Linear` is `torch.nn.Linear`."""
    found = _CANONICAL.get(qualified)
    if found is None:
        from tf_migrate.analysis.names import canonical as known

        found = known(qualified)
        if found.startswith("torch.nn.modules."):
            found = "torch.nn." + found.rsplit(".", 1)[-1]
        _CANONICAL[qualified] = found
    return found


_CANONICAL: dict[str, str] = {}  # `canonical`'s answers (a fixed table's look-up, asked per resolution)


def absolute(path: str | os.PathLike) -> str:
    if path.__class__ is str:
        found = _ABSOLUTE.get(path)
        if found is not None:
            return found
        if os.path.isabs(path):  # no working folder in the answer: it can be remembered
            found = _ABSOLUTE[path] = os.path.abspath(path)
            return found
    return os.path.abspath(path)


_ABSOLUTE: dict[str, str] = {}  # an absolute path as given -> `os.path.abspath` of it (asked per question)


def find_root(paths: Iterable[str | os.PathLike]) -> str:
    folders = [absolute(p) if os.path.isdir(p) else os.path.dirname(absolute(p)) for p in paths]
    common = os.path.commonpath(folders) if folders else os.getcwd()
    for folder in [common, *map(str, Path(common).parents)]:
        if any(os.path.exists(os.path.join(folder, marker)) for marker in ROOT_MARKERS):
            return folder
    return common


class ProjectIndex:
    def __init__(self, root: str, files: Iterable[str | os.PathLike] = ()) -> None:
        self.root = absolute(root)
        self.files = frozenset(absolute(f) for f in files)
        self._texts: dict[str, str] = {}
        self._summaries: dict[str, FileSummary | None] = {}
        self._modules: dict[tuple[str, str, int], str | None] = {}
        self._current: str | None = None
        self._reads: set[str] = set()
        self._contexts: dict[str, object] = {}
        self._memo: dict[object, object] = {}
        # (file, name) -> `resolve_name`'s answer and the files it read; forgotten when a text changes
        self._resolved: dict[tuple[str, str], tuple[list[Symbol], set[str]]] = {}
        # Set by the engine: (index, path, text) -> its FileContext (analysis does not import the engine).
        self.make_context = None

    @classmethod
    def for_files(cls, files: Iterable[str | os.PathLike]) -> "ProjectIndex":
        files = list(files)
        return cls(find_root(files) if files else os.getcwd(), files)

    def __getstate__(self) -> dict:
        return {"root": self.root, "files": self.files}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"])
        self.files = state["files"]

    # -- files ------------------------------------------------------------------------------

    def add(self, path: str | os.PathLike, text: str, tree: ast.Module | None = None) -> None:
        """Give the index a file's current text (and its tree when the caller has parsed it)."""
        key = absolute(path)
        self._texts[key] = text
        self._contexts.pop(key, None)
        self._resolved.clear()
        if tree is not None:
            self._summaries[key] = FileSummary(key, tree)
        else:
            self._summaries.pop(key, None)

    @contextmanager
    def analysing(self, path: str | os.PathLike) -> Iterator[None]:
        outer, saved = self._current, self._reads
        self._current, self._reads = absolute(path), set()
        try:
            yield
        finally:
            self._current, self._reads = outer, saved

    @property
    def reads(self) -> frozenset[str]:
        """Files other than the one being analysed that its analysis has read so far."""
        return frozenset(self._reads - {self._current})

    def summary(self, path: str) -> FileSummary | None:
        key = absolute(path)
        if self._current is not None:
            self._reads.add(key)
        if key not in self._summaries:
            self._summaries[key] = self._parse(key)
        return self._summaries[key]

    def parsed(self, path: str, text: str) -> ast.Module | None:
        """The `ast` the index already holds for `path` when it was parsed from `text` (the engine's
        parse of the file it migrates, or a summary a question made), so that another reading of the
        same text needs no parse of its own; None otherwise. Records no read and parses nothing."""
        key = absolute(path)
        summary = self._summaries.get(key)
        held = self._texts.get(key)
        if summary is None or held is None or (held is not text and held != text):
            return None
        return summary.tree  # a summary is always of the text held beside it (`add`, `_parse`)

    def shared_tree(self, path: str, text: str) -> ast.Module | None:
        """`parsed`, or, when `text` is the text the index holds for `path` and no question has parsed
        it yet, its parse, kept as the file's summary: the census and the summary of a rewritten file
        read one `ast.parse` of it, whichever asks first. None when the index holds another text or
        Python cannot parse it. Records no read (`summary` still does when a question comes)."""
        tree = self.parsed(path, text)
        key = absolute(path)
        held = self._texts.get(key)
        if tree is not None or key in self._summaries or held is None or (held is not text and held != text):
            return tree
        summary = self._summaries[key] = self._parse(key)
        return summary.tree if summary is not None else None

    def _parse(self, key: str) -> FileSummary | None:
        text = self.text(key)
        try:
            return FileSummary(key, ast.parse(text)) if text is not None else None
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None

    def memo(self, key: object, compute):
        """A whole-tree answer computed once per process (the files it reads are recorded then)."""
        if key not in self._memo:
            outer, self._reads = self._reads, set()
            try:
                self._memo[key] = compute(), self._reads
            finally:
                self._reads = outer | self._reads
        value, reads = self._memo[key]
        if self._current is not None:
            self._reads |= reads  # a later file's answer depends on what the first computation read
        return value

    def context(self, path: str):
        """The libcst context of another project file (parsed on the first question that needs it)."""
        key = absolute(path)
        self.summary(key)  # records the read
        if key not in self._contexts:
            text = self.text(key)
            self._contexts[key] = None if text is None or self.make_context is None else \
                self.make_context(self, key, text)
        return self._contexts[key]

    def text(self, key: str) -> str | None:
        if key not in self._texts:
            from tf_migrate.engine.source import SourceError, decode_source, read_raw

            try:
                self._texts[key] = decode_source(Path(key), read_raw(Path(key))).text
            except (SourceError, OSError):
                return None
        return self._texts[key]

    def inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + os.sep)

    # -- modules ----------------------------------------------------------------------------

    def module_file(self, dotted: str, importer: str, level: int = 0) -> str | None:
        """The project file (or namespace-package folder) an import of `dotted` from `importer`
        refers to; None when it lies outside the root (torch, the standard library...)."""
        key = (dotted, os.path.dirname(absolute(importer)), level)
        if key not in self._modules:
            self._modules[key] = self._find_module(*key)
        return self._modules[key]

    def _find_module(self, dotted: str, folder: str, level: int) -> str | None:
        if not level and dotted.split(".")[0] == "torch":
            return None  # torch is torch, also when the run is over torch's own tree
        if level:
            base = Path(folder)
            for _ in range(level - 1):
                base = base.parent
            bases = [base]
        else:
            bases = [Path(folder), *Path(folder).parents]
            bases = [b for b in bases if self.inside(str(b))]
            top = Path(self.root)
            while (top / "__init__.py").exists():  # the root is itself a package (a torch tree)
                top = top.parent
                bases.append(top)
        parts = [p for p in dotted.split(".") if p]
        for base in bases:
            target = base.joinpath(*parts)
            for candidate in (target / "__init__.py", target.with_name(target.name + ".py") if parts else None):
                if candidate is not None and candidate.is_file() and self.inside(str(candidate)):
                    return str(candidate)
            if parts and target.is_dir() and self.inside(str(target)) and level:
                return str(target)
        return None

    # -- names ------------------------------------------------------------------------------

    def resolve_name(self, path: str, name: str, _seen: frozenset = frozenset()) -> list[Symbol]:
        """Every thing a module-level `name` of file `path` may stand for, imports followed.

        Answered once per (file, name) while the index's texts stay as they are (`add` forgets the
        answers); an answer given again records the files its computation read, as asking again
        would have. Computed outside `analysing` (no reads recorded), an answer is not kept."""
        path = absolute(path)
        if _seen:
            return self._resolve_name(path, name, _seen)
        key = (path, name)
        known = self._resolved.get(key)
        if known is not None:
            if self._current is not None:
                self._reads |= known[1]
            return list(known[0])
        if self._current is None:
            return self._resolve_name(path, name, _seen)
        outer, self._reads = self._reads, set()
        try:
            found = self._resolve_name(path, name, _seen)
        finally:
            read, self._reads = self._reads, outer | self._reads
        self._resolved[key] = found, read
        return list(found)

    def _resolve_name(self, path: str, name: str, _seen: frozenset) -> list[Symbol]:
        if (path, name) in _seen:
            return []
        seen = _seen | {(path, name)}
        if os.path.isdir(path):
            sub = self._find_module(name, path, 1)
            return [Symbol("module", sub, sub)] if sub else []
        summary = self.summary(path)
        if summary is None:
            return []
        found: list[Symbol] = []
        for binding in summary.bindings.get(name, []):
            found.extend(self._binding(path, binding, seen))
        if not found:
            for star in summary.star_imports:
                target = self.module_file(star.module, path, star.level)
                if target:
                    found.extend(self.resolve_name(target, name, seen))
        if not found and path.endswith("__init__.py"):
            sub = self._find_module(name, os.path.dirname(path), 1)
            found = [Symbol("module", sub, sub)] if sub else []
        return found

    def _binding(self, path: str, binding, seen: frozenset) -> list[Symbol]:
        if isinstance(binding, Defined):
            return [Symbol(binding.kind, f"{path}:{binding.qualname}", path, binding.qualname, binding.node)]
        assert isinstance(binding, Imported)
        target = self.module_file(binding.module, path, binding.level)
        if binding.obj is None:
            return [Symbol("module", target, target)] if target else [Symbol("external", binding.module)]
        if target is None:
            return [] if binding.level else [Symbol("external", canonical(f"{binding.module}.{binding.obj}"))]
        return self.resolve_name(target, binding.obj, seen)

    def resolve_dotted(self, path: str, dotted: str) -> list[Symbol]:
        """What `a.b.C` written at module level of `path` stands for."""
        first, *rest = dotted.split(".")
        symbols = self.resolve_name(path, first)
        for part in rest:
            symbols = [inner for symbol in symbols for inner in self.attribute(symbol, part)]
        return symbols

    def attribute(self, symbol: Symbol, name: str) -> list[Symbol]:
        if symbol.kind == "external":
            return [Symbol("external", canonical(f"{symbol.qualified}.{name}"))]
        if symbol.kind == "module" and symbol.path:
            return self.resolve_name(symbol.path, name)
        if symbol.kind == "class" and symbol.path:
            qualname = f"{symbol.qualname}.{name}"
            summary = self.summary(symbol.path)
            node = summary.classes.get(qualname) if summary else None
            return [Symbol("class", f"{symbol.path}:{qualname}", symbol.path, qualname, node)] if node else []
        return []

    # -- classes ----------------------------------------------------------------------------

    def class_symbol(self, path: str, qualname: str) -> Symbol | None:
        summary = self.summary(path)
        node = summary.classes.get(qualname) if summary else None
        return Symbol("class", f"{absolute(path)}:{qualname}", absolute(path), qualname, node) if node else None

    def defines_modules(self, path: str) -> bool:
        """Whether a class of `path` derives from `torch.nn.*`, through project classes included."""
        summary = self.summary(path)
        return summary is not None and any(
            self.is_nn_module(self.class_symbol(path, qualname)) for qualname in summary.classes)

    def bases(self, symbol: Symbol) -> list[list[Symbol]]:
        """Per base of a project class, what it may stand for ([] for a base that is not a name)."""
        if symbol.kind != "class" or not isinstance(symbol.node, ast.ClassDef):
            return []
        return [self.resolve_dotted(symbol.path, text) if (text := dotted_text(base)) else []
                for base in symbol.node.bases]

    def ancestors(self, symbol: Symbol) -> Iterator[Symbol]:
        """The class and every class it derives from, across files, each once."""
        seen: set[Symbol] = set()
        stack = [symbol]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            yield current
            stack.extend(s for alternatives in self.bases(current) for s in alternatives)

    def derives_from(self, symbol: Symbol, *qualified: str) -> bool:
        return any(a.kind == "external" and a.qualified in qualified for a in self.ancestors(symbol))

    def is_nn_module(self, symbol: Symbol) -> bool:
        return any(a.kind == "external" and a.qualified.startswith("torch.nn.") for a in self.ancestors(symbol))

    def method(self, symbol: Symbol, name: str) -> tuple[Symbol, ast.FunctionDef] | None:
        """The first definition of method `name` along the project ancestry (None: inherited from
        outside the project, or absent)."""
        for ancestor in self.ancestors(symbol):
            if isinstance(ancestor.node, ast.ClassDef):
                for statement in ancestor.node.body:
                    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)) and statement.name == name:
                        return ancestor, statement
        return None

    # -- references -------------------------------------------------------------------------

    def references(self, name: str) -> list[Reference]:
        """Every attribute use and string constant `name` in the files of the run (texts that do
        not contain the name are not parsed)."""
        found: list[Reference] = []
        for path in sorted(self.files | set(self._texts)):
            text = self.text(path)
            if text is None or name not in text:
                continue
            summary = self.summary(path)
            if summary is not None:
                found.extend(summary.references(name))
        return found
