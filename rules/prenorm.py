"""TFM201: post-norm residual sublayers -> pre-norm, with one final norm per stack."""

from __future__ import annotations

from typing import Iterator

import libcst as cst

from tf_migrate.builtin_layers import builtin_layers
from tf_migrate.imports import reference
from tf_migrate.names import argument
from tf_migrate.plan import ClassPlan
from tf_migrate.prenorm_edit import final_norm, norm_keys, prenorm_replacements
from tf_migrate.residual import ResidualFinder, Unprovable
from tf_migrate.rule import Equivalence, Finding, Fix, Note, Refusal, Rule
from tf_migrate.stacks import find_run, find_stack

_FINE_TUNE = "fine-tune the migrated model before use: pre-norm computes a different function"


class PostNormToPreNorm(Rule):
    """Move every sublayer's norm in front of it, `x = x + f(norm(x))`, and close the stack with
    one final norm.

    Why: pre-norm keeps an identity path through the whole residual stream, so deep stacks train
    stably without learning-rate warm-up tricks; it is what current transformers use.

    Safety: compatible, NOT exact. The function changes: the model MUST be fine-tuned afterwards
    (old weights are a good starting point, not a finished model). Each post-norm sublayer
    `x = norm(x + drop(f(x)))`, in one expression or spread over statements, becomes
    `x = x + drop(f(norm(x)))`; an input read several times (q, k and v of self-attention) is
    normalised once into a temporary. Cross-attention normalises only the decoder stream, not
    the memory. Every sublayer of a block is rewritten or none is; blocks already pre-norm are
    reported and never touched. `nn.TransformerEncoderLayer` / `DecoderLayer` get
    `norm_first=True`.

    Checkpoint: every old weight keeps its key. The final norm is new: `final_norm.weight` (ones)
    and `final_norm.bias` (zeros) on the class that holds the stack, or `<stack>.norm.weight` /
    `.bias` for a built-in `nn.TransformerEncoder` / `Decoder` given `norm=`.

    Refuses when: the residual or its branch is scaled; an intermediate of the sublayer or the
    norm's output is read outside the residual stream; the norm is not the whole value of its
    statement; the residual comes in from the caller (the sublayer lives in another module, as
    in BERT's `*Output` classes); no stack holding the block is found, or its forward does not
    run the blocks in a plain loop; a built-in layer is not stacked in the same function.
    """

    code = "TFM201"
    name = "prenorm"
    equivalence = Equivalence.COMPATIBLE
    summary = "post-norm residual sublayers -> pre-norm, plus one final norm per stack (fine-tune after)"
    triggers = ("LayerNorm", "RMSNorm", "TransformerEncoderLayer", "TransformerDecoderLayer")
    example_before = (
        "x = self.norm1(x + self.dropout1(self.self_attn(x, x, x, mask)))\n"
        "x = self.norm2(x + self.dropout2(self.feed_forward(x)))\n"
    )
    example_after = (
        "h = self.norm1(x)\n"
        "x = x + self.dropout1(self.self_attn(h, h, h, mask))\n"
        "x = x + self.dropout2(self.feed_forward(self.norm2(x)))\n"
        "# and in the model, after the loop over the blocks: x = self.final_norm(x)\n"
    )

    def check(self, ctx) -> Iterator[Finding]:
        stacks: dict[int, list] = {}
        refused: dict[int, int] = {}  # stack statement -> line of a block that refused
        for cls in ctx.module_classes:
            yield from self._builtin(ctx, cls)
            forward = cls.methods.get("forward")
            if forward is None or ctx.suppressed(self.code, forward):
                continue
            try:
                found = ResidualFinder(ctx, cls, forward).find()
            except Unprovable as exc:
                stack = find_stack(ctx, cls)
                if stack is not None:
                    refused.setdefault(id(stack.statement), exc.line)
                yield Refusal(exc.line, f"{cls.qualname}: {exc.reason}", "rewrite by hand, or "
                              "mark the class `# tf-migrate: skip[TFM201]`")
                continue
            for line in found.pre:
                yield Note(line, f"{cls.qualname}: residual sublayer is already pre-norm; left alone")
            if not found.post:
                continue
            stack = find_stack(ctx, cls)
            run = find_run(stack) if stack else None
            if run is None:
                yield Refusal(ctx.line(found.post[0].statement), (
                    f"{cls.qualname} is post-norm, but the stack of blocks that holds it (and its "
                    "loop in forward) was not found, so the final norm cannot be placed"),
                    "build the blocks in an nn.ModuleList and run them in a for loop")
                continue
            stacks.setdefault(id(stack.statement), []).append((cls, forward, found, stack, run))
        for key, blocks in stacks.items():
            if key in refused:
                for cls, _, found, _, _ in blocks:
                    yield Refusal(ctx.line(found.post[0].statement), (
                        f"{cls.qualname} is post-norm, but another block of the same stack was "
                        f"refused (line {refused[key]}); a stack is migrated whole or not at all"))
                continue
            yield from self._rewrite_stack(ctx, blocks)

    def _rewrite_stack(self, ctx, blocks) -> Iterator[Fix]:
        for cls, forward, found, _, _ in blocks:
            yield Fix(ctx.line(found.post[0].statement),
                      f"{cls.qualname}: {len(found.post)} post-norm sublayer(s) -> pre-norm; "
                      + _FINE_TUNE, prenorm_replacements(ctx, forward, found.post))
        cls, _, found, stack, run = blocks[-1]
        norm = cls.submodules[found.post[-1].norm].call
        replacements, keys, attr = final_norm(ctx, stack, run, norm, found.post[-1].norm)
        plan = ClassPlan(ctx.path, stack.cls.qualname, [self.code], new=keys)
        yield Fix(ctx.line(run.statement), f"{stack.cls.qualname}: final norm `self.{attr}` after "
                  f"the last block (new, initialised to identity)", replacements, plans=[plan])

    def _builtin(self, ctx, cls) -> Iterator[Finding]:
        for method in cls.methods.values():
            for layer in builtin_layers(ctx, method):
                yield from self._builtin_layer(ctx, cls, layer)

    def _builtin_layer(self, ctx, cls, layer) -> Iterator[Finding]:
        line = ctx.line(layer.call)
        if isinstance(layer.norm_first, cst.Name) and layer.norm_first.value == "True":
            yield Note(line, "built-in layer already has norm_first=True; left alone")
            return
        if layer.norm_first is not None and not (
                isinstance(layer.norm_first, cst.Name) and layer.norm_first.value == "False"):
            yield Refusal(line, f"norm_first={ctx.code(layer.norm_first)} is not a literal")
            return
        if layer.stack is None or layer.stack_attr is None:
            yield Refusal(line, "built-in post-norm layer not stacked by an nn.TransformerEncoder/"
                          "Decoder assigned to self in the same function: the final norm cannot be placed")
            return
        new_layer = _with_norm_first(layer.call)
        replacements = {layer.call: new_layer}
        plans, imports = [], []
        if argument(layer.stack, 2, "norm") is None:
            nn, needed = reference(ctx, "torch.nn", "nn")
            imports = [needed] if needed else []
            if any(a.value is layer.call for a in layer.stack.args):
                del replacements[layer.call]  # nested: the new stack call carries the new layer
            replacements[layer.stack] = _with_norm(ctx, layer, nn, new_layer)
            keys = norm_keys("LayerNorm", {}, f"{layer.stack_attr}.norm")
            plans = [ClassPlan(ctx.path, cls.qualname, [self.code], new=keys)]
        yield Fix(line, "built-in layer -> norm_first=True, final norm on its stack; " + _FINE_TUNE,
                  replacements, plans=plans, imports=imports)


