"""Building the `scaled_dot_product_attention(...)` call that replaces a recognised chain."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import libcst as cst

from tf_migrate.rules.sdpa import masks
from tf_migrate.rules.sdpa import scale
from tf_migrate.analysis.attention import Attention, Mask, Operand, Refused
from tf_migrate.analysis.dataflow import Binding
from tf_migrate.analysis.imports import imports_bound_by, reference
from tf_migrate.analysis.nodes import atom_code, walk


@dataclass
class SdpaCall:
    ctx: Any
    found: Attention
    attn_mask: str | None = None
    is_causal: bool = False
    causal_guard: str | None = None  # code of the condition under which the causal mask applies
    buffers: list[str] = field(default_factory=list)  # causal buffers the call no longer reads
    mask_bindings: list[Binding] = field(default_factory=list)  # local masks it no longer reads
    imports: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # (mask term set in a kept `if` block, the name it is computed into, its boolean code)
    block_mask: tuple[Mask, str, str] | None = None
    returned_none: cst.BaseExpression | None = None  # probabilities returned beside the output: None now

    def arguments(self) -> list[str]:
        found, ctx = self.found, self.ctx
        args = [_operand(ctx, found.query), _operand(ctx, found.key), _operand(ctx, found.value)]
        if self.attn_mask is not None:
            args.append(f"attn_mask={self.attn_mask}")
        if found.dropout is not None:
            p, training = found.dropout.p, found.dropout.training
            args.append(f"dropout_p={p} if {training} else 0.0" if training else f"dropout_p={p}")
        if self.is_causal:
            args.append(f"is_causal={self.causal_guard}" if self.causal_guard else "is_causal=True")
        if not scale.is_default(ctx, found):
            args.append(f"scale={scale.spelled(ctx, found)}")
        return args

    def replacements(self, functional: str) -> dict[Any, Any]:
        call = _format_call(f"{functional}.scaled_dot_product_attention", self.arguments(),
                            self.ctx.column(self.found.product))
        replacement = cst.parse_expression(call + self.found.output_suffix)
        changes: dict[Any, Any] = {self.found.product: replacement}
        for statement in self._removed_statements():
            changes[statement] = cst.RemoveFromParent()
        if self.block_mask is not None:
            changes.update(_block_mask_edits(*self.block_mask))
        if self.returned_none is not None:
            changes[self.returned_none] = cst.Name("None")
        return changes

    def _removed_statements(self) -> Iterator[cst.BaseStatement]:
        for definition in self.found.consumed:
            yield definition.statement
        for binding in self.mask_bindings:
            yield binding.statement
        yield from self.found.extra_removed

    def removed_nodes(self) -> list[cst.CSTNode]:
        return [self.found.product, *self._removed_statements()]

    def removed_subtree_nodes(self) -> Iterator[cst.CSTNode]:
        for node in self.removed_nodes():
            yield from walk(node)

    def freed_imports(self) -> list[tuple[str, str | None, str | None]]:
        return imports_bound_by(self.ctx, self.removed_nodes())


def build_call(ctx, found: Attention) -> SdpaCall:
    call = SdpaCall(ctx, found)
    call.notes.extend(found.notes)
    _choose_mask(ctx, found, call)
    if found.softmax_cast_to is not None:
        call.notes.append("the softmax ran in float32 and was cast back: SDPA accumulates it in float32 "
                          "too; float16/bfloat16 outputs differ by rounding only, and float64 inputs now "
                          "keep float64 instead of a float32 softmax (`tf-migrate explain TFM101`)")
    return call


def _choose_mask(ctx, found: Attention, call: SdpaCall) -> None:
    terms = found.masks
    if not terms:
        return
    if any(t.helper_region for t in terms):
        _helper_causal(ctx, terms, call)
        return
    blocked = [t for t in terms if t.block is not None]
    if blocked:
        if len(terms) > 1:
            raise Refused(ctx.line(blocked[0].at), "a mask applied inside an `if` block that does other "
                          "work, together with other masks", "combine the masks into one before the scores")
        _refuse_empty_rows(ctx, found, terms)
        name = _fresh_name(found.function, "attn_mask")
        call.block_mask = (blocked[0], name, masks.allowed(ctx, blocked[0].expr))
        call.attn_mask = name
        return
    triangles = _refuse_empty_rows(ctx, found, terms)
    if len(terms) == 1 and terms[0].guard is None and _causal(ctx, found, terms[0], call, triangles[0]):
        call.is_causal = True
        return
    for term in terms:
        if term.kind == "add" and term.scaled_after:
            raise Refused(ctx.line(term.at), "the additive mask is scaled together with the scores; "
                          "SDPA adds the mask after scaling", "add the mask after scaling")
    added = [t for t in terms if t.kind == "add"]
    if added and len(terms) > 1:
        _bias_with_fills(ctx, found, call, added, [t for t in terms if t.kind == "fill"])
        return
    guarded = [t for t in terms if t.guard is not None]
    if len(guarded) > 1:
        raise Refused(ctx.line(guarded[1].at), "more than one mask is applied under a condition", "")
    plain = [_allowed(ctx, t, found) for t in terms if t.guard is None]

    def all_of(parts: list[str]) -> str:  # `&` binds tighter than `!=`: parenthesise each part
        return " & ".join(_paren(p, len(parts) > 1) for p in parts)

    if guarded:
        both = all_of([_allowed(ctx, guarded[0], found)] + plain)
        otherwise = all_of(plain) if plain else "None"
        call.attn_mask = f"{_paren(both, not _atomic(both))} if {ctx.code(guarded[0].guard)} else {otherwise}"
    else:
        call.attn_mask = all_of(plain)


def _helper_causal(ctx, terms: list[Mask], call: SdpaCall) -> None:
    """A helper that fills the strict upper triangle hides exactly what SDPA's is_causal hides
    (aligned top-left, for any query and key lengths); under `if test:` it applies when test holds."""
    term = next(t for t in terms if t.helper_region)
    helper = ctx.code(term.expr.func)
    other = next((t for t in terms if t is not term), None)
    if other is not None:
        what = f"`{ctx.code(other.expr)}` is added to" if other.kind == "add" else \
            f"`{ctx.code(other.expr)}` also masks"
        raise Refused(ctx.line(other.at), f"{what} the scores at line {ctx.line(other.at)}, besides the causal "
                      f"mask that `{helper}(...)` applies at line {ctx.line(term.expr)}",
                      "SDPA takes one mask: combine them into one before the scores")
    if term.helper_region != "j>i":
        raise Refused(ctx.line(term.expr), f"`{helper}(...)` at line {ctx.line(term.expr)} hides the diagonal "
                      "too: the first query sees no key, where SDPA returns zeros and the original does not",
                      "keep this attention, or let each query see itself")
    call.is_causal = True
    if term.guard is not None:
        test = term.guard
        boolean = isinstance(test, cst.Comparison) or (
            isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not))
        call.causal_guard = ctx.code(test) if boolean else f"bool({ctx.code(test)})"
    call.notes.append(f"causal mask applied by `{helper}(...)` -> is_causal")


def _fresh_name(function: cst.FunctionDef, stem: str) -> str:
    taken = {n.value for n in walk(function) if isinstance(n, cst.Name)}
    name, number = stem, 1
    while name in taken:
        number += 1
        name = f"{stem}_{number}"
    return name


def _block_mask_edits(term: Mask, name: str, allowed: str) -> dict[Any, Any]:
    """`if test: ...; s = s.masked_fill(m, v)` -> `name = None` before the block, `name = <allowed>`
    in place of the fill: the mask reads the block's names where the fill read them."""
    inner = term.at
    assigned = inner.with_changes(body=[cst.parse_statement(f"{name} = {allowed}\n").body[0]])

    def before(updated: cst.If):
        unset = cst.parse_statement(f"{name} = None\n").with_changes(leading_lines=updated.leading_lines)
        return cst.FlattenSentinel([unset, updated.with_changes(leading_lines=[])])

    return {inner: assigned, term.block: before}


