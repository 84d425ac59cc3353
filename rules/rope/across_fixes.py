"""What one file does for the whole-tree components it has a part in (see across.py): the
additions taken out, the table's parameter or module with them, q and k rotated in its
attentions, or, when the component is refused, the component's one reason at its lines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from tf_migrate.analysis.attention import Refused
from tf_migrate.analysis.imports import reference
from tf_migrate.engine.rule import Finding, Fix, Refusal
from tf_migrate.plan import ClassPlan
from tf_migrate.rules.rope.across import Decision, _rel, class_named, decisions_for, edit_addition, sites_of
from tf_migrate.rules.rope.rotary_code import insertions

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext

# What a removed table may have been the last user of (removed only when nothing reads it).
_TABLE_IMPORTS = [("math", None, None), ("numpy", None, None), ("numpy", None, "np")]


def across_findings(ctx: "FileContext", code: str, base: float, alibi: bool) -> Iterator[Finding]:
    for decision in decisions_for(ctx):
        lines = _lines(ctx, decision)
        problem, hint = decision.problem, decision.hint
        if problem is None and alibi:
            problem = "ALiBi is written into SDPA calls of one file only; this table's attention is in another file"
        if problem is None:
            try:
                yield from list(_fixes(ctx, decision, code, base))
                continue
            except Refused as refusal:  # the tree's decision read this file as it is: not expected
                problem, hint = refusal.reason, refusal.hint
        for line in lines:
            yield Refusal(line, problem, hint)


def _lines(ctx, decision: Decision) -> list[int]:
    """This file's lines of the component (its text may have moved since the tree read it: an
    earlier rule rewrote it), found again by what they are."""
    here = ctx.project_key
    lines = [_addition_line(ctx, a) for a in decision.additions if a.path == here]
    return lines or [_table_line(ctx, s) for s in decision.sources if s.path == here]


def _addition_line(ctx, added) -> int:
    try:
        return ctx.line(edit_addition(ctx, added).statement)
    except Refused:
        return added.line


def _table_line(ctx, source) -> int:
    from tf_migrate.rules.rope.census import sites

    for site in sites(ctx, "TFM401"):
        if site.component.cls == source.name:
            return site.line
    return source.line


def _adders(ctx, decision: Decision) -> str:
    """`Encoder`, `Decoder` (transformer/Models.py): where the additions were (no line numbers: an
    earlier rule may have moved that file's lines)."""
    files: dict[str, list[str]] = {}
    for added in decision.additions:
        names = files.setdefault(_rel(ctx.project, added.path), [])
        if f"`{added.cls}`" not in names:
            names.append(f"`{added.cls}`")
    return "; ".join(f"{', '.join(names)} ({path})" for path, names in sorted(files.items()))


def _summary(ctx, decision: Decision) -> str:
    attention = ", ".join([f"`{w.qualname}` ({_rel(ctx.project, w.path)})" for w in decision.rotated_at_entry()]
                          + [f"`{g.holder.qualname}` ({_rel(ctx.project, g.holder.path)}, self-attention only)"
                             for g in decision.guards])
    return f"rotary embeddings applied to q and k in {attention}; the model needs fine-tuning"


def _fixes(ctx, decision: Decision, code: str, base: float) -> Iterator[Fix]:
    here = ctx.project_key
    taken: set[int] = set()
    planned: set[str] = set()
    mine = [a for a in decision.additions if a.path == here]
    edits = [edit_addition(ctx, added) for added in mine]
    freed = _freed_imports(ctx, {a.source.name for a in mine if a.source.path != here},
                           [node for edit in edits for node in edit.replacements])
    for index, (added, edit) in enumerate(zip(mine, edits)):
        replacements = {node: new for node, new in edit.replacements.items() if id(node) not in taken}
        if index == 0:
            replacements.update(freed)
        taken |= {id(node) for node in replacements}
        plans = []
        if added.cls not in planned:
            planned.add(added.cls)
            dropped = decision.planned(here, added.cls)
            if dropped:  # a plan that changes no key would only stop the converter
                plans.append(ClassPlan(ctx.path, added.cls, [code], dropped=dropped))
        source = added.source
        stored = f" (`self.{edit.stored}` removed)" if edit.stored else ""
        yield Fix(ctx.line(edit.statement), f"sinusoidal positions of `{source.name}` "
                  f"({_rel(ctx.project, source.path)}) removed{stored}; " + _summary(ctx, decision),
                  replacements, plans=plans, maybe_unused_imports=_TABLE_IMPORTS)
    sites = [site for where in decision.rotated_at_entry() if where.path == here
             for site in sites_of(ctx, where.qualname)]
    guards = [guard for guard in decision.guards if guard.holder.path == here]
    if guards:
        torch, needed = reference(ctx, "torch", "torch")
        if needed == ("torch", None, "torch"):
            needed = ("torch", None, None)
        replacements = insertions(ctx, sites, torch, base)
        for guard in guards:
            _guard_edits(ctx, guard, replacements)
        yield Fix(ctx.line(class_named(ctx, guards[0].holder.qualname).node),
                  f"rotary embeddings applied to q and k in {', '.join(f'`{g.holder.qualname}`' for g in guards)} "
                  f"when keys are the queries' own tensor (`{guards[0].flag}`: self-attention), not for "
                  f"cross-attention, for the positions removed in {_adders(ctx, decision)}; "
                  "the model needs fine-tuning", replacements, imports=[needed] if needed else [])
        sites = []
    if sites:
        torch, needed = reference(ctx, "torch", "torch")
        if needed == ("torch", None, "torch"):
            needed = ("torch", None, None)  # `import torch`, not `import torch as torch`
        line = ctx.line(sites[0].after) if sites[0].after is not None else ctx.line(sites[0].method)
        yield Fix(line, f"rotary embeddings applied to q and k ({len(sites)} attention(s)) for the positions "
                  f"removed in {_adders(ctx, decision)}; the model needs fine-tuning",
                  insertions(ctx, sites, torch, base), imports=[needed] if needed else [])
    if not any(a.path == here for a in decision.additions):
        for source in decision.sources:
            if source.path == here:
                yield Fix(_table_line(ctx, source), f"the table of `{source.name}` is no longer added (in "
                          f"{_adders(ctx, decision)}); left defined here; " + _summary(ctx, decision), {})



def _freed_imports(ctx, names: set[str], removed: list) -> dict:
    """`from .position import PositionalEmbedding` whose name nothing reads once `removed` is gone
    (libcst's import remover does not resolve relative imports): the name, or the statement, goes."""
    import libcst as cst

    from tf_migrate.analysis.nodes import find
    from tf_migrate.analysis.symbols import dotted

    gone = {id(n) for node in removed for n in find(node, lambda n: True)}
    replacements: dict = {}
    for name in sorted(names):
        if f"'{name}'" in ctx.text or f'"{name}"' in ctx.text:
            continue  # named in a string (`__all__`): a re-export
        uses = find(ctx.module, lambda n: isinstance(n, cst.Name) and n.value == name)
        for statement in ctx.module.body:
            if not (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1
                    and isinstance(statement.body[0], cst.ImportFrom)
                    and not isinstance(statement.body[0].names, cst.ImportStar)):
                continue
            node = statement.body[0]
            aliases = [a for a in node.names if dotted(a.name) == name and a.asname is None]
            inside = {id(n) for n in find(statement, lambda n: True)}
            if not aliases or any(id(u) not in gone and id(u) not in inside for u in uses):
                continue
            kept = [a for a in node.names if a not in aliases]
            if not kept:
                replacements[statement] = cst.RemoveFromParent()
            else:
                kept[-1] = kept[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
                replacements[node] = node.with_changes(names=kept)
    return replacements


def _guard_edits(ctx, guard, replacements: dict) -> None:
    """`self_attention = k is q` where the holder's forward starts; before its call of the scores
    class, `if self_attention:` rotating the two names it passes (see across.Guard)."""
    import libcst as cst

    from tf_migrate.analysis.dataflow import FunctionFlow
    from tf_migrate.analysis.names import self_attribute
    from tf_migrate.analysis.nodes import find
    from tf_migrate.rules.rope.rotary_code import HELPER_NAME, _method_start

    cls = class_named(ctx, guard.holder.qualname)
    forward = cls.methods["forward"]
    [call] = [n for n in find(forward, lambda n: isinstance(n, cst.Call)) if self_attribute(n.func) == guard.attr]
    statement = FunctionFlow(ctx, forward).statement_of(call)
    extra = [", seq_dim=" + str(d) if d != -2 else "" for d in guard.seq_dims]
    check = cst.parse_statement(f"if {guard.flag}:  # self-attention: keys are the queries' own tensor\n"
                                f"    {guard.q_arg} = {HELPER_NAME}({guard.q_arg}{extra[0]})\n"
                                f"    {guard.k_arg} = {HELPER_NAME}({guard.k_arg}{extra[1]})\n")
    flag = cst.parse_statement(f"{guard.flag} = {guard.key} is {guard.query}\n")
    first, docstring = _method_start(forward)
    for node, before, after in ((first, [] if docstring else [flag], [flag] if docstring else []),
                                (statement, [check], [])):
        current = replacements.get(node, cst.FlattenSentinel([node]))
        nodes = list(current.nodes)
        at = nodes.index(node) if node in nodes else 0
        nodes = [*nodes[:at], *before, *nodes[at:at + 1], *after, *nodes[at + 1:]]
        replacements[node] = cst.FlattenSentinel(nodes)
