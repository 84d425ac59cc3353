"""TFM401: sinusoidal absolute positions -> rotary embeddings on q and k.

The package holds the rule (here) and its private machinery: `positions` and `position_models`
find sinusoidal tables and where they are added, `rotary` places the rotation in attention,
`rotary_code` is the inserted helper, `alibi` the ALiBi alternative. It imports `tf_migrate.analysis`,
`engine.rule` and `plan`.
"""

from __future__ import annotations

import math

from typing import Iterator

from tf_migrate.rules.rope.alibi import alibi_sites
from tf_migrate.rules.rope.callers import key_query_evidence
from tf_migrate.analysis.attention import Refused
from tf_migrate.analysis.dataflow import FunctionFlow
from tf_migrate.analysis.imports import reference
from tf_migrate.analysis.model_graph import model_parts, outside_users
from tf_migrate.analysis.nodes import walk
from tf_migrate.plan import ClassPlan
from tf_migrate.rules.rope.position_models import model_of
from tf_migrate.rules.rope.positions import Addition, file_additions
from tf_migrate.rules.rope.rotary import RotarySite, sites_in, sources
from tf_migrate.rules.rope.rotary_code import alibi_insertions, insertions, remove_addition
from tf_migrate.engine.rule import Component, Equivalence, Finding, Fix, Refusal, Rule


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
    a cache after the scores. Tables the census finds that this matcher does not rewrite are
    refused with the census's reason (see census.py, tree.py): built or added in another file, a
    2-D image table, a learned-or-sinusoidal factory, a fill under a flag, a constructor argument,
    a table built by a helper or added outside its class. A bad option (`positions` neither `rope` nor `alibi`, `base` not a
    finite number above 1) is a usage error before any file is read.

    With `positions = "alibi"`, no rotary: each SDPA call gets `attn_mask=alibi_bias(q, k, ...)`
    (per-head geometric slopes, the call's mask and `is_causal` folded in). Hand-written attention
    is refused there: run TFM101 first.
    """

    code = "TFM401"
    name = "rope"
    equivalence = Equivalence.COMPATIBLE
    summary = "sinusoidal absolute positions -> rotary embeddings (RoPE) on q and k; needs fine-tuning"
    # torch.sin(, .sin(), math.sin(, .sin_(); "pos"/"Pos": a file that adds a table another file builds;
    # "softmax"/"Softmax": an attention another file's positions feed (across.TRIGGERS says the same)
    triggers = ("sin(", "sin_(", "pos", "Pos", "softmax", "Softmax")
    outside_modules = ("sin", "sin_")  # called by a table function another file's model calls
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

    def __init__(self, options=None) -> None:
        super().__init__(options)
        problems = []
        if self.settings["positions"] not in ("rope", "alibi"):
            problems.append(f"positions must be rope or alibi, not {self.settings['positions']!r}")
        try:
            base = float(self.settings["base"])
        except (TypeError, ValueError):
            base = None
        if base is None or not math.isfinite(base) or base <= 1:
            # base <= 0 gives NaN frequencies, base 1 one frequency for every pair, (0, 1) rising ones
            problems.append(f"base must be a finite number above 1 (e.g. 10000), not {self.settings['base']!r}")
        if problems:
            from tf_migrate.engine.run import UsageError

            raise UsageError("option rope." + "; ".join(problems))

    def census(self, ctx) -> Iterator[Component]:
        from tf_migrate.rules.rope.census import components

        return components(ctx, self.code)

    def check(self, ctx) -> Iterator[Finding]:
        from tf_migrate.rules.rope.across_fixes import across_findings

        findings = list(self._check(ctx)) if any(t in ctx.text for t in ("sin(", "sin_(")) else []
        findings += across_findings(ctx, self.code, float(self.settings["base"]),
                                    self.settings["positions"] == "alibi")
        handled = {ctx.line(a.statement) for a in file_additions(ctx)} if findings else set()
        unmatched = list(_unmatched_refusals(ctx, self.code, findings, handled))
        # a refusal the table now points to is said once, at the table (the component's line)
        answered = {id(answer) for _, answer in unmatched if answer is not None}
        yield from (f for f in findings if id(f) not in answered)
        yield from (refusal for refusal, _ in unmatched)

    def _check(self, ctx) -> Iterator[Finding]:
        additions = [a for a in file_additions(ctx) if not ctx.suppressed(self.code, a.statement)]
        if not additions:
            return
        base = float(self.settings["base"])  # checked in __init__
        sites: list[RotarySite] = []
        try:
            for addition in additions:
                _check_table_reads(ctx, addition, additions)
                model = model_of(ctx, addition)
                sites.extend(s for s in self._sites(ctx, model) if s not in sites)
            torch, needed = reference(ctx, "torch", "torch")
            if needed == ("torch", None, "torch"):
                needed = ("torch", None, None)  # `import torch`, not `import torch as torch`
            if self.settings["positions"] == "alibi":
                inserted = alibi_insertions(ctx, sites, torch)
            else:
                inserted = insertions(ctx, sites, torch, base)
        except Refused as refusal:  # all or nothing: never rewrite half a model
            yield Refusal(refusal.line, refusal.reason, refusal.hint)
            return
        yield from self._fixes(ctx, additions, sites, inserted, needed)

    def _target(self) -> str:
        if self.settings["positions"] == "alibi":
            return "ALiBi bias passed as the SDPA attn_mask"
        return "rotary embeddings applied to q and k"

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
            if self.settings["positions"] == "alibi":
                found = alibi_sites(ctx, cls)
                if found and outside_users(ctx, cls, parts.classes):
                    raise Refused(ctx.line(cls.node), f"attention class `{cls.qualname}` is also used outside "
                                  f"`{model.qualname}`", "give the two models separate attention classes")
                sites.extend(found)
                continue
            found = sites_in(ctx, cls)
            elsewhere = outside_users(ctx, cls, parts.classes) if found else []
            if elsewhere:
                raise Refused(elsewhere[0], f"attention class `{cls.qualname}` is also used outside "
                              f"`{model.qualname}` (line {elsewhere[0]}), by code whose positions stay as they are",
                              "give the two models separate attention classes")
            for site in found:
                _check_self_attention(ctx, cls, site)
                sites.append(site)
        if not sites:
            raise Refused(ctx.line(model.node), f"no attention found in the classes `{model.qualname}` is "
                          "built from", "")
        return sites

    def _fixes(self, ctx, additions: list[Addition], sites: list[RotarySite], inserted: dict,
               needed) -> Iterator[Fix]:
        for index, addition in enumerate(additions):
            replacements = remove_addition(addition)
            plan = ClassPlan(ctx.path, addition.cls.qualname, [self.code])
            buffer = addition.table.buffer
            if buffer is not None and addition.cls.buffers[buffer].persistent:
                plan.dropped.append(buffer)
            if index == 0:
                replacements.update(inserted)
            yield Fix(ctx.line(addition.statement),
                      "sinusoidal positions removed" + (f" (buffer `{buffer}` removed)" if buffer else "")
                      + (f"; {self._target()} in {len(sites)} attention(s); the model needs fine-tuning"
                         if index == 0 else ""),
                      replacements, plans=[plan], imports=[needed] if needed else [],
                      maybe_unused_imports=_TABLE_IMPORTS)


def _unmatched_refusals(ctx, code: str, findings: list[Finding],
                        handled: set[int]) -> Iterator[tuple[Refusal, Refusal | None]]:
    """The census's tables the matcher said nothing about: refused with the census's reason (a
    table in another file, a 2-D table, a factory that may build a learned one, a route the
    matcher does not rewrite), so that no sinusoidal table passes in silence. An addition the
    matcher took up (`handled`) and answered away from the table (the model's built-in layers)
    points to that answer, which it replaces (paired with each refusal here)."""
    from tf_migrate.rules.rope.census import sites

    lines = [f.line for f in findings]
    for site in sites(ctx, code):
        component = site.component
        spans = [(component.start_line, component.end_line), *component.scopes]
        spans += [(a, a) for a in component.anchors]
        if any(start <= line <= end for line in lines for start, end in spans):
            continue
        if handled & {site.line, *component.anchors}:
            answer = next((f for f in findings if isinstance(f, Refusal)), None)
            if answer is not None:
                yield Refusal(site.line, f"these positions belong to the model refused at line {answer.line}: "
                              f"{answer.reason}", answer.hint), answer
            continue
        yield Refusal(site.line, site.reason, site.hint), None


# What a removed table may have been the last user of (removed only when nothing reads it).
_TABLE_IMPORTS = [("math", None, None), ("numpy", None, None), ("numpy", None, "np")]


def _check_table_reads(ctx, addition: Addition, additions: list[Addition]) -> None:
    """The buffer goes away: nothing but the additions being removed may read it."""
    buffer = addition.table.buffer
    if buffer is None:
        return
    allowed = {id(n) for a in additions if a.cls is addition.cls for n in walk(a.node)}
    allowed |= {id(n) for n in walk(addition.cls.buffers[buffer].statement)}
    for ref in addition.cls.self_references(buffer):
        if id(ref) not in allowed:
            raise Refused(ctx.line(ref), f"the position table `self.{buffer}` is also read at line "
                          f"{ctx.line(ref)}, which would break once the table is gone", "")


def _check_self_attention(ctx, cls, site: RotarySite) -> None:
    flow = FunctionFlow(ctx, site.method)
    query, key = sources(ctx, flow, site.query, site.scores), sources(ctx, flow, site.key, site.key_at)
    if not query or not key:
        which, name = ("queries", site.query) if not query else ("keys", site.key)
        raise Refused(ctx.line(site.after), f"in `{cls.qualname}`, the {which} `{name}` are computed from no "
                      f"parameter of `{site.method.name.value}`: tf-migrate cannot show that keys and queries "
                      "are one input", "give self-attention its own class that takes one input")
    if query != key:
        raise Refused(ctx.line(site.after), f"in `{cls.qualname}`, the keys `{site.key}` are computed from "
                      f"{_listed(key)} and the queries `{site.query}` from {_listed(query)}: "
                      f"{key_query_evidence(ctx, cls, site.method, query, key)}; the keys of cross-attention "
                      "must not be rotated", "give self-attention its own class that takes one input")


def _listed(names: set[str]) -> str:
    return ", ".join(f"`{n}`" for n in sorted(names))
