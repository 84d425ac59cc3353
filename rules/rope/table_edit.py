"""Taking one addition of a sinusoidal table out of a method (TFM401 across files, across.py), and
the table's storage with it: the `self.<name>` buffer, frozen nn.Parameter or table module, and
the state_dict keys the class loses. Refuses what cannot be taken out as it is (a trainable table,
rows not read in position order from 0, a table module with weights of its own, a stored table
read elsewhere)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.attention import Refused
from tf_migrate.analysis.dataflow import FunctionFlow
from tf_migrate.analysis.names import method_call, number_value, self_attribute
from tf_migrate.analysis.nodes import find
from tf_migrate.rules.rope.places import Added, Source, _context, _rel, class_named

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

_WRAPPERS = ("to", "type_as", "detach", "clone", "float", "half", "double", "cuda", "contiguous",
             "requires_grad_", "unsqueeze", "expand", "expand_as")
_KEPT_MODULES = ("torch.nn.Dropout",)  # a table module's own submodules that hold no weights
_PARAMETERS = ("torch.nn.Parameter", "torch.nn.parameter.Parameter")


@dataclass
class AdditionEdit:
    """The libcst edit of one addition: the replacements and the keys the class loses."""

    statement: cst.SimpleStatementLine
    replacements: dict
    stored: str | None  # `self.<name>` the table is kept in (removed with its statement)
    dropped: list[str]


def edit_addition(fctx: "FileContext", added: Added) -> AdditionEdit:
    """Take the table out of the addition at `added.line`; raises Refused."""
    cls = class_named(fctx, added.cls)
    method = cls.methods.get(added.method)
    statements = _adding_statements(fctx, cls, method, added.source) if method is not None else []
    statement = statements[added.ordinal] if added.ordinal < len(statements) else None
    if statement is None and method is not None:
        _why_not(fctx, cls, method, added)
    if statement is None:
        raise Refused(added.line, f"the addition at {_rel(fctx.project, added.path)} line {added.line} is not a "
                      "simple statement of a method that reads the table", "")
    if fctx.suppressed("TFM401", statement):
        raise Refused(added.line, "the addition is under a `tf-migrate: skip` comment", "")
    for node in find(statement, lambda n: isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.Add)):
        for table, other in ((node.right, node.left), (node.left, node.right)):
            binding = _bound_read(fctx, method, table, statement)
            read = _table_read(fctx, cls, binding.value if binding else table, added.source)
            if read is not None:
                replacements = _remove(statement, node, other)
                if binding is not None:
                    replacements[binding.statement] = cst.RemoveFromParent()
                stored, dropped = read
                if stored is not None:
                    replacements.update(_unstore(fctx, cls, stored, added))
                return AdditionEdit(statement, replacements, stored, dropped)
    for node in find(statement, lambda n: isinstance(n, cst.AugAssign) and isinstance(n.operator, cst.AddAssign)):
        read = _table_read(fctx, cls, node.value, added.source)
        if read is not None:
            replacements = {statement: cst.RemoveFromParent()}
            stored, dropped = read
            if stored is not None:
                replacements.update(_unstore(fctx, cls, stored, added))
            return AdditionEdit(statement, replacements, stored, dropped)
    raise Refused(added.line, f"the table of `{added.source.name}` reaches the addition at line {added.line} "
                  "through a value tf-migrate cannot take out (rows not read in position order from 0, or "
                  "a computed table)", "add the table's rows `[:T]` directly")


def _why_not(fctx, cls, method, added: Added) -> None:
    """The precise refusal (a trainable table, a table module with weights of its own...) of the
    addition at the census's line, when reading its table raises one."""
    for statement in find(method, lambda n: isinstance(n, cst.SimpleStatementLine)):
        if fctx.line(statement) != added.line:
            continue
        for node in find(statement, lambda n: isinstance(n, (cst.BinaryOperation, cst.AugAssign))):
            for side in _added_sides(node):
                binding = _bound_read(fctx, method, side, statement)
                _table_read(fctx, cls, binding.value if binding else side, added.source)


def _added_sides(node) -> tuple:
    """The operands an addition adds: both sides of `a + b`, the value of `x += b`; none otherwise."""
    if isinstance(node, cst.AugAssign):
        return (node.value,) if isinstance(node.operator, cst.AddAssign) else ()
    return (node.left, node.right) if isinstance(node.operator, cst.Add) else ()


