"""Sinusoidal tables across the files of the tree: built in one file, added in another.

A file exports a table when a module-level function returns it, or a module's `forward` does
(`PositionalEncoding(d)(x)` returns rows of its buffer). Another file that calls that function,
or builds that module and calls it, adds the table where the value it gets back meets the token
stream. A factory function that builds either the sinusoidal module or another one (a learned
table) is followed too, and named: the same addition may add trained values.

TFM401 rewrites only a table, its model and its attention that live in one file, so each such
addition is refused with the file and line of the table (2-D image tables with their own reason).
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from tf_migrate.analysis.census import FileIndex, Walker, dotted, self_attribute, walker

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext


@dataclass(frozen=True)
class Source:
    """A table another file can take: `name` (a function, or a module class) in `path`."""

    path: str
    relpath: str
    name: str
    kind: str  # "function" | "class"
    start: int  # the table's first sin/cos line
    two_d: bool


@dataclass
class Use:
    """An addition of this file fed by a `Source` of another file, and TFM401's answer to it."""

    addition: ast.AST
    source: Source
    reason: str
    hint: str
    factory: bool = False


@dataclass(frozen=True)
class User:
    """Where another file adds a table this file exports (for the table's own component)."""

    relpath: str
    line: int
    source: str
    reason: str
    hint: str
    two_d: bool
    factory: bool


def _walker(project, path: str) -> Walker | None:
    """The census walker of another file, from its `ast` alone (no libcst parse): the tree its
    project summary parsed from the same text (the walker's nodes never meet the summary's in one
    question, so sharing them changes no `is`)."""
    def compute():
        text = project.text(path)
        try:
            tree = summary.tree if summary is not None else ast.parse(text) if text is not None else None
            return Walker(FileIndex(tree)) if tree is not None else None
        except (SyntaxError, ValueError, RecursionError):
            return None

    summary = project.summary(path)  # records the read; its tree is of `project.text(path)`
    return project.memo(("rope.walker", path), compute)


def _relpath(project, path: str) -> str:
    try:
        return os.path.relpath(path, project.root)
    except ValueError:
        return path


def exports_of(project, path: str) -> dict[str, Source]:
    """qualname -> Source for the tables file `path` hands out."""
    def compute():
        from tf_migrate.rules.rope.census import tables

        text = project.text(path)
        if text is None or not any(t in text for t in ("sin(", "sin_(")):
            return {}
        walk = _walker(project, path)
        if walk is None:
            return {}
        found: dict[str, Source] = {}
        for table in tables(walk):
            for function in table.exports:
                if function.cls is not None:
                    name, kind = function.cls.qualname, "class"
                else:
                    name, kind = function.qualname, "function"
                found.setdefault(name, Source(path, _relpath(project, path), name, kind, table.start,
                                              table.two_d))
        return found

    return project.memo(("rope.exports", path), compute)


def _factory_source(project, symbol) -> tuple[Source, list[str]] | None:
    """A project function that builds an exported table module in one branch: (the source, the
    other classes it may build instead)."""
    function = symbol.node
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    source, others = None, []
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        if not name:
            continue
        for built in project.resolve_dotted(symbol.path, name):
            if built.kind != "class" or built.path is None:
                continue
            export = exports_of(project, built.path).get(built.qualname)
            if export is not None and export.kind == "class":
                source = source or export
            elif project.is_nn_module(built):
                others.append(name)
    return (source, others) if source is not None else None


def imported_additions(ctx: "FileContext") -> list[Use]:
    """The additions of this file that a table from another file reaches."""
    return ctx.memo("rope.imported", lambda: list(_imported(ctx.project, ctx.project_key, walker(ctx))))


def imported_uses(project, paths, names) -> Iterator[tuple[str, Walker, list[Use]]]:
    """Each file of `paths` that names one of `names` (exported tables, by their last part), its
    walker, and the additions of imported tables it makes (computed once per file)."""
    for path in paths:
        text = project.text(path)
        if text is None or not any(re.search(rf"\b{re.escape(name)}\b", text) for name in names):
            continue
        walk = _walker(project, path)
        if walk is not None:
            yield path, walk, project.memo(("rope.imported", path), lambda: list(_imported(project, path, walk)))