def _with_norm_first(call: cst.Call) -> cst.Call:
    true = cst.Name("True")
    if any(a.keyword and a.keyword.value == "norm_first" for a in call.args):
        return call.with_changes(args=[a.with_changes(value=true) if a.keyword and
                                       a.keyword.value == "norm_first" else a for a in call.args])
    return call.with_changes(args=_append(list(call.args), cst.parse_expression("f(norm_first=True)").args[0]))


def _with_norm(ctx, layer, nn: str, new_layer: cst.Call) -> cst.Call:
    d_model = argument(layer.call, 0, "d_model")
    eps = argument(layer.call, 5, "layer_norm_eps")
    bias = argument(layer.call, 99, "bias")
    text = f"{nn}.LayerNorm({ctx.code(d_model)}"
    text += f", eps={ctx.code(eps)}" if eps is not None else ""
    text += f", bias={ctx.code(bias)}" if bias is not None else ""
    arg = cst.parse_expression(f"f(norm={text}))").args[0]
    args = [a.with_changes(value=new_layer) if a.value is layer.call else a for a in layer.stack.args]
    return layer.stack.with_changes(args=_append(args, arg))


def _append(args: list[cst.Arg], new: cst.Arg) -> list[cst.Arg]:
    """Add a keyword argument last, in the call's own layout (one line, or one per line)."""
    if not args:
        return [new]
    last = args[-1]
    if last.comma is cst.MaybeSentinel.DEFAULT:
        comma = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
        return args[:-1] + [last.with_changes(comma=comma), new]
    between = args[-2].comma if len(args) > 1 else last.comma
    return args[:-1] + [last.with_changes(comma=between), new.with_changes(comma=last.comma)]