def _bound_read(fctx, method, expr, statement):
    """`rows = self.where(ids)` on its own line, `rows` read only by the addition: the binding."""
    from tf_migrate.analysis.dataflow import Binding

    if not isinstance(expr, cst.Name):
        return None
    binding = FunctionFlow(fctx, method).definition(expr.value, statement)
    if not isinstance(binding, Binding) or not isinstance(binding.value, cst.BaseExpression) \
            or fctx.parents.get(binding.statement) is not fctx.parents.get(statement):
        return None
    names = find(method, lambda n: isinstance(n, cst.Name) and n.value == expr.value)
    binding_names = {id(n) for n in find(binding.statement, lambda n: True)}
    if any(n is not expr and id(n) not in binding_names for n in names):
        return None  # read elsewhere too: the binding stays, and the table with it
    return binding


def _adding_statements(fctx, cls, method, source: Source) -> list[cst.SimpleStatementLine]:
    """The one-statement lines of `method` that add rows of `source`, in source order."""
    found = []
    for statement in find(method, lambda n: isinstance(n, cst.SimpleStatementLine)):
        if len(statement.body) != 1:
            continue
        for node in find(statement, lambda n: isinstance(n, (cst.BinaryOperation, cst.AugAssign))):
            bound = [(b.value if (b := _bound_read(fctx, method, side, statement)) else side)
                     for side in _added_sides(node)]
            if any(_quiet_read(fctx, cls, side, source) for side in bound):
                found.append(statement)
                break
    return found


def _remove(statement: cst.SimpleStatementLine, node: cst.BinaryOperation, other) -> dict:
    """`x = x + t` goes; otherwise the sum keeps its other operand."""
    small = statement.body[0]
    if isinstance(small, cst.Assign) and small.value is node and isinstance(other, cst.Name) \
            and len(small.targets) == 1 and isinstance(small.targets[0].target, cst.Name) \
            and small.targets[0].target.value == other.value:
        return {statement: cst.RemoveFromParent()}
    return {node: other.with_changes(lpar=[], rpar=[]) if hasattr(other, "lpar") else other}


def _unwrap(fctx, expr):
    """Through `.to(device)`, `.unsqueeze(0)`, `.expand(B, -1, -1)`, `Variable(...)` and row reads
    from position 0 (`[:, :T]`, `[None]`); None for rows read from elsewhere (`[:, start:]`)."""
    while True:
        receiver = method_call(expr, *_WRAPPERS)
        if receiver is not None:
            expr = receiver
        elif isinstance(expr, cst.Call) and expr.args and (fctx.names.callee(expr) or "").endswith(".Variable"):
            expr = expr.args[0].value
        elif isinstance(expr, cst.Subscript):
            if not all(_from_start(e.slice) for e in expr.slice):
                return None
            expr = expr.value
        else:
            return expr


def _from_start(index) -> bool:
    if isinstance(index, cst.Slice):
        lower = index.lower
        return index.step is None and (lower is None or number_value(lower) == 0)
    value = index.value
    return isinstance(value, cst.Ellipsis) or (isinstance(value, cst.Name) and value.value == "None") \
        or number_value(value) == 0


def _table_read(fctx, cls: "ModuleClass", expr, source: Source) -> tuple[str | None, list[str]] | None:
    """(`self.<name>` holding the table or None, keys dropped) when `expr` reads rows of `source`."""
    base = _unwrap(fctx, expr)
    if base is None:
        return None
    if isinstance(base, cst.Call) and source.kind in ("function", "method") \
            and _calls_source(fctx, base.func, source, cls):
        return None, []  # the table computed on the spot
    if isinstance(base, cst.Call) and source.kind == "class":
        name = self_attribute(base.func)
        sub = cls.submodules.get(name) if name else None
        if sub is not None and _calls_source(fctx, sub.call.func, source):
            return name, [f"{name}.{key}" for key in _module_keys(fctx.project, source)]
        return None
    name = self_attribute(base)
    if name is None or source.kind not in ("function", "method"):
        return None
    if name in cls.buffers:
        value, dropped = cls.buffers[name].value, [name] if cls.buffers[name].persistent else []
    elif name in cls.submodules:
        value, dropped = cls.submodules[name].call, []
        if fctx.names.callee(value) in _PARAMETERS:
            grad = next((a.value for a in value.args if a.keyword and a.keyword.value == "requires_grad"), None)
            if not (isinstance(grad, cst.Name) and grad.value == "False"):
                raise Refused(fctx.line(value), f"`self.{name}` holds the table in a trainable nn.Parameter: "
                              "its trained values cannot become rotary", "")
            value, dropped = value.args[0].value, [name]
    else:
        return None
    inner = _unwrap(fctx, value)
    if isinstance(inner, cst.Call) and _calls_source(fctx, inner.func, source, cls):
        return name, dropped
    return None