def _refuse_empty_rows(ctx, found: Attention, terms: list[Mask]) -> list[masks.Triangle | None]:
    """A triangle that hides the diagonal too leaves the first (or last) query with no key at all,
    for every input: the original averages v there (or gives NaN), SDPA gives zeros. Returns the
    triangle of each fill term (None for the others), read once for `_causal` too."""
    reader = masks.MaskReader(found.shapes)
    triangles = []
    for term in terms:
        triangle = reader.triangle(term.expr, term.at) if term.kind == "fill" else None
        triangles.append(triangle)
        if triangle is not None and triangle.region in ("j>=i", "i>=j"):
            row = "first" if triangle.region == "j>=i" else "last"
            raise Refused(ctx.line(term.at), f"the mask `{ctx.code(term.expr)}` hides the diagonal too: "
                          f"the {row} query sees no key, where SDPA returns zeros and the original "
                          "does not", "keep this attention, or let each query see itself")
    return triangles


def _bias_with_fills(ctx, found: Attention, call: SdpaCall, added: list[Mask], fills: list[Mask]) -> None:
    """A float bias plus hiding masks (relative-position bias with padding): one float mask,
    -inf where hidden and the bias elsewhere, as `torch.where(hidden, -inf, bias)`."""
    guarded = [t for t in fills if t.guard is not None]
    if len(added) > 1 or added[0].guard is not None or len(guarded) > 1:
        raise Refused(ctx.line(added[0].at), "an additive mask is combined with other masks under "
                      "conditions", "merge the masks into one before the softmax")
    torch, needed = reference(ctx, "torch", "torch")
    call.imports.extend([needed] if needed else [])
    bias = _allowed(ctx, added[0], found)

    def where(hiding: list[Mask]) -> str:
        if not hiding:
            return bias
        hidden = " | ".join(_paren(ctx.code(t.expr), len(hiding) > 1) for t in hiding)
        return f'{torch}.where({hidden}, float("-inf"), {bias})'

    plain = [t for t in fills if t.guard is None]
    call.attn_mask = where(fills)
    if guarded:
        call.attn_mask = f"{where(fills)} if {ctx.code(guarded[0].guard)} else {where(plain)}"


