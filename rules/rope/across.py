"""TFM401 across the files of the tree: one whole-tree component per table, rewritten in every
file at once or in none.

A component is a sinusoidal table built in one place (a module-level function, or a module whose
`forward` returns rows of its table), every addition of it to the token stream outside the place
that builds it, the model(s) whose stream that is (the class that adds it, or the one class that
holds that class, when the attention lies further up), and every attention those models run (any
file). Components whose models share a class are one component. The decision is computed once
for the tree from the project index (`decisions`), so every file of a component reads the same
answer: either its additions are removed, its table's module or parameter with them, and q and k
are rotated in every attention, or every file refuses with the same reason.

Keys and queries must be one stream. When an attention class takes them as two parameters, every
place that calls it is followed up the tree (`self.attn(x, x, x)`, through the projections of a
multi-head wrapper): each must pass one tensor, or values computed from one parameter of its own
caller, to the end. A class built in a container, or called other than through `self.<name>(...)`,
cannot be followed: refused.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import libcst as cst

from tf_migrate.analysis.attention import Refused
from tf_migrate.analysis.dataflow import FunctionFlow, read_names
from tf_migrate.analysis.names import method_call, number_value, self_attribute
from tf_migrate.analysis.nodes import find

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

# TFM401's trigger words (rules/rope/__init__.py): a file without one is never analysed, so a
# component with such a file would be rewritten in half of its files (tests check the two agree).
TRIGGERS = ("sin(", "sin_(", "pos", "Pos", "softmax", "Softmax")
_MAX_UP = 3  # holders followed up from the class that adds the table to the model with attention
_MAX_CALLERS = 4  # callers followed up from an attention to where keys and queries are one tensor
_WRAPPERS = ("to", "type_as", "detach", "clone", "float", "half", "double", "cuda", "contiguous",
             "requires_grad_", "unsqueeze", "expand", "expand_as")
_KEPT_MODULES = ("torch.nn.Dropout",)  # a table module's own submodules that hold no weights
_PARAMETERS = ("torch.nn.Parameter", "torch.nn.parameter.Parameter")
_BUILTIN_ATTENTION = (
    "torch.nn.MultiheadAttention", "torch.nn.Transformer", "torch.nn.TransformerEncoder",
    "torch.nn.TransformerDecoder", "torch.nn.TransformerEncoderLayer", "torch.nn.TransformerDecoderLayer",
)


@dataclass(frozen=True)
class Where:
    """A module class of a project file."""

    path: str
    qualname: str


@dataclass(frozen=True)
class Source:
    """What builds a table: a module-level function, or a module class whose forward returns rows."""

    path: str
    name: str
    kind: str  # "function" | "class"
    line: int


@dataclass(frozen=True)
class Added:
    """One addition of a table (census lines): its file, statement line and method."""

    path: str
    line: int
    cls: str
    method: str
    source: Source
    ordinal: int = 0  # which addition of `source` in `method`, in source order (lines move when
    # an earlier rule rewrote the file: the file's own run finds its additions by this)


@dataclass
class Decision:
    """One whole-tree component: what every file of it does, or the one reason they all refuse."""

    sources: list[Source]
    additions: list[Added]
    models: list[Where] = field(default_factory=list)
    attention: list[Where] = field(default_factory=list)
    dropped: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (path, class) -> keys
    guards: list["Guard"] = field(default_factory=list)  # attentions rotated only when `k is q`
    problem: str | None = None
    hint: str = ""

    def planned(self, path: str, cls: str) -> list[str] | None:
        """The keys the plan of `cls` drops; None when an earlier class of the component drops the
        same keys (the converter finds a plan's instances by its keys: one plan serves both)."""
        keys = sorted(self.dropped.get((path, cls), []))
        for other, dropped in self.dropped.items():
            if other == (path, cls):
                return keys
            if sorted(dropped) == keys:
                return None
        return keys

    def rotated_at_entry(self) -> list[Where]:
        """The attention classes rotated where they start (not those a guard rotates in its holder)."""
        return [w for w in self.attention if w not in {g.scores for g in self.guards}]

    def files(self) -> set[str]:
        return {a.path for a in self.additions} | {s.path for s in self.sources} | {
            w.path for w in self.rotated_at_entry()} | {g.holder.path for g in self.guards}


# -- the per-file answer -----------------------------------------------------------------------

def decisions_for(ctx: "FileContext") -> list[Decision]:
    """The components with a part in this file."""
    here = ctx.project_key
    return [d for d in decisions(ctx.project) if here in d.files()]


def decisions(project) -> list[Decision]:
    return project.memo(("rope.across",), lambda: list(_decisions(project)))


def _decisions(project) -> Iterator[Decision]:
    groups = _groups(project)
    for group in groups:
        decision = Decision(sorted({a.source for a in group}, key=lambda s: (s.path, s.line)), group)
        try:
            _decide(project, decision)
        except Refused as refusal:
            decision.problem, decision.hint = refusal.reason, refusal.hint
        yield decision


def _groups(project) -> list[list[Added]]:
    """The additions of tables added outside the place that builds them, one group per table source,
    then groups whose models share classes merged (see `_merge`)."""
    by_source: dict[Source, list[Added]] = {}
    seen: dict[tuple, int] = {}
    for added in sorted(set(_all_additions(project)), key=lambda a: (a.path, a.line, a.source.path, a.source.name)):
        key = (added.path, added.cls, added.method, added.source)
        added = Added(added.path, added.line, added.cls, added.method, added.source, seen.get(key, 0))
        seen[key] = added.ordinal + 1
        by_source.setdefault(added.source, []).append(added)
    groups = [by_source[s] for s in sorted(by_source, key=lambda s: (s.path, s.line))]
    return _merge(project, groups)


def _all_additions(project) -> Iterator[Added]:
    from tf_migrate.rules.rope.census import tables
    from tf_migrate.rules.rope.tree import _imported, _walker, exports_of

    files = sorted(project.files)
    exported: dict[tuple[str, str], Source] = {}
    for path in files:
        text = project.text(path)
        if text is None or not any(t in text for t in ("sin(", "sin_(")):
            continue
        walk = _walker(project, path)
        if walk is None:
            continue
        for table in tables(walk):
            if table.two_d or table.condition is not None:
                continue
            built = walk.index.function_of(table.calls[0])
            if built.cls is None and _module_level(walk, built):
                source = Source(path, built.qualname, "function", table.start)
            elif built.cls is not None and getattr(built.node, "name", "__init__") not in ("__init__", "forward") \
                    and built.cls.methods.get(built.node.name) is built.node:
                source = Source(path, f"{built.cls.qualname}.{built.node.name}", "method", table.start)
            elif built.cls is not None and any(f.cls is built.cls for f in table.exports):
                source = Source(path, built.cls.qualname, "class", table.start)  # added by another class here
            else:
                continue
            for addition in table.additions:
                added = _added(walk, path, addition, source)
                if added is None or source.kind == "method" and not _not_one_file(project, added):
                    continue
                if source.kind == "class" and added.cls == source.name:
                    continue  # added in its own forward: the one-file rewrite's
                yield added
        for name, export in exports_of(project, path).items():
            if not export.two_d:
                exported[(path, name)] = Source(path, name, export.kind, export.start)
    shorts = {name.rsplit(".", 1)[-1] for _, name in exported}
    for path in files:
        text = project.text(path)
        if text is None or not any(re.search(rf"\b{re.escape(s)}\b", text) for s in shorts):
            continue
        walk = _walker(project, path)
        if walk is None:
            continue
        uses = project.memo(("rope.imported", path), lambda: list(_imported(project, path, walk)))
        for use in uses:
            source = exported.get((use.source.path, use.source.name))
            if use.factory or source is None or source.path == path:
                continue
            added = _added(walk, path, use.addition, source)
            if added is not None:
                yield added


def _not_one_file(project, added: Added) -> bool:
    """A table a helper method builds is this component's only where the one-file rewrite
    (positions.py) does not read that class's addition itself."""
    from tf_migrate.rules.rope.positions import find_additions

    fctx = project.context(added.path)
    if fctx is None or not added.source.name.startswith(added.cls + "."):
        return False  # a helper of another class: not followed
    return not any(a.cls.qualname == added.cls for a in find_additions(fctx))


def _module_level(walk, function) -> bool:
    return walk.index.owner.get(function.node) is walk.index.functions[0]


def _added(walk, path: str, addition: ast.AST, source: Source) -> Added | None:
    function = walk.index.function_of(addition)
    statement = walk.index.statement_of(addition)
    if function.cls is None or statement is None or not hasattr(function.node, "name"):
        return None  # not in a method: the census's own refusal stands
    return Added(path, statement.lineno, function.cls.qualname, function.node.name, source)


# -- deciding one component ----------------------------------------------------------------------

def _decide(project, decision: Decision) -> None:
    for path in sorted({a.path for a in decision.additions} | {s.path for s in decision.sources}):
        _in_run(project, path)
    models: list[Where] = []
    for added in decision.additions:
        fctx = _context(project, added.path)
        edit = edit_addition(fctx, added)  # raises when the addition cannot be taken out
        if fctx.line(edit.statement) != added.line:
            raise Refused(added.line, f"the addition at {_rel(project, added.path)} line {added.line} is not the "
                          "one tf-migrate can take out of that method", "")
        keys = decision.dropped.setdefault((added.path, added.cls), [])
        keys += [key for key in edit.dropped if key not in keys]
        for model in _models(project, Where(added.path, added.cls)):
            if model not in models:
                models.append(model)
    decision.models = models
    inside: list[Where] = []
    for model in models:
        for member in closure(project, model):
            if member not in inside:
                inside.append(member)
    for path in sorted({member.path for member in inside}):
        _in_run(project, path, edited=False)  # every class the models are built from may hold attention
    attention = []
    for member in inside:
        fctx = _context(project, member.path)
        cls = class_named(fctx, member.qualname)
        sites = _sites(fctx, cls)
        if not sites:
            continue
        attention.append(member)
        try:
            for site in sites:
                _one_stream(project, member, site)
        except Refused as refusal:  # one class for self- and cross-attention: rotated when `k is q`
            guard = guarded(project, member, sites) if len(sites) == 1 else None  # raises a precise reason
            if guard is None:
                raise refusal
            decision.guards.append(guard)
    if not attention:
        raise Refused(0, f"no attention found in {_names(models)}, the model(s) these positions feed", "")
    _not_shared(project, inside, models, attention)
    from tf_migrate.rules.rope.positions import find_additions

    for member in [*attention, *(g.holder for g in decision.guards)]:
        _in_run(project, member.path)
        if any(True for _ in find_additions(_context(project, member.path))):
            raise Refused(0, f"{_rel(project, member.path)} also holds a table of its own that TFM401 rewrites "
                          "in that file: the two rewrites would insert the rotary helper twice", "")
    decision.attention = attention


def _in_run(project, path: str, edited: bool = True) -> None:
    """Every file of the component is in the run; one that is edited is also analysed by TFM401."""
    text = project.text(path)
    if path not in project.files:
        raise Refused(0, f"{_rel(project, path)} is not part of this run: TFM401 rewrites a table, its "
                      "model and their attention across files only when every file is in the run",
                      "run tf-migrate on the whole package")
    if not edited:
        return
    if text is None or not any(word in text for word in TRIGGERS):
        raise Refused(0, f"{_rel(project, path)} holds none of the words TFM401 looks for "
                      f"({', '.join(TRIGGERS)}), so it would not be rewritten with the others", "")
    if "tf-migrate: skip" in text:
        raise Refused(0, f"{_rel(project, path)} has a `tf-migrate: skip` comment: the component is "
                      "rewritten in all of its files or none", "")


def _merge(project, groups: list[list[Added]]) -> list[list[Added]]:
    """Groups whose models share a class (one attention class run by an encoder and a decoder)."""
    reach: list[set[Where]] = []
    for group in groups:
        members: set[Where] = set()
        for added in group:
            try:
                models = _models(project, Where(added.path, added.cls))
            except Refused:
                models = [Where(added.path, added.cls)]
            for model in models:
                try:  # the classes on the way to an attention: sharing a feed-forward joins nothing
                    members |= {m for m in closure(project, model)
                                if any(_has_attention(project, a) for a in closure(project, m))}
                except Refused:
                    members.add(model)
        reach.append(members)
    merged: list[tuple[list[Added], set[Where]]] = []
    for group, members in zip(groups, reach):
        for other in [m for m in merged if m[1] & members]:
            merged.remove(other)
            group, members = other[0] + group, other[1] | members
        merged.append((group, members))
    return [group for group, _ in merged]


# -- the addition and the table's storage --------------------------------------------------------

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
            if isinstance(node, cst.AugAssign):
                sides = (node.value,) if isinstance(node.operator, cst.AddAssign) else ()
            else:
                sides = (node.left, node.right) if isinstance(node.operator, cst.Add) else ()
            for side in sides:
                binding = _bound_read(fctx, method, side, statement)
                _table_read(fctx, cls, binding.value if binding else side, added.source)


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
            if isinstance(node, cst.AugAssign):
                sides = (node.value,) if isinstance(node.operator, cst.AddAssign) else ()
            else:
                sides = (node.left, node.right) if isinstance(node.operator, cst.Add) else ()
            bound = [(b.value if (b := _bound_read(fctx, method, side, statement)) else side) for side in sides]
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


# -- the model and what it is built from ---------------------------------------------------------

def _context(project, path: str) -> "FileContext":
    fctx = project.context(path)
    if fctx is None:
        raise Refused(0, f"{_rel(project, path)} cannot be read", "")
    return fctx


def class_named(fctx, qualname: str) -> "ModuleClass":
    for cls in fctx.module_classes:
        if cls.qualname == qualname:
            return cls
    raise Refused(0, f"`{qualname}` is not an nn.Module class tf-migrate can read", "")


def _models(project, where: Where, depth: int = 0) -> list[Where]:
    """The class that adds the table when its own parts hold attention, else every class that
    builds it in `__init__` (an embedding shared by an encoder and a decoder), followed up."""
    if any(_has_attention(project, m) for m in closure(project, where)):
        return [where]
    holders = instantiations(project, where)
    if depth >= _MAX_UP or not holders or any(h.owner is None or not h.in_init for h in holders):
        built = "nothing in the run builds it" if not holders else "it is built at " + ", ".join(
            f"{_rel(project, h.path)} line {h.line}" for h in holders) + ", not only in models' `__init__`"
        raise Refused(0, f"`{where.qualname}` adds the positions but runs no attention, and {built}: "
                      "tf-migrate cannot tell which attention consumes its positions", "")
    found: list[Where] = []
    for holder in holders:
        for model in _models(project, Where(holder.path, holder.owner), depth + 1):
            if model not in found:
                found.append(model)
    return found


def _has_attention(project, where: Where) -> bool:
    fctx = _context(project, where.path)
    cls = class_named(fctx, where.qualname)
    code = fctx.code(cls.node)
    return ("softmax" in code or "Softmax" in code) and ("@" in code or "matmul" in code or "bmm" in code
                                                         or "einsum" in code or "scaled_dot_product" in code)


def closure(project, where: Where) -> list[Where]:
    """`where` and every project module class its methods build, across files; refuses built-in
    attention, modules of other libraries and modules passed in through the constructor."""
    return project.memo(("rope.closure", where), lambda: _closure(project, where))


def _closure(project, root: Where) -> list[Where]:
    found: list[Where] = []
    pending = [root]
    while pending:
        where = pending.pop(0)
        if where in found:
            continue
        found.append(where)
        fctx = _context(project, where.path)
        cls = class_named(fctx, where.qualname)
        init = cls.methods.get("__init__")
        params = {p.name.value for p in init.params.params} - {"self"} if init is not None else set()
        for call in find(cls.node, lambda n: isinstance(n, cst.Call)):
            callee = fctx.names.callee(call) or ""
            if callee in _BUILTIN_ATTENTION:
                raise Refused(fctx.line(call), f"`{where.qualname}` ({_rel(project, where.path)}) uses built-in "
                              f"`{callee}`: rotary embeddings cannot be inserted into built-in attention",
                              "write the attention by hand, then migrate")
            built = callee_class(fctx, call.func)
            if built is not None:
                pending.append(built)
            elif callee and not callee.startswith("torch.") and callee.rsplit(".", 1)[-1][:1].isupper() \
                    and _stored(fctx, call):
                raise Refused(fctx.line(call), f"`{where.qualname}` builds `{callee}` from another library: "
                              "tf-migrate cannot see whether it holds attention", "")
        for sub in (init.body.body if init is not None and isinstance(init.body, cst.IndentedBlock) else []):
            for assign in find(sub, lambda n: isinstance(n, cst.Assign)):
                target = assign.targets[0].target if len(assign.targets) == 1 else None
                if target is not None and self_attribute(target) and _passes_parameter(assign.value, params):
                    raise Refused(fctx.line(assign), f"`{where.qualname}` keeps a module passed to its "
                                  f"constructor (`{fctx.code(assign)}`): tf-migrate cannot see its attention", "")
    return found


def _passes_parameter(value, params: set[str]) -> bool:
    """`self.x = layer`, `self.x = clones(layer, n)`: a constructor argument named like a module."""
    if isinstance(value, cst.Name):
        return value.value in params and _modulish(value.value)
    if isinstance(value, cst.Call) and isinstance(value.func, (cst.Name, cst.Attribute)):
        head = value.func.value if isinstance(value.func, cst.Name) else value.func.attr.value
        if head in ("ModuleList", "Sequential", "ModuleDict"):  # `nn.ModuleList(layers)`: modules from outside
            return any(isinstance(a.value, cst.Name) and a.value.value in params for a in value.args)
        if head[:1].isupper():
            return False
        return any(isinstance(a.value, cst.Name) and a.value.value in params and _modulish(a.value.value)
                   for a in value.args)
    return False


def _modulish(name: str) -> bool:
    """`layer`, `encoder_layer`, `self_attn`: not `n_layers`, `attn_heads`, `d_model` (sizes)."""
    words = name.lower().split("_")
    return words[0] not in ("n", "num", "number", "d", "dim", "max") and words[-1] in _MODULE_WORDS


_MODULE_WORDS = ("layer", "layers", "block", "blocks", "module", "modules", "attn", "attention",
                 "encoder", "decoder", "net", "stack", "sublayer")


def _stored(fctx, call: cst.Call) -> bool:
    """`self.x = Cls(...)` or `Cls(...)` inside an nn container."""
    current = fctx.parents.get(call)
    while current is not None and not isinstance(current, cst.SimpleStatementLine):
        if isinstance(current, cst.Call) and (fctx.names.callee(current) or "").startswith("torch.nn."):
            return True
        if isinstance(current, cst.Assign):
            return any(self_attribute(t.target) for t in current.targets)
        current = fctx.parents.get(current)
    return False


def callee_class(fctx, func) -> Where | None:
    """The project module class a call's function names (this file's, or imported)."""
    from tf_migrate.analysis.symbols import dotted as dotted_text

    name = dotted_text(func) if isinstance(func, (cst.Name, cst.Attribute)) else None
    if not name or name.startswith("self."):
        return None
    if "." not in name:
        for cls in fctx.module_classes:
            if cls.qualname == name:
                return Where(fctx.project_key, name)
    for symbol in fctx.project.resolve_dotted(fctx.project_key, name):
        if symbol.kind == "class" and symbol.path is not None and symbol.path != fctx.project_key:
            other = _context(fctx.project, symbol.path)
            if other is not None and any(c.qualname == symbol.qualname for c in other.module_classes):
                return Where(symbol.path, symbol.qualname)
    return None


@dataclass(frozen=True)
class Built:
    """Where a class is instantiated: the file, line, enclosing class and method, `self.<attr>`."""

    path: str
    line: int
    owner: str | None
    method: str | None
    attr: str | None  # `self.<attr> = Cls(...)` directly; None inside a container or elsewhere

    @property
    def in_init(self) -> bool:
        return self.method == "__init__"


def instantiations(project, where: Where) -> list[Built]:
    return project.memo(("rope.built", where), lambda: list(_instantiations(project, where)))


def _instantiations(project, where: Where) -> Iterator[Built]:
    short = where.qualname.rsplit(".", 1)[-1]
    word = re.compile(rf"\b{re.escape(short)}\b")
    for path in sorted(project.files):
        text = project.text(path)
        if text is None or not word.search(text):
            continue
        fctx = _context(project, path)
        if fctx is None:
            continue
        for call in find(fctx.module, lambda n: isinstance(n, cst.Call)):
            if callee_class(fctx, call.func) != where:
                continue
            owner = method = attr = None
            function = fctx.index.enclosing(call, cst.FunctionDef)
            klass = fctx.index.enclosing(call, cst.ClassDef)
            if klass is not None and function is not None:
                cls = next((c for c in fctx.module_classes if c.node is klass), None)
                owner = cls.qualname if cls is not None else None
                method = function.name.value
                parent = fctx.parents.get(call)
                if isinstance(parent, cst.Assign) and parent.value is call and len(parent.targets) == 1:
                    attr = self_attribute(parent.targets[0].target)
            yield Built(path, fctx.line(call), owner, method, attr)


# -- attention, self or not ----------------------------------------------------------------------

def _sites(fctx, cls):
    from tf_migrate.rules.rope.rotary import sites_in

    try:
        found = sites_in(fctx, cls, entry=True)
    except Refused as refusal:
        raise Refused(refusal.line, f"in {_rel(fctx.project, fctx.project_key)}: {refusal.reason}", refusal.hint)
    for site in found:
        if fctx.suppressed("TFM401", site.scores):
            raise Refused(fctx.line(site.scores), "an attention of the model is under a `tf-migrate: skip` comment", "")
        if not isinstance(site.method.body, cst.IndentedBlock):
            raise Refused(fctx.line(site.method), "the attention's method is written on one line", "")
    return found


def sites_of(fctx, qualname: str):
    return _sites(fctx, class_named(fctx, qualname))


def _one_stream(project, where: Where, site) -> None:
    """Keys and queries of `site` come from one tensor, followed through the callers if need be."""
    from tf_migrate.rules.rope.rotary import sources

    fctx = _context(project, where.path)
    flow = FunctionFlow(fctx, site.method)
    params = sources(fctx, flow, site.query, site.scores) | sources(fctx, flow, site.key, site.key_at)
    _callers_pass_one(project, where, site.method.name.value, params, 0)


def _callers_pass_one(project, where: Where, method: str, params: set[str], depth: int) -> None:
    from tf_migrate.rules.rope.rotary import sources

    if len(params) == 1:
        return
    label = f"`{where.qualname}.{method}` ({_rel(project, where.path)})"
    if not params:
        raise Refused(0, f"in {label}, q and k are computed from no parameter: tf-migrate cannot show that "
                      "keys and queries are one input", "give self-attention its own class that takes one input")
    if method != "forward" or depth >= _MAX_CALLERS:
        raise Refused(0, f"in {label}, keys and queries come from {_listed(params)}, and its callers are not "
                      "followed further: the keys of cross-attention must not be rotated",
                      "give self-attention its own class that takes one input")
    fctx = _context(project, where.path)
    cls = class_named(fctx, where.qualname)
    order = [p.name.value for p in cls.methods["forward"].params.params][1:]
    built = instantiations(project, where)
    if not built:
        raise Refused(0, f"{label} takes keys and queries as {_listed(params)} and nothing in the run builds "
                      "it, so no caller shows they are one tensor", "")
    for b in built:
        if b.attr is None or not b.in_init:
            raise Refused(b.line, f"{label} takes keys and queries as {_listed(params)}; it is built at "
                          f"{_rel(project, b.path)} line {b.line} other than as `self.<name> = ...` in `__init__`, "
                          "so its calls cannot be followed", "")
        hctx = _context(project, b.path)
        holder = class_named(hctx, b.owner)
        calls = _calls_of(hctx, holder, b.attr, b.line)
        for call in calls:
            method_node = hctx.index.enclosing(call, cst.FunctionDef)
            given = [_argument(call, order, p) for p in sorted(params)]
            if any(g is None for g in given):
                raise Refused(hctx.line(call), f"`{_short(hctx, call)}` ({_rel(project, b.path)} line "
                              f"{hctx.line(call)}) does not pass every one of {_listed(params)}", "")
            if all(isinstance(g, cst.Name) for g in given) and len({g.value for g in given}) == 1:
                continue  # one tensor passed for them all
            if method_node is None or _in_lambda(hctx, call):
                raise Refused(hctx.line(call), f"`{_short(hctx, call)}` ({_rel(project, b.path)} line "
                              f"{hctx.line(call)}) passes different tensors as {_listed(params)}: the keys of "
                              "cross-attention must not be rotated", "give self-attention its own class that takes one input")
            flow = FunctionFlow(hctx, method_node)
            statement = flow.statement_of(call)
            upstream: set[str] = set()
            for g in given:
                for name in read_names(g) - {"self"}:
                    upstream |= sources(hctx, flow, name, statement)
            if len(upstream) != 1:
                try:
                    _callers_pass_one(project, Where(b.path, b.owner), method_node.name.value, upstream, depth + 1)
                except Refused as refusal:
                    raise Refused(refusal.line, f"keys and queries of {label} come from {_listed(params)}; "
                                  f"followed through `{_short(hctx, call)}` ({_rel(project, b.path)} line "
                                  f"{hctx.line(call)}): {refusal.reason}", refusal.hint)


def _in_lambda(fctx, node) -> bool:
    current = fctx.parents.get(node)
    while current is not None and not isinstance(current, (cst.FunctionDef, cst.Module)):
        if isinstance(current, cst.Lambda):
            return True
        current = fctx.parents.get(current)
    return False


def _calls_of(hctx, holder, attr: str, line: int) -> list[cst.Call]:
    """`self.<attr>(...)` and `self.<attr>.forward(...)` in the holder; refuses any other use."""
    calls = []
    for ref in holder.self_references(attr):
        parent = hctx.parents.get(ref)
        if isinstance(parent, cst.Attribute) and parent.attr.value == "forward":
            ref, parent = parent, hctx.parents.get(parent)
        if isinstance(parent, cst.Call) and parent.func is ref:
            calls.append(parent)
            continue
        if hctx.line(ref) == line or _is_target(hctx, ref):
            continue
        raise Refused(hctx.line(ref), f"`self.{attr}` of `{holder.qualname}` is used other than called "
                      f"(line {hctx.line(ref)}), so its callers cannot be followed", "")
    if not calls:
        raise Refused(line, f"`self.{attr}` of `{holder.qualname}` is never called", "")
    return calls


def _is_target(hctx, ref) -> bool:
    parent = hctx.parents.get(ref)
    return isinstance(parent, cst.AssignTarget)


def _argument(call: cst.Call, order: list[str], name: str):
    for position, arg in enumerate(call.args):
        if arg.star:
            return None
        if (arg.keyword is not None and arg.keyword.value == name) or (
                arg.keyword is None and position < len(order) and order[position] == name):
            return arg.value
    return None


def _not_shared(project, inside: list[Where], models: list[Where], attention: list[Where]) -> None:
    """Every class on the way to an attention is built only inside the component's models: another
    model running the same attention keeps its own positions."""
    carriers = [w for w in inside if w not in models and any(a in closure(project, w) for a in attention)]
    names = set(inside)
    for where in carriers:
        for b in instantiations(project, where):
            if b.owner is None or Where(b.path, b.owner) not in names:
                user = f"`{b.owner}`" if b.owner else "code outside any class"
                raise Refused(b.line, f"`{where.qualname}` ({_rel(project, where.path)}), which runs attention "
                              f"rotated here, is also built by {user} ({_rel(project, b.path)} line {b.line}), "
                              "whose positions stay as they are", "give the two models separate attention classes")


# -- small helpers -------------------------------------------------------------------------------

def _rel(project, path: str) -> str:
    try:
        return os.path.relpath(path, project.root)
    except ValueError:
        return path


def _names(wheres: list[Where]) -> str:
    return ", ".join(f"`{w.qualname}`" for w in wheres) or "no class"


def _listed(names: set[str]) -> str:
    return ", ".join(f"`{n}`" for n in sorted(names))


def _short(fctx, node) -> str:
    return " ".join(fctx.code(node).split())


# -- one attention class for self- and cross-attention -------------------------------------------

@dataclass(frozen=True)
class Guard:
    """A scores class `scores` whose only holder `holder` takes queries and keys as the parameters
    `query`/`key` and hands its projections `q_arg`/`k_arg` to it: some callers of the holder pass
    one tensor as both (self-attention), others not (cross-attention). The holder rotates
    `q_arg`/`k_arg` before the call under `if <flag>:`, the flag being `key is query` taken where
    forward starts: cross-attention keeps attending without rotation."""

    holder: Where
    scores: Where
    attr: str
    query: str
    key: str
    q_arg: str
    k_arg: str
    seq_dims: tuple[int, int]
    flag: str


def guarded(project, scores: Where, sites) -> Guard | None:
    """The guard for a scores class used by self- and cross-attention, or None (then refused)."""
    from tf_migrate.rules.rope.rotary import sources

    site = sites[0]
    if site.after is not None or site.method.name.value != "forward" or site.cached:
        return None
    built = instantiations(project, scores)
    if len(built) != 1 or built[0].attr is None or not built[0].in_init:
        return None
    holder = Where(built[0].path, built[0].owner)
    hctx = _context(project, holder.path)
    hcls = class_named(hctx, holder.qualname)
    forward = hcls.methods.get("forward")
    try:
        calls = _calls_of(hctx, hcls, built[0].attr, built[0].line)
    except Refused:
        return None
    if forward is None or len(calls) != 1 or hctx.index.enclosing(calls[0], cst.FunctionDef) is not forward \
            or _in_lambda(hctx, calls[0]) or not isinstance(forward.body, cst.IndentedBlock):
        return None
    order = [p.name.value for p in site.method.params.params][1:]
    q_arg, k_arg = _argument(calls[0], order, site.query), _argument(calls[0], order, site.key)
    if not (isinstance(q_arg, cst.Name) and isinstance(k_arg, cst.Name)) or q_arg.value == k_arg.value:
        return None
    flow = FunctionFlow(hctx, forward)
    statement = flow.statement_of(calls[0])
    query, key = _exact_sources(flow, q_arg.value, statement), _exact_sources(flow, k_arg.value, statement)
    if len(query) != 1 or len(key) != 1 or query == key:
        return None
    (query,), (key,) = query, key
    params = [p.name.value for p in forward.params.params][1:]
    selves = 0
    for b in instantiations(project, holder):
        if b.attr is None or not b.in_init:
            return None
        cctx = _context(project, b.path)
        try:
            holder_calls = _calls_of(cctx, class_named(cctx, b.owner), b.attr, b.line)
        except Refused:
            return None
        for call in holder_calls:
            given = _argument(call, params, query), _argument(call, params, key)
            if None in given:
                return None
            if all(isinstance(g, cst.Name) for g in given) and given[0].value == given[1].value:
                selves += 1  # one tensor: `key is query` holds, rotated
            elif _in_lambda(cctx, call) or _one_source(cctx, call, given):
                raise Refused(cctx.line(call), f"`{holder.qualname}` ({_rel(project, holder.path)}) serves "
                              f"self- and cross-attention, and `{_short(cctx, call)}` ({_rel(project, b.path)} "
                              f"line {cctx.line(call)}) passes its queries and keys as two tensors of one stream: "
                              f"`{key} is {query}` would not tell that self-attention from cross-attention",
                              "pass one tensor (`h = norm(x)`, then `attn(h, h, h)`)")
    if not selves:
        return None
    names = {n.value for n in find(forward, lambda n: isinstance(n, cst.Name))}
    flag = next((f for f in ("self_attention", "rotate_qk", "rotate_keys") if f not in names), None)
    if flag is None:
        return None
    return Guard(holder, scores, built[0].attr, query, key, q_arg.value, k_arg.value, site.seq_dims, flag)


def _exact_sources(flow, name: str, at, depth: int = 0) -> set[str]:
    """The parameters `name` is computed from, reading `a, b = f(a), g(b)` element by element
    (rotary.sources reads the whole statement); {"?"} when a binding cannot be read."""
    from tf_migrate.analysis.dataflow import Binding

    if depth > 12:
        return {"?"}
    definition = flow.definition(name, at)
    if definition is None:  # a parameter, or a module-level name (no per-call stream)
        params = {p.name.value for p in flow.function.params.params} - {"self"}
        return {name} if name in params else set()
    value = definition.value if isinstance(definition, Binding) else None
    statement = definition.statement
    if value is None and isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 \
            and isinstance(statement.body[0], cst.Assign) and len(statement.body[0].targets) == 1:
        target, whole = statement.body[0].targets[0].target, statement.body[0].value
        if isinstance(target, cst.Tuple) and isinstance(whole, cst.Tuple) \
                and len(target.elements) == len(whole.elements):
            for t, v in zip(target.elements, whole.elements):
                if isinstance(t.value, cst.Name) and t.value.value == name:
                    value = v.value
    if value is None:
        return {"?"}
    found: set[str] = set()
    for read in _data_names(value) - {"self"}:
        found |= _exact_sources(flow, read, statement, depth + 1)
    return found


_SHAPED = ("view", "reshape", "expand", "repeat", "new_zeros", "new_ones", "unflatten")


def _data_names(expr) -> set[str]:
    """The names whose values flow into `expr`; sizes do not (`x.size(0)`, `x.shape`, the arguments
    of `.view(batch, length, heads, size)`)."""
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute):
        if expr.func.attr.value in ("size", "dim"):
            return set()
        if expr.func.attr.value in _SHAPED:
            return _data_names(expr.func.value)
    if isinstance(expr, cst.Call):  # what is passed, and the receiver of a method; not a function's name
        found = set().union(*(_data_names(a.value) for a in expr.args)) if expr.args else set()
        return found | (_data_names(expr.func.value) if isinstance(expr.func, cst.Attribute) else set())
    if isinstance(expr, cst.Attribute) and expr.attr.value in ("shape", "ndim", "device", "dtype"):
        return set()
    if isinstance(expr, cst.Name):
        return {expr.value}
    found: set[str] = set()
    for child in expr.children:
        if isinstance(child, cst.BaseExpression) or isinstance(child, (cst.Arg, cst.Element, cst.Subscript,
                                                                        cst.SubscriptElement, cst.Index, cst.Slice)):
            found |= _data_names(child)
        elif isinstance(child, cst.CSTNode) and not isinstance(child, (cst.BaseParenthesizableWhitespace,)):
            found |= _data_names(child)
    if isinstance(expr, cst.Attribute):
        return _data_names(expr.value)
    return found


def _one_source(cctx, call, given) -> bool:
    """Two names for queries and keys that come from the same one parameter of the caller."""
    from tf_migrate.rules.rope.rotary import sources

    method = cctx.index.enclosing(call, cst.FunctionDef)
    if method is None:
        return True
    flow = FunctionFlow(cctx, method)
    statement = flow.statement_of(call)
    found = [set().union(*(sources(cctx, flow, name, statement) for name in read_names(g) - {"self"}))
             for g in given]
    return found[0] == found[1] or not found[0] or not found[1]