def _calls_source(fctx, func, source: Source, cls: "ModuleClass | None" = None) -> bool:
    from tf_migrate.analysis.symbols import dotted as dotted_text

    name = dotted_text(func) if isinstance(func, (cst.Name, cst.Attribute)) else None
    if source.kind == "method":  # `self._table(n, d)` inside the class that defines it
        return cls is not None and source.path == fctx.project_key and name is not None \
            and name.count(".") == 1 and name.startswith("self.") \
            and f"{cls.qualname}.{name[5:]}" == source.name
    if not name or name.startswith("self."):
        return False
    if source.path == fctx.project_key and name == source.name:
        return True
    return any(s.path == source.path and s.qualname == source.name
               for s in fctx.project.resolve_dotted(fctx.project_key, name))


def _module_keys(project, source: Source) -> list[str]:
    """The state_dict keys of a table module (persistent buffers, parameters); refuses a module whose
    forward does not hand back rows from position 0, or that holds anything else (a learned weight
    would be lost)."""
    fctx = _context(project, source.path)
    cls = class_named(fctx, source.name)
    forward = cls.methods.get("forward")
    returns = find(forward, lambda n: isinstance(n, cst.Return)) if forward is not None else []
    rows = _unwrap(fctx, returns[0].value) if len(returns) == 1 and returns[0].value is not None else None
    if rows is None or self_attribute(rows) is None:
        raise Refused(fctx.line(cls.node), f"`{source.name}.forward` does not return rows of its table read "
                      "from position 0 (it looks them up by value, or computes them): tf-migrate cannot tell "
                      "which positions it adds", "")
    keys = [b.name for b in cls.buffers.values() if b.persistent]
    for sub in cls.submodules.values():
        if sub.callee in _PARAMETERS:
            keys.append(sub.name)
        elif sub.callee not in _KEPT_MODULES and sub.callee is not None and sub.callee.startswith("torch.nn."):
            raise Refused(fctx.line(sub.statement), f"the table module `{source.name}` also builds "
                          f"`self.{sub.name}` ({sub.callee}), whose weights would be lost with it", "")
    return keys


def _unstore(fctx, cls: "ModuleClass", name: str, added: Added) -> dict:
    """Remove `self.<name> = ...` (or its register_buffer) from `__init__`; nothing else may read it."""
    statement = cls.buffers[name].statement if name in cls.buffers else cls.submodules[name].statement
    allowed = {id(n) for n in find(statement, lambda n: True)}
    for method in cls.methods.values():
        for addition in _additions_of(fctx, cls, method, added.source):
            allowed |= {id(n) for n in find(addition, lambda n: True)}
    for ref in cls.self_references(name):
        if id(ref) not in allowed:
            raise Refused(fctx.line(ref), f"`self.{name}`, which holds the table, is also read at line "
                          f"{fctx.line(ref)}, which would break once it is gone", "")
    return {statement: cst.RemoveFromParent()}


def _additions_of(fctx, cls, method, source: Source) -> list[cst.CSTNode]:
    """The additions of a table in `method`, and the `rows = <table>` bindings they read."""
    found = []
    for node in find(method, lambda n: isinstance(n, (cst.BinaryOperation, cst.AugAssign, cst.Assign))):
        if isinstance(node, cst.Assign):
            sides = (node.value,)
        else:
            sides = (node.left, node.right) if isinstance(node, cst.BinaryOperation) else (node.value,)
        if any(_quiet_read(fctx, cls, side, source) for side in sides):
            found.append(node)
    return found


def _quiet_read(fctx, cls, expr, source) -> bool:
    try:
        return _table_read(fctx, cls, expr, source) is not None
    except Refused:
        return False