def _imported(project, here: str, walk: Walker):
    from tf_migrate.rules.rope.census import (_not_tokens, following, is_addition, return_sites,
                                              two_d_reason)

    resolved: dict[str, list] = {}  # the same name at module level of `here`: resolved once
    factories: dict[tuple, tuple | None] = {}  # a function called many times: its body read once
    for call in walk.index.calls:
        name = dotted(call.func)
        if not name or name.split(".")[0] == "self":
            continue
        if name not in resolved:
            resolved[name] = project.resolve_dotted(here, name)
        for symbol in resolved[name]:
            if symbol.kind not in ("function", "class") or symbol.path is None:
                continue
            source, factory = _source_of(project, here, symbol, factories)
            if source is None:
                continue
            if source.two_d:
                reason, hint = two_d_reason(source.start)
                reason = f"{reason} (built by `{source.name}` in {source.relpath})"
            elif factory:
                reason = (f"`{name}` builds either the sinusoidal `{source.name}` ({source.relpath}, "
                          f"line {source.start}) or `{factory[0]}`, a trained table, and the same "
                          "addition serves both: trained positions cannot become rotary")
                hint = "build the sinusoidal module directly, or migrate only models that never learn positions"
            elif source.path not in project.files:
                reason = (f"the table is built by `{source.name}` in {source.relpath} (line {source.start}), "
                          "which is not part of this run: TFM401 rewrites a table added in another file only "
                          "together with that file, the model and its attention")
                hint = "run tf-migrate on the whole package"
            else:
                reason = (f"the table is built by `{source.name}` in {source.relpath} (line {source.start}) "
                          "and added here, outside a method of a model class: TFM401 cannot tell which "
                          "attention consumes it")
                hint = "add the table inside a model class's forward"
            for addition in walk.forward_every(call, hit=lambda n, f: is_addition(walk, n),
                                               follow_call=following(walk),
                                               follow_returns=lambda f: return_sites(walk, f)):
                if not _not_tokens(walk, addition):
                    yield Use(addition, source, reason, hint, bool(factory))
            break


def _source_of(project, here: str, symbol, factories: dict) -> tuple[Source | None, list[str] | None]:
    """The exported table a call of `symbol` in `here` builds, and the other classes it may build
    instead when `symbol` is a factory. `factories`: the answers of `_factory_source` so far in
    this file (a function called in many places: its body is read once)."""
    factory: list[str] | None = None
    source = exports_of(project, symbol.path).get(symbol.qualname) if symbol.path != here else None
    if source is None and symbol.kind == "function":
        key = (symbol.path, symbol.qualname, symbol.node)  # nodes compare by identity
        if key not in factories:
            factories[key] = _factory_source(project, symbol)
        found = factories[key]
        if found is not None and (found[0].path != here):
            source, factory = found[0], found[1]
    return source, factory


def first_user(ctx: "FileContext", table) -> User | None:
    """The first addition, in another file of the tree, of a table this file exports."""
    project = ctx.project
    here = ctx.project_key
    exported = {(f.cls.qualname if f.cls is not None else f.qualname) for f in table.exports}
    short = {name.rsplit(".", 1)[-1] for name in exported}
    for path, other, uses in imported_uses(project, (p for p in sorted(project.files) if p != here), short):
        for use in uses:
            if use.source.path == here and use.source.name in exported:
                line = other.index.statement_of(use.addition).lineno
                return User(_relpath(project, path), line, use.source.name, use.reason, use.hint,
                            use.source.two_d, use.factory)
    return None


def _constructor_parameter(walk, side: ast.AST) -> tuple[ast.ClassDef, ast.arg] | None:
    """`self.table[:, :n].to(device)` where `self.table` holds an `__init__` parameter: the outermost
    class (of this file) whose constructor receives it, and that parameter."""
    node = side
    while self_attribute(node) is None:  # through rows read (`[:, :n]`) and method calls (`.to(device)`)
        if isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            node = node.func.value
        else:
            return None
    found: list[tuple[ast.ClassDef, ast.arg]] = []

    def hit(n, function):
        if isinstance(n, ast.arg) and function.cls is not None and function.cls.methods.get("__init__") is not None \
                and n in function.cls.methods["__init__"].args.args and not walk.arguments_for(n):
            found.append((function.cls.node, n))
            return True
        return False

    outermost = None
    for _ in range(4):  # `Encoder(table=table)` inside `Model.__init__(self, table)`: up to the model
        found.clear()
        walk.back(node, hit=hit, into_functions=True)
        if not found:
            return outermost
        outermost = found[0]
        node = _constructed_with(walk, *outermost)
        if node is None:
            return outermost
    return outermost


def _constructed_with(walk, cls: ast.ClassDef, parameter: ast.arg) -> ast.AST | None:
    """What a call `Cls(...)` of this file passes for the constructor's `parameter` (the first)."""
    for call in walk.index.calls_named(cls.name):
        value = _argument(call, cls, parameter)
        if value is not None:
            return value
    return None


