"""TFM101: hand-written softmax attention -> F.scaled_dot_product_attention.

The package holds the rule (here) and its private machinery: `sdpa_call` writes the call, `masks`
and `scale` read the mask and scale of a matched chain, `loose_attention` finds chains the matcher
cannot follow so that they are refused. It imports `tf_migrate.analysis`, `engine.rule` and `plan`.
"""

from __future__ import annotations

from typing import Iterator

import libcst as cst

from tf_migrate.analysis.attention import SDPA, AttentionMatcher, NotAttention, Refused
from tf_migrate.rules.sdpa.consumers import kept_buffers, uncalled_module_consumer
from tf_migrate.rules.sdpa.escapes import escaped_probabilities
from tf_migrate.rules.sdpa.loose_attention import unfollowed_softmax
from tf_migrate.analysis.imports import FUNCTIONAL, reference
from tf_migrate.analysis.names import may_call
from tf_migrate.analysis.modules import ModuleClass
from tf_migrate.analysis.nodes import find_types
from tf_migrate.plan import ClassPlan
from tf_migrate.engine.rule import Component, Equivalence, Finding, Fix, Refusal, Rule
from tf_migrate.rules.sdpa.module_hooks import refuse_hooked
from tf_migrate.rules.sdpa.returned import ignored_by_callers, returned_reason
from tf_migrate.rules.sdpa.sdpa_call import SdpaCall, build_call


