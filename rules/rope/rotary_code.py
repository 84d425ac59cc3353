"""The code TFM401 writes: the rotary helper (once per file) and the calls that apply it."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.attention import Refused

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.rules.rope.positions import Addition
    from tf_migrate.rules.rope.rotary import RotarySite

HELPER_NAME = "apply_rotary"

_HELPER = '''

_ROTARY_CACHE = {{}}


def _rotary_cos_sin(length, dim, base, device, dtype):
    """cos and sin of the rotary angles, each (length, dim); cached per length, dim, base, device, dtype."""
    # inference-mode tensors cannot be saved for backward, so they get their own entries
    key = (length, dim, base, device, dtype, {torch}.is_inference_mode_enabled())
    if key not in _ROTARY_CACHE:
        inv_freq = 1.0 / base ** ({torch}.arange(0, dim, 2, device=device, dtype={torch}.float32) / dim)  # (dim / 2,)
        positions = {torch}.arange(length, device=device, dtype={torch}.float32)  # (length,)
        angles = {torch}.outer(positions, inv_freq)  # (length, dim / 2)
        angles = {torch}.cat((angles, angles), dim=-1)  # (length, dim)
        _ROTARY_CACHE[key] = (angles.cos().to(dtype), angles.sin().to(dtype))
    return _ROTARY_CACHE[key]


def {name}(x, seq_dim=-2, offset=0, base={base}):
    """Rotary position embedding of x (..., head_dim), positions along `seq_dim` starting at `offset`.

    Channel i is paired with channel i + head_dim / 2 and the pair is rotated by the angle
    position * base ** (-2i / head_dim): the dot product of a rotated query at position i and a
    rotated key at position j depends only on i - j, and norms are unchanged.
    """
    length, dim = x.size(seq_dim), x.size(-1)
    cos, sin = _rotary_cos_sin(offset + length, dim, base, x.device, x.dtype)
    shape = [1] * x.dim()
    shape[seq_dim], shape[-1] = length, dim
    cos, sin = cos[offset:].view(shape), sin[offset:].view(shape)  # broadcast over batch and heads
    first, second = x.chunk(2, dim=-1)  # (..., head_dim / 2) each
    return x * cos + {torch}.cat((-second, first), dim=-1) * sin
'''


def helper_statements(torch_alias: str, base: float) -> list[cst.BaseStatement]:
    return list(_helper(torch_alias, float(base)))


@lru_cache(maxsize=8)
def _helper(torch_alias: str, base: float) -> tuple[cst.BaseStatement, ...]:
    """Parsed once per spelling: libcst nodes never change, so every file can hold the same ones."""
    code = _HELPER.format(torch=torch_alias, name=HELPER_NAME, base=repr(base))
    body = list(cst.parse_module(code).body)
    blank = [cst.EmptyLine(), cst.EmptyLine()]
    return (body[0].with_changes(leading_lines=blank), *body[1:])


def rotary_statements(site: "RotarySite") -> list[cst.SimpleStatementLine]:
    """`q = apply_rotary(q, seq_dim=1)`, then the same for k; with a key cache, q's positions
    start where the cached keys end (the cache holds raw keys, rotated afresh at every step)."""
    (q_dim, k_dim), statements = site.seq_dims, []
    for name, seq_dim in ((site.query, q_dim), (site.key, k_dim)):
        extra = "" if seq_dim == -2 else f", seq_dim={seq_dim}"
        if site.cached and name == site.query:
            extra += f", offset={site.key}.size({k_dim}) - {site.query}.size({q_dim})"
        statements.append(cst.parse_statement(f"{name} = {HELPER_NAME}({name}{extra})\n"))
    return statements


def remove_addition(addition: "Addition") -> dict:
    """Replacements that take the table and its addition out (`x = x + pe` goes entirely)."""
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


def insertions(ctx: "FileContext", sites: list["RotarySite"], torch: str, base: float) -> dict:
    """Replacements that insert the rotary calls after each site, and the helper after the imports."""
    replacements: dict = {}
    for site in sites:
        if site.after is None:  # q and k are parameters: rotated first thing in the method
            first, docstring = _method_start(site.method)
            current = replacements.get(first, cst.FlattenSentinel([first]))
            nodes = list(current.nodes)
            at = 1 if docstring else nodes.index(first)
            replacements[first] = cst.FlattenSentinel([*nodes[:at], *rotary_statements(site), *nodes[at:]])
            continue
        current = replacements.get(site.after, cst.FlattenSentinel([site.after]))
        replacements[site.after] = cst.FlattenSentinel([*current.nodes, *rotary_statements(site)])
    if not _has_helper(ctx):
        imports = [s for s in ctx.module.body if isinstance(s, cst.SimpleStatementLine)
                   and isinstance(s.body[0], (cst.Import, cst.ImportFrom))]
        anchor = imports[-1] if imports else ctx.module.body[0]
        replacements[anchor] = cst.FlattenSentinel([anchor, *helper_statements(torch, base)])
    return replacements


def _method_start(method: cst.FunctionDef) -> tuple[cst.BaseStatement, bool]:
    """The first statement of `method`, and whether it is its docstring (the rotation goes after it)."""
    first = method.body.body[0]
    docstring = isinstance(first, cst.SimpleStatementLine) and isinstance(first.body[0], cst.Expr) \
        and isinstance(first.body[0].value, (cst.SimpleString, cst.ConcatenatedString))
    return first, docstring


def _has_helper(ctx: "FileContext") -> bool:
    """Whether an earlier run inserted the helper; refuses when the name means something else."""
    for statement in ctx.module.body:
        if isinstance(statement, cst.FunctionDef) and statement.name.value in (HELPER_NAME, "_rotary_cos_sin"):
            if "_ROTARY_CACHE" not in ctx.code(ctx.module):
                raise Refused(ctx.line(statement), f"this file already defines `{statement.name.value}`, "
                              "which is not tf-migrate's rotary helper", "rename it, then migrate")
            return True
    return False


def alibi_insertions(ctx: "FileContext", sites: list, torch: str) -> dict:
    """Replacements that put the ALiBi bias into each SDPA call, and its helper after the imports."""
    from tf_migrate.rules.rope import alibi

    replacements: dict = {site.call: alibi.rewritten_call(ctx, site) for site in sites}
    defined = [s for s in ctx.module.body if isinstance(s, cst.FunctionDef) and s.name.value == alibi.HELPER_NAME]
    if defined:
        raise Refused(ctx.line(defined[0]), f"this file already defines `{alibi.HELPER_NAME}`", "rename it")
    imports = [s for s in ctx.module.body if isinstance(s, cst.SimpleStatementLine)
               and isinstance(s.body[0], (cst.Import, cst.ImportFrom))]
    anchor = imports[-1] if imports else ctx.module.body[0]
    replacements[anchor] = cst.FlattenSentinel([anchor, *alibi.helper_statements(torch)])
    return replacements