def _argument(call: ast.Call, cls: ast.ClassDef, parameter: ast.arg) -> ast.AST | None:
    """What `Cls(...)` passes for the constructor's `parameter`, by keyword or by position."""
    init = next(s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "__init__")
    position = [a.arg for a in init.args.args].index(parameter.arg) - 1
    value = next((k.value for k in call.keywords if k.arg == parameter.arg), None)
    if value is None and 0 <= position < len(call.args) \
            and not any(isinstance(a, ast.Starred) for a in call.args[:position + 1]):
        value = call.args[position]
    return value


def _passed_tables(ctx: "FileContext", cls: ast.ClassDef, parameter: ast.arg):
    """Calls of `cls` in other files of the tree that pass a table some file exports for
    `parameter`: (source, relpath, line of the call)."""
    project = ctx.project
    here = ctx.project_key
    for path in sorted(project.files):
        text = project.text(path) if path != here else None
        if text is None or cls.name not in text:
            continue
        walk = _walker(project, path)
        if walk is None:
            continue
        for call in walk.index.calls:
            name = dotted(call.func)
            if not name or name.rsplit(".", 1)[-1] != cls.name:
                continue
            if not any(s.path == here and s.qualname == cls.name for s in project.resolve_dotted(path, name)):
                continue
            value = _argument(call, cls, parameter)
            if value is None:
                continue
            source = _source_behind(project, path, walk, value)
            if source is not None:
                return source, _relpath(project, path), call.lineno
    return None


def _source_behind(project, path: str, walk, value: ast.AST) -> Source | None:
    """The exported table a value of file `path` is computed from (a call of a tree function)."""
    found: list[Source] = []

    def hit(n, function):
        if isinstance(n, ast.Call) and dotted(n.func):
            for symbol in project.resolve_dotted(path, dotted(n.func)):
                if symbol.kind == "function" and symbol.path:
                    source = exports_of(project, symbol.path).get(symbol.qualname)
                    if source is not None:
                        found.append(source)
                        return True
        return False

    walk.back(value, hit=hit, into_functions=True)
    return found[0] if found else None


def argument_additions(ctx: "FileContext") -> list[Use]:
    """Additions of this file whose table is a constructor argument that another file fills with
    a sinusoidal table: the model cannot show what it holds."""
    return ctx.memo("rope.arguments", lambda: list(_argument_additions(ctx)))


def _argument_additions(ctx: "FileContext"):
    from tf_migrate.rules.rope.census import is_addition, sides

    if not ctx.project.files - {ctx.project_key}:
        return  # `_passed_tables` reads only the other files of the run: a file alone has none
    walk = walker(ctx)
    uses: list[Use] = []
    for node in _addition_candidates(walk):
        if not is_addition(walk, node):
            continue
        for side in sides(walk, node):
            found = _constructor_parameter(walk, side)
            if found is None:
                continue
            passed = _passed_tables(ctx, *found)
            if passed is None:
                continue
            source, relpath, line = passed
            reason = (f"the table is the constructor argument `{found[1].arg}` of `{found[0].name}`, filled by "
                      f"`{source.name}` ({source.relpath}, line {source.start}) in {relpath} (line {line}): the "
                      "model cannot show what it holds, and the caller would still build and pass it")
            uses.append(Use(node, source, reason, "build the table inside the model"))
            break
    # in `ast.walk` order, as a walk over every node of the file would have found them
    yield from sorted(uses, key=lambda use: _walk_rank(walk.index.parents, use.addition))


def _addition_candidates(walk) -> Iterator[ast.AST]:
    """Every node of the file `is_addition` may accept (a `+`, or the value of a `+=`), from the
    census index's parent map rather than a walk of every node; not the `a + b` the index made for
    `a += b` (that node is not in the tree)."""
    for node, parent in walk.index.parents.items():
        if type(parent) is ast.AugAssign:
            if node is parent.value:
                yield node
        elif type(node) is ast.BinOp:
            yield node


def _walk_rank(parents, node: ast.AST) -> tuple[int, list[int]]:
    """Where `ast.walk` (breadth first) meets `node`: by depth, then by the positions of it and its
    ancestors among their parents' children, from the root down."""
    path: list[int] = []
    while node in parents:
        parent = parents[node]
        path.append(next(i for i, child in enumerate(ast.iter_child_nodes(parent)) if child is node))
        node = parent
    return len(path), path[::-1]