class EinsumAttentionToSdpa(Rule):
    """Replace a hand-written attention chain with one `F.scaled_dot_product_attention` call.

    Why: SDPA dispatches to fused kernels (flash, memory-efficient) that never materialise the
    (T x T) score matrix: faster, and attention memory grows linearly with the sequence instead
    of quadratically. Same weights, same function.

    Safety: exact. Scale, masks and dropout are carried over with their meaning: a boolean mask
    keeps which keys are visible (`masked_fill(mask == 0, ...)` becomes `attn_mask=mask != 0`), an
    additive float mask is passed as it is, a non-default scale is passed with `scale=`, and a
    chain without scaling gets `scale=1.0`. A mask applied in place (`scores.masked_fill_(m, v)`
    alone on its line) is the same step as `scores = scores.masked_fill(m, v)`; if another name
    still holds the unmasked scores, the chain is refused. A fill inside an `if` block that also
    does other work (reshapes the mask first) keeps the block: the fill becomes
    `attn_mask = <allowed>` where it was, `attn_mask = None` goes before the block, and the call
    reads that name (it must be the only mask). `is_causal=True` is used only when the mask is a
    provable lower triangle (not edited in place afterwards) over query and key lengths computed
    from the same tensor; otherwise
    the original mask is passed explicitly (KV caches keep their bottom-right alignment). An
    additive mask is cast to the query's dtype, as `scores + mask` would promote it. Rows whose
    keys are all masked differ (the original averages v or yields NaN, SDPA yields zeros).
    A softmax computed in float32 and cast back (`softmax(s.float()).type_as(s)`,
    `softmax(s, dtype=torch.float32).type_as(q)`, `s = s.float()` then `.to(q.dtype)`) is migrated
    with a note: SDPA accumulates the softmax in float32 as well. Measured on CPU (torch 2.13,
    width 256, 4 heads, T = 256; benchmarks/softmax_upcast_precision.py): max |error| against
    float64 is 1.2e-3 before and 1.2e-3 after in bfloat16, 4.4e-4 before and 4.6e-4 after in
    float16 (before vs after: 2.0e-3 and 2.4e-4); float32 agrees to 1e-7. In float64 the original
    DOWNcasts its softmax to float32 and SDPA does not, so `verify`'s float64 pass reports a
    difference of float32 rounding size (about 1e-7) for such models; its float32 pass agrees.
    `torch.baddbmm(alloc, q, k^T, beta=0, alpha=s)` is `s * (q @ k^T)` (beta=0 never reads `alloc`,
    which must be a plain allocation or a name). `matmul(q, k.transpose(2, 3))` is read as the usual (batch, heads, seq, dim) layout when the
    rank is not known from a `view`; any other transpose of k is kept and undone explicitly.

    Where: every method of an nn.Module class, and module-level functions of the same file
    (attention written as `attention(q, k, v, mask=None, dropout=None)`). A dropout module passed
    in as an optional parameter (`if dropout is not None: p = dropout(p)`) becomes
    `dropout_p=dropout.p if dropout is not None and dropout.training else 0.0`: the module drops
    only when given and in training mode. A free function (or a module's forward) that returns
    the probabilities beside the output is migrated with `None` returned in their place when
    every caller in the files of the run ignores them (`x, _ = f(...)`, a name never read,
    `f(...)[0]`; a module's forward: its instances' calls), and refused naming the first caller
    that reads them otherwise (or when no caller is found). Files without any nn.Module class are read too when they define top-level functions.

    A project helper that masks the scores in place (`mask_(dot, maskval=float('-inf'),
    mask_diagonal=False)`, here or in another file) is read from its body: a `torch.triu_indices`
    fill of the strict upper triangle of the last two axes hides exactly what `is_causal=True`
    hides (top-left aligned, for any query and key lengths), so under `if flag:` it becomes
    `is_causal=bool(flag)`; a helper body that does anything else is refused naming it. An
    `assert scores.size() == ...` between the scores and the product only checks a tensor SDPA
    no longer builds and is removed with the chain (the message says so).

    A forward/backward hook registered in the file on the softmax or dropout module the chain
    calls (`blk.attn.softmax.register_forward_hook(...)`), or hooks registered on modules picked
    by type (`isinstance(m, nn.Softmax)`), keep that attention as it is: SDPA would not call the
    module, and the hook would silently stop firing.

    Checkpoint: a causal-mask buffer that becomes unused is removed; if it was persistent, its key
    is dropped. It is kept registered (unused) when code elsewhere in the tree counts the state_dict
    keys, names the key, or hooks it. No weight changes.

    Refuses when: the probabilities are used for anything but the product with v (returned,
    stored, appended, passed to a hook, read later); the mask fill value is not -inf-like; the
    scale is not provably a number; the softmax computes in another dtype and is not cast back
    to the dtype of q, k, v or the scores (`.type_as(other)`); the probabilities pass
    through a module other than dropout; a name in the chain is rebound or changed in place
    (`q.mul_()`) before the product; the probabilities can leave the function unseen (a `global`
    name, `locals()`); a triangle mask also hides the diagonal (a query with no visible key for
    every input); a softmax of a scores product reaches the product with v through a step not
    listed above (a cast around the softmax other than the float32 round trip, a head mask, `nn.Softmax()(x)` built inline without a dim, a
    mask inside an `if` block besides other masks, a softmax dim not provably the keys' axis); a softmax or dropout
    module the rewrite stops calling has a hook registered on it anywhere in the tree (named by file and line). Silent (not attention)
    when no scores product lies behind the softmax (router weights mixing expert outputs).
    """

    code = "TFM101"
    name = "sdpa"
    equivalence = Equivalence.EXACT
    summary = "hand-written softmax(q k^T) v attention -> F.scaled_dot_product_attention"
    triggers = ("softmax", "Softmax")
    free_functions = True
    example_before = (
        "att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))\n"
        "att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float('-inf'))\n"
        "att = F.softmax(att, dim=-1)\n"
        "att = self.attn_drop(att)\n"
        "y = att @ v\n"
    )
    example_after = (
        "y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training "
        "else 0.0, is_causal=True)\n"
    )

    def census(self, ctx) -> Iterator[Component]:
        from tf_migrate.rules.sdpa.census import components

        return components(ctx, self.code)

    def check(self, ctx) -> Iterator[Finding]:
        lines: list[int] = []
        for finding in self._check(ctx):
            lines.append(finding.line)
            yield finding
        yield from escaped_probabilities(ctx, lines)

    def _check(self, ctx) -> Iterator[Finding]:
        for cls in ctx.module_classes:
            calls: list[SdpaCall] = []
            for method in cls.methods.values():
                yield from self._method(ctx, cls, method, calls)
            if calls:
                yield from self._fixes(ctx, cls, calls)
        for function in _module_functions(ctx):
            calls = []
            owner = ModuleClass(function, function.name.value)  # no submodules, buffers or methods
            named: list[Refusal] = []  # refusals that already name a caller in the tree
            for finding in self._method(ctx, owner, function, calls, free=True, named=named):
                yield _with_callers(ctx, function, finding) if isinstance(finding, Refusal) \
                    and not any(finding is n for n in named) else finding
            if calls:
                yield from self._fixes(ctx, owner, calls, plans=False)

    def _method(self, ctx, cls, method, calls: list[SdpaCall], free: bool = False,
                named: list[Refusal] | None = None) -> Iterator[Finding]:
        matcher = AttentionMatcher(ctx, cls, method)
        matcher.allow_returned = free or method.name.value == "forward"
        own_calls = find_types(method.body, cst.Call, into_scopes=False)
        if may_call(ctx, SDPA) and any(ctx.names.is_call(node, SDPA) for node in own_calls):
            return  # already has an SDPA path (often beside a manual fallback): leave it alone
        claimed: set[int] = set()
        for product, statement in matcher.candidates():
            if id(product) in claimed or ctx.suppressed(self.code, statement):
                continue
            try:
                found = matcher.match(product, statement)
                call = build_call(ctx, found)
                refuse_hooked(ctx, cls, call)
                if found.returned is not None:
                    ignored_by_callers(ctx, cls, method, call, free)
            except NotAttention:
                yield from _unfollowed(matcher, product, statement)
                continue
            except Refused as refusal:
                refusal = returned_reason(ctx, cls, method, matcher, free) or refusal
                finding = Refusal(refusal.line, refusal.reason, refusal.hint)
                if getattr(refusal, "whole_tree", False) and named is not None:
                    named.append(finding)
                yield finding
                continue
            if any(ctx.suppressed(self.code, d.statement) for d in found.consumed):
                continue
            hooked = uncalled_module_consumer(ctx, cls, call)
            if hooked is not None:
                yield Refusal(ctx.line(statement), hooked, "move the hook's work into forward, or rewrite by hand")
                continue
            claimed.update(id(n) for n in call.removed_nodes())
            calls.append(call)

    def _fixes(self, ctx, cls, calls: list[SdpaCall], plans: bool = True) -> Iterator[Fix]:
        functional, needed = reference(ctx, FUNCTIONAL, "F")
        removed_buffers, kept = kept_buffers(ctx, cls, _unused_buffers(ctx, cls, calls))
        for index, call in enumerate(calls):
            replacements = call.replacements(functional)
            plan = ClassPlan(ctx.path, cls.qualname, [self.code])
            notes = []
            if index == len(calls) - 1:
                notes.extend(kept)
                for buffer in removed_buffers:
                    replacements[cls.buffers[buffer].statement] = cst.RemoveFromParent()
                    notes.append(f"unused buffer `{buffer}` removed")
                    if cls.buffers[buffer].persistent:
                        plan.dropped.append(buffer)
            yield Fix(
                line=ctx.line(call.found.statement),
                message="attention -> F.scaled_dot_product_attention" + "".join(
                    f"; {n}" for n in call.notes + notes),
                replacements=replacements,
                plans=[plan] if plans else [],
                imports=([needed] if needed else []) + call.imports,
                maybe_unused_imports=call.freed_imports(),
            )


