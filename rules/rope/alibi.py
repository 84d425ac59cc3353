"""ALiBi as TFM401's alternative target: a per-head linear distance bias in SDPA's `attn_mask`.

Only `F.scaled_dot_product_attention` calls with q and k laid out (B, H, T, D) take it (run
TFM101 first for hand-written attention); the call's own mask and `is_causal` are folded into
the bias, so the call keeps its meaning plus the bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.attention import SDPA, AttentionMatcher, Refused
from tf_migrate.analysis.nodes import find_types
from tf_migrate.rules.rope.callers import key_query_evidence
from tf_migrate.rules.rope.rotary import sources

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

HELPER_NAME = "alibi_bias"
_PRODUCTS = ("torch.matmul", "torch.bmm", "torch.einsum")

_HELPER = '''

def _alibi_slopes(n_heads):
    """The ALiBi paper's geometric slopes; for a head count that is not a power of two, those of
    the closest smaller power of two plus every other slope of the next power of two."""
    closest = 1 << (n_heads.bit_length() - 1)
    slopes = [2 ** (-8 * (h + 1) / closest) for h in range(closest)]
    return slopes + [2 ** (-8 * (h + 1) / (2 * closest)) for h in range(0, 2 * closest, 2)][: n_heads - closest]


def {name}(q, k, attn_mask=None, is_causal=False):
    """ALiBi bias as an SDPA float mask: q (B, H, T, D), k (B, H, S, D) -> (H, T, S) or (B, H, T, S).

    The T queries are the last T of the S key positions (cached decoding); `attn_mask` (bool: True
    = visible, or float: added) and `is_causal` are folded in, since SDPA takes one mask.
    """
    n_heads, q_len, k_len = q.size(-3), q.size(-2), k.size(-2)
    slopes = {torch}.tensor(_alibi_slopes(n_heads), device=q.device, dtype=q.dtype)  # (H,)
    i = {torch}.arange(k_len - q_len, k_len, device=q.device)[:, None]  # (T, 1) query positions
    j = {torch}.arange(k_len, device=q.device)[None, :]  # (1, S) key positions
    bias = -slopes[:, None, None] * (i - j).abs().to(q.dtype)  # (H, T, S)
    if is_causal:
        bias = bias.masked_fill(j > i, float("-inf"))
    if attn_mask is not None:
        bias = bias.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == {torch}.bool else bias + attn_mask
    return bias
'''


@dataclass
class AlibiSite:
    call: cst.Call
    method: cst.FunctionDef
    statement: cst.BaseStatement


def alibi_sites(ctx: "FileContext", cls: "ModuleClass") -> list[AlibiSite]:
    found = []
    for method in cls.methods.values():
        matcher = AttentionMatcher(ctx, cls, method)
        for node in find_types(method.body, (cst.Call, cst.BinaryOperation), into_scopes=False):
            if ctx.names.callee(node) == SDPA:
                found.append(_site(ctx, matcher, method, node))
            elif ctx.names.callee(node) in _PRODUCTS or (
                    isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.MatrixMultiply)):
                if "softmax" in ctx.code(method).lower():
                    raise Refused(ctx.line(node), f"`{cls.qualname}.{method.name.value}` computes attention by "
                                  "hand: ALiBi goes into the attn_mask of an SDPA call",
                                  "run TFM101 first: --select TFM101,TFM401")
    return found


def _site(ctx, matcher: AttentionMatcher, method, call: cst.Call) -> AlibiSite:
    statement = matcher.flow.statement_of(call)
    q, k = (a.value for a in call.args[:2])
    if len(call.args) < 3 or any(a.keyword is None for a in call.args[3:]) or any(
            a.keyword is not None for a in call.args[:3]):
        raise Refused(ctx.line(call), "the SDPA call does not pass q, k, v positionally and the rest by "
                      "keyword", "")
    for operand in (q, k):
        if matcher.shapes.rank(operand, statement) != 4:
            raise Refused(ctx.line(call), f"cannot prove `{ctx.code(operand)}` is (B, H, T, D), which the "
                          "per-head ALiBi bias needs", "reshape q and k to (B, H, T, D) with explicit sizes")
    names = [n for n in (_name(q), _name(k))]
    if None in names:
        operand = q if names[0] is None else k
        raise Refused(ctx.line(call), f"the SDPA call's {'query' if operand is q else 'key'} `{ctx.code(operand)}` "
                      "is not a local name: tf-migrate cannot show that q and k come from the same input", "")
    query, key = (sources(ctx, matcher.flow, name, statement) for name in names)
    if query != key:
        seen = key_query_evidence(ctx, matcher.cls, method, query, key) if query and key else \
            f"`{names[0] if not query else names[1]}` is computed from no parameter of `{method.name.value}`"
        raise Refused(ctx.line(call), f"cannot show that q and k come from the same input: {seen}", "")
    return AlibiSite(call, method, statement)


def _name(expr) -> str | None:
    while isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute):
        expr = expr.func.value
    return expr.value if isinstance(expr, cst.Name) else None


def rewritten_call(ctx: "FileContext", site: AlibiSite) -> cst.Call:
    """`sdpa(q, k, v, attn_mask=m, is_causal=c, ...)` -> `sdpa(q, k, v, attn_mask=alibi_bias(q, k, m, c), ...)`."""
    call = site.call
    keywords = {a.keyword.value: a for a in call.args[3:]}
    parts = [ctx.code(call.args[0].value), ctx.code(call.args[1].value)]
    for key in ("attn_mask", "is_causal"):
        if key in keywords:
            parts.append(f"{key}={ctx.code(keywords[key].value)}")
    mask = cst.Arg(cst.parse_expression(f"{HELPER_NAME}({', '.join(parts)})"), keyword=cst.Name("attn_mask"),
                   equal=cst.AssignEqual(cst.SimpleWhitespace(""), cst.SimpleWhitespace("")))
    args, placed = list(call.args[:3]), False
    for arg in call.args[3:]:
        if arg.keyword.value in ("attn_mask", "is_causal"):
            if not placed:
                args.append(mask.with_changes(comma=arg.comma))
            placed = True
        else:
            args.append(arg)
    if not placed:
        args[2:3] = [args[2].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))),
                     mask.with_changes(comma=args[2].comma)]
    if isinstance(args[-1].comma, cst.Comma) and not isinstance(call.args[-1].comma, cst.Comma):
        args[-1] = args[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
    return call.with_changes(args=args)


def helper_statements(torch_alias: str) -> list[cst.BaseStatement]:
    body = list(cst.parse_module(_HELPER.format(torch=torch_alias, name=HELPER_NAME)).body)
    return [body[0].with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()]), *body[1:]]
