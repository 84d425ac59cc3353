"""TFM401: sinusoidal absolute positions -> rotary embeddings on q and k."""

from __future__ import annotations

from typing import Iterator

import libcst as cst

from tf_migrate.attention import Refused
from tf_migrate.dataflow import Binding, FunctionFlow
from tf_migrate.imports import reference
from tf_migrate.model_graph import model_parts
from tf_migrate.plan import ClassPlan
from tf_migrate.positions import Addition, find_additions
from tf_migrate.rotary import RotarySite, sites_in, sources
from tf_migrate.rotary_code import HELPER_NAME, helper_statements, rotary_statements
from tf_migrate.rule import Equivalence, Finding, Fix, Refusal, Rule


class SinusoidalToRotary(Rule):
    """Remove an additive sinusoidal position table and rotate q and k in every self-attention.

    Why: rotary embeddings encode relative positions inside attention, extrapolate past the old
    table's length, and are what current models use.

    Safety: compatible, NOT equivalent: the model computes a different function and needs
    fine-tuning (or retraining) after the migration. No weight changes shape; every old weight
    keeps its place. Dropout after the positions is kept. Learned position embeddings are left.

    Checkpoint: the table's persistent buffer (`pe`) is dropped. No new keys: the cos/sin cache is
    plain Python state of the inserted helper.

    Refuses when: the table's module is not a submodule built in a class's `__init__` of this file;
    the positions are not added to token embeddings; the model uses built-in transformer layers
    or classes imported from other files; an attention's q and k cannot be found, or its keys come
    from another argument than its queries (possible cross-attention); keys are concatenated with
    a cache; option `positions` is not `rope`.
    """

    code = "TFM401"
    name = "rope"
    equivalence = Equivalence.COMPATIBLE
    summary = "sinusoidal absolute positions -> rotary embeddings (RoPE) on q and k; needs fine-tuning"
    triggers = ("sin",)
    options = {"positions": "rope", "base": 10000.0}
    example_before = (
        "x = self.pos(self.embed(tokens))  # PositionalEncoding: x + self.pe[:, :T], then dropout\n"
        "scores = torch.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(self.head_dim)\n"
    )
    example_after = (
        "x = self.pos(self.embed(tokens))  # PositionalEncoding: dropout only\n"
        "q = apply_rotary(q, seq_dim=1)\n"
        "k = apply_rotary(k, seq_dim=1)\n"
        "scores = torch.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(self.head_dim)\n"
    )

    def check(self, ctx) -> Iterator[Finding]:
        additions = [a for a in find_additions(ctx) if not ctx.suppressed(self.code, a.statement)]
        if not additions:
            return
        if self.settings["positions"] != "rope":
            yield Refusal(ctx.line(additions[0].statement), f"positions={self.settings['positions']!r} "
                          "is not implemented; only 'rope' is", "use positions = \"rope\"")
            return
        sites: list[RotarySite] = []
        accepted: list[Addition] = []
        for addition in additions:
            try:
                for model in self._models(ctx, addition):
                    sites.extend(s for s in self._sites(ctx, model) if s not in sites)
                accepted.append(addition)
            except Refused as refusal:
                yield Refusal(refusal.line, refusal.reason, refusal.hint)
                return
        if accepted:
            yield from self._fixes(ctx, accepted, sites)

    def _models(self, ctx, addition: Addition):
        """The classes whose forward puts these positions on token embeddings."""
        flow = FunctionFlow(ctx, addition.method)
        if _from_embedding(ctx, addition.cls, flow, addition.other, addition.statement):
            return [addition.cls]
        params = [p.name.value for p in addition.method.params.params]
        if addition.method.name.value != "forward" or len(params) < 2 or \
                not (isinstance(addition.other, cst.Name) and addition.other.value == params[1]):
            raise Refused(ctx.line(addition.statement), "sinusoidal positions are added to "
                          f"`{ctx.code(addition.other)}`, which tf-migrate cannot trace to token embeddings", "")
        return [_user(ctx, addition.cls)]

    def _sites(self, ctx, model) -> list[RotarySite]:
        parts = model_parts(ctx, model)
        for name, line in parts.builtin:
            raise Refused(line, f"`{model.qualname}` uses built-in `{name}`: rotary embeddings cannot be "
                          "inserted into built-in attention", "write the attention by hand, then migrate")
        for name, line in parts.foreign:
            raise Refused(line, f"`{model.qualname}` is built from `{name}`, defined in another file: "
                          "tf-migrate cannot see the attention that consumes the positions", "")
        sites = []
        for cls in parts.classes:
            for site in sites_in(ctx, cls):
                _check_self_attention(ctx, cls, site)
                sites.append(site)
        if not sites:
            raise Refused(ctx.line(model.node), f"no attention found in the classes `{model.qualname}` is "
                          "built from", "")
        return sites

    def _fixes(self, ctx, additions: list[Addition], sites: list[RotarySite]) -> Iterator[Fix]:
        torch, needed = reference(ctx, "torch", "torch")
        for index, addition in enumerate(additions):
            replacements = _remove_addition(addition)
            plan = ClassPlan(ctx.path, addition.cls.qualname, [self.code])
            buffer = addition.table.buffer
            if buffer is not None and addition.cls.buffers[buffer].persistent:
                plan.dropped.append(buffer)
            if index == 0:
                replacements.update(_insertions(ctx, sites, torch, self.settings["base"]))
            yield Fix(ctx.line(addition.statement),
                      "sinusoidal positions removed" + (f" (buffer `{buffer}` removed)" if buffer else "")
                      + (f"; rotary embeddings applied to q and k in {len(sites)} attention(s); "
                         "the model needs fine-tuning" if index == 0 else ""),
                      replacements, plans=[plan], imports=[needed] if needed else [],
                      maybe_unused_imports=[("math", None, None)])