def _module_functions(ctx) -> list[cst.FunctionDef]:
    """Functions at the top of the file: attention is often a free function called by classes."""
    return [node for node in ctx.module.body if isinstance(node, cst.FunctionDef)]


def _with_callers(ctx, function: cst.FunctionDef, refusal: Refusal) -> Refusal:
    """A refusal in a free function, with what each caller in this file does with its results."""
    name = function.name.value
    calls = ctx.index.calls_of(ctx.module, name)
    uses = []
    for call in calls:
        parent = ctx.parents.get(call)
        if isinstance(parent, cst.Assign):
            uses.append(f"line {ctx.line(call)}, which binds `{' = '.join(ctx.code(t.target) for t in parent.targets)}`")
        else:
            uses.append(f"line {ctx.line(call)}")
    if not uses:
        return refusal
    return Refusal(refusal.line, f"{refusal.reason}; `{name}` is called at " + ", ".join(uses)
                   + " (callers in other files are not followed)", refusal.hint)


def _unfollowed(matcher, product, statement) -> Iterator[Refusal]:
    """A product of softmax probabilities with v that the matcher could not follow: say so."""
    found = unfollowed_softmax(matcher, product, statement)
    if found is not None:
        yield Refusal(matcher.ctx.line(statement), (
            f"attention (scores at line {found.scores_line}, softmax at line {found.softmax_line}, "
            f"product with v here) not folded into SDPA: {found.step}"),
            "write it as dropout(softmax(mask(scale(q @ k^T)))) @ v, or call "
            "F.scaled_dot_product_attention by hand")


def _unused_buffers(ctx, cls, calls: list[SdpaCall]) -> list[str]:
    """Mask buffers that no code reads once the rewritten chains are gone."""
    removed = {id(n) for call in calls for n in call.removed_subtree_nodes()}
    unused = []
    for buffer in {b for call in calls for b in call.buffers}:
        statement = cls.buffers[buffer].statement
        block = ctx.parents.get(statement)
        if isinstance(block, cst.IndentedBlock) and len(block.body) == 1:
            continue  # the only statement of its block: removing it would leave an empty block
        if all(id(ref) in removed for ref in cls.self_references(buffer)):
            unused.append(buffer)
    return sorted(unused)
