"""The shared analysis of `nn.Module` subclasses: what `__init__` builds, and the methods.

Rules ask this instead of re-matching `self.x = nn.Linear(...)` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import libcst as cst

from tf_migrate.analysis.names import argument, self_attribute
from tf_migrate.analysis.nodes import children, find_types

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext

_MODULE_BASES = ("torch.nn.Module",)


@dataclass
class Submodule:
    """`self.name = Callee(...)` in `__init__`."""

    name: str
    callee: str | None  # qualified name of what was called, e.g. "torch.nn.Linear"
    call: cst.Call
    statement: cst.SimpleStatementLine


@dataclass
class Buffer:
    """`self.register_buffer("name", value, persistent=...)` in `__init__`."""

    name: str
    value: cst.BaseExpression
    persistent: bool
    statement: cst.SimpleStatementLine


@dataclass
class ModuleClass:
    node: cst.ClassDef
    qualname: str
    submodules: dict[str, Submodule] = field(default_factory=dict)
    buffers: dict[str, Buffer] = field(default_factory=dict)
    methods: dict[str, cst.FunctionDef] = field(default_factory=dict)
    # `self.x = ...` on a line shared with other statements (`a = ...; self.x = ...`): not read as
    # submodules (an edit of the line would touch its neighbours), kept so rules can say so
    crowded: dict[str, cst.SimpleStatementLine] = field(default_factory=dict)

    def submodule_of(self, node: cst.CSTNode, *callees: str) -> Submodule | None:
        """The submodule `self.x` refers to, if it was built by one of `callees`."""
        name = self_attribute(node)
        sub = self.submodules.get(name) if name else None
        if sub is not None and (not callees or sub.callee in callees):
            return sub
        return None

    def self_references(self, attribute: str) -> Iterator[cst.Attribute]:
        """Every `self.<attribute>` in the class body, the `__init__` included."""
        return iter([node for node in find_types(self.node, cst.Attribute) if self_attribute(node) == attribute])


def _is_module_class(ctx: "FileContext", node: cst.ClassDef, known: set[str], qualname: str) -> bool:
    for base in node.bases:
        if isinstance(base.value, cst.Name) and base.value.value in known:
            return True
        name = ctx.names.imported(base.value)
        if name in _MODULE_BASES or (name or "").startswith("torch.nn."):
            return True
    if node.bases:  # a base from another project file (`class Encoder(BaseAttention)`)
        symbol = ctx.project.class_symbol(ctx.source_path, qualname)
        return symbol is not None and ctx.project.is_nn_module(symbol)
    return False


def _init_statements(init: cst.FunctionDef) -> list[cst.SimpleStatementLine]:
    """Simple statements of a body, nested blocks included, nested defs and classes not."""
    return find_types(init.body, cst.SimpleStatementLine, into_scopes=False)


def _read_init(ctx: "FileContext", cls: ModuleClass, init: cst.FunctionDef) -> None:
    for statement in _init_statements(init):
        if len(statement.body) != 1:
            for small in statement.body:
                if isinstance(small, cst.Assign) and len(small.targets) == 1:
                    name = self_attribute(small.targets[0].target)
                    if name:
                        cls.crowded[name] = statement
            continue
        small = statement.body[0]
        if isinstance(small, cst.Assign) and len(small.targets) == 1:
            name = self_attribute(small.targets[0].target)
            if name and isinstance(small.value, cst.Call):
                cls.submodules[name] = Submodule(name, ctx.names.callee(small.value), small.value, statement)
        elif isinstance(small, cst.Expr) and isinstance(small.value, cst.Call):
            _read_register_buffer(cls, small.value, statement)


def _read_register_buffer(cls: ModuleClass, call: cst.Call, statement: cst.SimpleStatementLine) -> None:
    func = call.func
    if not (isinstance(func, cst.Attribute) and func.attr.value == "register_buffer"
            and isinstance(func.value, cst.Name) and func.value.value == "self"):
        return
    name = argument(call, 0, "name")
    value = argument(call, 1, "tensor")
    if not isinstance(name, cst.SimpleString) or value is None:
        return
    persistent = argument(call, 2, "persistent")
    is_persistent = not (isinstance(persistent, cst.Name) and persistent.value == "False")
    cls.buffers[name.evaluated_value] = Buffer(name.evaluated_value, value, is_persistent, statement)


def find_module_classes(ctx: "FileContext") -> list[ModuleClass]:
    found: list[ModuleClass] = []
    _find_in(ctx, list(ctx.module.body), "", found, set())
    return found


def _find_in(ctx: "FileContext", body: list[cst.CSTNode], prefix: str, found: list[ModuleClass],
             known: set[str]) -> None:
    """The module classes of `body` and of the classes and blocks in it, appended to `found`;
    `known`: the names of those found so far (a base may be one of them)."""
    for statement in body:
        if isinstance(statement, cst.ClassDef):
            qualname = prefix + statement.name.value
            if _is_module_class(ctx, statement, known, qualname):
                known.add(statement.name.value)
                found.append(_analyse(ctx, statement, qualname))
            _find_in(ctx, list(statement.body.body), qualname + ".", found, known)
        elif isinstance(statement, _BLOCK_OWNERS):  # `except ImportError: class LayerNorm(...)`
            _find_in(ctx, list(_block_statements(statement)), prefix, found, known)


_BLOCK_OWNERS = (cst.If, cst.Else, cst.Try, cst.TryStar, cst.ExceptHandler, cst.ExceptStarHandler,
                 cst.Finally, cst.With)


def _block_statements(statement: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """The statements of the blocks an if/try/with owns, elif/else/except/finally included."""
    for child in children(statement):
        if isinstance(child, cst.IndentedBlock):
            yield from child.body
        elif isinstance(child, _BLOCK_OWNERS):
            yield from _block_statements(child)


def _analyse(ctx: "FileContext", node: cst.ClassDef, qualname: str) -> ModuleClass:
    cls = ModuleClass(node, qualname)
    for statement in node.body.body:
        if isinstance(statement, cst.FunctionDef):
            cls.methods[statement.name.value] = statement
    if "__init__" in cls.methods:
        _read_init(ctx, cls, cls.methods["__init__"])
    return cls