def _from_embedding(ctx, cls, flow: FunctionFlow, expr, at, depth: int = 0) -> bool:
    for node in _nodes(expr):
        if isinstance(node, cst.Call) and cls.submodule_of(node.func, "torch.nn.Embedding") is not None:
            return True
        if isinstance(node, cst.Name) and depth < 8 and flow.contains(at):
            definition = flow.definition(node.value, at)
            if isinstance(definition, Binding) and _from_embedding(
                    ctx, cls, flow, definition.value, definition.statement, depth + 1):
                return True
    return False


def _nodes(expr):
    from tf_migrate.nodes import walk
    return walk(expr, into_scopes=False)


def _user(ctx, module):
    """The one class that builds `module` as `self.x = Module(...)` and feeds it token embeddings."""
    calls = [(cls, sub) for cls in ctx.module_classes for sub in cls.submodules.values()
             if isinstance(sub.call.func, cst.Name) and sub.call.func.value == module.node.name.value]
    from tf_migrate.nodes import find
    every = find(ctx.module, lambda n: isinstance(n, cst.Call) and isinstance(n.func, cst.Name)
                 and n.func.value == module.node.name.value)
    if not calls or len(every) != len(calls) or len(calls) > 1:
        where = ", ".join(str(ctx.line(c)) for c in every) or "nowhere in this file"
        raise Refused(ctx.line(module.node), f"`{module.qualname}` is instantiated at line(s) {where}, not "
                      "as one submodule of a model class in this file: tf-migrate cannot tell which "
                      "attention consumes its positions", "migrate a file where the model class builds it")
    cls, sub = calls[0]
    for method in cls.methods.values():
        flow = FunctionFlow(ctx, method)
        for call in find(method, lambda n: isinstance(n, cst.Call) and cls.submodule_of(n.func) is sub):
            statement = flow.statement_of(call)
            if not call.args or not _from_embedding(ctx, cls, flow, call.args[0].value, statement):
                raise Refused(ctx.line(call), f"`{ctx.code(call)}` does not apply the positions to token "
                              "embeddings tf-migrate can trace", "")
    return cls


def _check_self_attention(ctx, cls, site: RotarySite) -> None:
    flow = FunctionFlow(ctx, site.method)
    query, key = (sources(ctx, flow, n, site.scores) for n in (site.query, site.key))
    if not query or query != key:
        raise Refused(ctx.line(site.after), f"in `{cls.qualname}`, keys come from {sorted(key)} and queries "
                      f"from {sorted(query)}: this may be cross-attention, whose keys must not be rotated",
                      "give self-attention its own class that takes one input")


def _remove_addition(addition: Addition) -> dict:
    replacements = {s: cst.RemoveFromParent() for s in addition.table.statements}
    small = addition.statement.body[0]
    other = addition.other
    if isinstance(small, cst.Assign) and small.value is addition.node and isinstance(other, cst.Name) \
            and len(small.targets) == 1 and isinstance(small.targets[0].target, cst.Name) \
            and small.targets[0].target.value == other.value:
        replacements[addition.statement] = cst.RemoveFromParent()  # `x = x + pe` -> nothing left
    else:
        replacements[addition.node] = other.with_changes(lpar=[], rpar=[]) if hasattr(other, "lpar") else other
    return replacements


def _insertions(ctx, sites: list[RotarySite], torch: str, base: float) -> dict:
    replacements: dict = {}
    for site in sites:
        names = [(site.query, site.seq_dims[0]), (site.key, site.seq_dims[1])]
        current = replacements.get(site.after, cst.FlattenSentinel([site.after]))
        replacements[site.after] = cst.FlattenSentinel([*current.nodes, *rotary_statements(names)])
    if not any(isinstance(s, cst.FunctionDef) and s.name.value == HELPER_NAME for s in ctx.module.body):
        imports = [s for s in ctx.module.body if isinstance(s, cst.SimpleStatementLine)
                   and isinstance(s.body[0], (cst.Import, cst.ImportFrom))]
        anchor = imports[-1] if imports else ctx.module.body[0]
        replacements[anchor] = cst.FlattenSentinel([anchor, *helper_statements(torch, base)])
    return replacements
