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

This module finds the components and decides each; the jobs it asks of others: places.py (what a
component's parts are, and how reasons name them), table_edit.py (taking an addition and its
table's storage out), model_classes.py (the models and the classes they are built from),
one_stream.py (keys and queries one stream through the callers), self_or_cross.py (one attention
class for self- and cross-attention). What one file then does: across_fixes.py.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from tf_migrate.analysis.attention import Refused
from tf_migrate.rules.rope.model_classes import _has_attention, _models, _not_shared, closure
from tf_migrate.rules.rope.one_stream import _one_stream, _sites
from tf_migrate.rules.rope.places import Added, Source, Where, _context, _names, _rel, class_named
from tf_migrate.rules.rope.self_or_cross import Guard, guarded
from tf_migrate.rules.rope.table_edit import edit_addition

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext

# TFM401's trigger words (rules/rope/__init__.py): a file without one is never analysed, so a
# component with such a file would be rewritten in half of its files (tests check the two agree).
TRIGGERS = ("sin(", "sin_(", "pos", "Pos", "softmax", "Softmax")


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
    from tf_migrate.rules.rope.census import may_hold_a_flat_table, tables
    from tf_migrate.rules.rope.tree import _walker, exports_of, imported_uses

    files = sorted(project.files)
    exported: dict[tuple[str, str], Source] = {}
    for path in files:
        text = project.text(path)
        if text is None or not may_hold_a_flat_table(text):  # only 2-D tables, all left out below
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
    for path, walk, uses in imported_uses(project, files, shorts):
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
