"""Statement edits that turn recognised post-norm sublayers into pre-norm ones, and the final norm
a stack of such blocks needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import libcst as cst

from tf_migrate.analysis.nodes import find
from tf_migrate.plan import NewKey
from tf_migrate.rules.prenorm.residual import PostNorm

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.rules.prenorm.stacks import Stack, StackRun

_TEMPORARIES = ("h", "normed", "h_norm", "x_norm")


class _Rewrite(cst.CSTTransformer):
    def __init__(self, swap: dict, unwrap: set) -> None:
        self.swap, self.unwrap = swap, unwrap

    def leave_Name(self, original, updated):
        return self.swap.get(original, updated)

    def leave_Call(self, original, updated):
        return updated.args[0].value if original in self.unwrap else updated


def prenorm_replacements(ctx: "FileContext", method: cst.FunctionDef,
                         posts: list[PostNorm], aliases: dict[int, list[str]] | None = None) -> dict[Any, Any]:
    """`x = norm(x + drop(f(x)))` -> `x = x + drop(f(norm(x)))`; several reads of the sublayer
    input share one `h = norm(x)` inserted before the first of them. `aliases` (per post, by id)
    names other parameters some caller passes the same tensor as the input (q, k and v of
    self-attention inside an attention class): `k = h if k is q else k` follows, so
    self-attention reads the normalised input everywhere and cross-attention keeps its memory."""
    aliases = aliases or {}
    temporary = _free_name(method)
    swap: dict[cst.CSTNode, cst.BaseExpression] = {}
    unwrap: set[cst.CSTNode] = set()
    removed: set[cst.CSTNode] = set()
    dropped: dict[cst.CSTNode, str] = {}  # `y = x = norm(x)` -> `y = x`: the target x is dropped
    before: dict[cst.CSTNode, list[cst.BaseStatement]] = {}
    for post in posts:
        norm = ctx.code(post.call.func)
        first = min(post.inputs, key=lambda n: (ctx.line(n), ctx.column(n)))
        if len(post.inputs) == 1 and not aliases.get(id(post)):
            swap[first] = cst.parse_expression(f"{norm}({first.value})")
        else:
            for name in post.inputs:
                swap[name] = cst.Name(temporary)
            before[_statement(ctx, first)] = [cst.parse_statement(f"{temporary} = {norm}({first.value})\n")] + [
                cst.parse_statement(f"{alias} = {temporary} if {alias} is {first.value} else {alias}\n")
                for alias in aliases.get(id(post), ())]
        if post.inline or not _rebinds_own_argument(post):
            unwrap.add(post.call)
        elif len(post.statement.body[0].targets) > 1:
            unwrap.add(post.call)
            dropped[post.statement] = post.call.args[0].value.value
        else:
            removed.add(post.statement)
    replacements: dict[Any, Any] = {}
    for statement in {id(s): s for p in posts for s in p.statements}.values():
        if statement in removed:
            replacements[statement] = cst.RemoveFromParent()
            continue
        new = statement.visit(_Rewrite(swap, unwrap))
        if statement in dropped:
            small = new.body[0]
            new = new.with_changes(body=[small.with_changes(
                targets=[t for t in small.targets if t.target.value != dropped[statement]])])
        if statement in before:
            head, *rest = before[statement]
            new = cst.FlattenSentinel([head.with_changes(leading_lines=statement.leading_lines), *rest,
                                       new.with_changes(leading_lines=())])
        replacements[statement] = new
    return replacements


def _statement(ctx: "FileContext", node: cst.CSTNode) -> cst.CSTNode:
    while not isinstance(node, cst.SimpleStatementLine):
        node = ctx.parents[node]
    return node


def _rebinds_own_argument(post: PostNorm) -> bool:
    """`x = self.norm(x)`: after the rewrite it would read `x = x`, so it goes (in a chained
    `y = x = self.norm(x)` only the target `x` goes: `y = x`)."""
    small = post.statement.body[0]
    argument = post.call.args[0].value
    return isinstance(small, cst.Assign) and isinstance(argument, cst.Name) \
        and any(t.target.value == argument.value for t in small.targets)


def _free_name(method: cst.FunctionDef) -> str:
    used = {node.value for node in find(method, lambda node: isinstance(node, cst.Name))}
    return next(n for n in _TEMPORARIES + tuple(f"h{i}" for i in range(100)) if n not in used)


def final_norm(ctx: "FileContext", stack: "Stack", run: "StackRun", norm: cst.Call,
               norm_attr: str, taken: set, norm_ctx: "FileContext | None" = None,
               path: str | None = None, func: str | None = None,
               own: list[tuple[str, str]] | None = None,
               callee: str | None = None) -> tuple[dict[Any, Any], list[NewKey], str]:
    """`self.final_norm = <same norm type>(<shape and eps of the last block's norm>)` after the
    stack is built, applied once after the loop over the blocks. A norm read in another file
    (`norm_ctx`) is reached by `path` from the stack and built as `func` in this one; `callee`
    names the torch norm a project alias or factory builds (its keys)."""
    norm_ctx = norm_ctx or ctx
    attr = _free_attribute(stack, {name for owner, name in taken if owner == id(stack.cls)})
    taken.add((id(stack.cls), attr))
    source = f"{path or stack.path}.{norm_attr}"
    args = [f"{source}.normalized_shape"]
    keywords = {a.keyword.value: norm_ctx.code(a.value) for a in norm.args if a.keyword}
    if "eps" in keywords or sum(a.keyword is None for a in norm.args) > 1 or callee:  # a factory's eps is its own
        args.append(f"eps={source}.eps")
    for flag in ("elementwise_affine", "bias"):
        if flag in keywords:
            args.append(f"{flag}={keywords[flag]}")
    build = cst.parse_statement(f"self.{attr} = {func or ctx.code(norm.func)}({', '.join(args)})\n")
    if own is not None:
        # The project's own norm class: a copy of the last block's norm, taken right after the stack
        # is built, has its hyper-parameters and its fresh (identity) parameters.
        build = cst.parse_statement(f"self.{attr} = {func}({source})\n")
    apply = cst.parse_statement(f"{run.variable} = self.{attr}({run.variable})\n")
    replacements = {
        stack.statement: cst.FlattenSentinel([stack.statement, build]),
        run.statement: cst.FlattenSentinel([run.statement, apply]),
    }
    if own is not None:
        return replacements, [NewKey(f"{attr}.{name}", init) for name, init in own], attr
    return replacements, norm_keys(callee or norm_ctx.names.callee(norm) or "", keywords, attr), attr


def norm_keys(callee: str, keywords: dict[str, str], prefix: str) -> list[NewKey]:
    """The parameters a fresh norm adds, initialised to the identity."""
    if keywords.get("elementwise_affine") == "False":
        return []
    keys = [NewKey(f"{prefix}.weight", "ones")]
    if "RMSNorm" not in callee and keywords.get("bias") != "False":
        keys.append(NewKey(f"{prefix}.bias", "zeros"))
    return keys


def _free_attribute(stack: "Stack", taken: set[str]) -> str:
    taken = taken | set(stack.cls.submodules) | set(stack.cls.buffers)
    candidates = ("final_norm", f"{stack.attr}_final_norm") + tuple(f"final_norm_{i}" for i in range(1, 100))
    return next(c for c in candidates
                if c not in taken and not list(stack.cls.self_references(c)))