def _allowed(ctx, term: Mask, found: Attention) -> str:
    if term.kind == "fill":
        return masks.allowed(ctx, term.expr)
    # `scores + mask` promotes to the wider dtype; SDPA needs the mask in the query's dtype
    # (torch 2.13 CPU silently miscomputes a float32 mask against float64 inputs).
    return f"{atom_code(ctx, term.expr)}.to({_dtype_source(ctx, found)}.dtype)"


def _dtype_source(ctx, found: Attention) -> str:
    for operand in (found.query, found.key, found.value):
        if isinstance(operand.expr, (cst.Name, cst.Attribute)):
            return ctx.code(operand.expr)
    return atom_code(ctx, found.query.expr)


def _atomic(code: str) -> bool:
    return isinstance(cst.parse_expression(code), (cst.Name, cst.Attribute, cst.Subscript, cst.Call))


def _paren(code: str, needed: bool) -> str:
    return f"({code})" if needed else code


def _causal(ctx, found: Attention, term: Mask, call: SdpaCall, filled: masks.Triangle | None) -> bool:
    """A lower-triangular mask over provably equal query and key lengths (`filled`: the triangle
    of a fill term, as `_refuse_empty_rows` read it)."""
    reader = masks.MaskReader(found.shapes)
    if term.kind == "fill":
        triangle = filled
        if triangle is None or triangle.region != "j>i":
            return False
    else:
        triangle = reader.additive_causal(term.expr, term.at)
        if triangle is None:
            return False
    shapes, q, k = found.shapes, found.query, found.key
    if triangle.size is None or shapes.root(q.expr, q.at) != shapes.root(k.expr, k.at):
        return False
    size = cst.parse_expression(triangle.size)
    if not shapes.length_of(size, term.at, [(q.expr, q.at), (k.expr, k.at)]):
        return False
    for binding in triangle.bindings:
        uses = found.flow.uses(binding)
        inside = {id(n) for n in walk(term.expr)}
        if all(id(u) in inside for u in uses):
            call.mask_bindings.append(binding)
    if triangle.buffer:
        call.buffers.append(triangle.buffer)
    call.notes.append("causal mask -> is_causal=True")
    return True


def _format_call(function: str, args: list[str], column: int, width: int = 99) -> str:
    """One line if it fits, else q, k, v on the first line and one keyword argument per line."""
    flat = f"{function}({', '.join(args)})"
    if column + len(flat) <= width:
        return flat
    positional = [a for a in args if "=" not in a.split("(")[0]]
    keywords = args[len(positional):]
    # Continuation lines are relative: libcst adds the enclosing block's indentation.
    lines = ["    " + ", ".join(positional) + ","] + [f"    {a}," for a in keywords]
    return f"{function}(\n" + "\n".join(lines) + "\n)"


def _operand(ctx, operand: Operand) -> str:
    code = ctx.code(operand.expr)
    if operand.suffix and not isinstance(operand.expr, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)):
        code = f"({code})"
    return code + operand.suffix
