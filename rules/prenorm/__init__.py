"""TFM201: post-norm residual sublayers -> pre-norm, with one final norm per stack.

The package holds the rule (here) and its private machinery: `residual` recognises post-norm
sublayers, `stacks` finds the stack a block belongs to, `prenorm_edit` writes the edits,
`builtin_layers` handles nn.Transformer* layers. It imports `tf_migrate.analysis`, `engine.rule` and `plan`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import libcst as cst

from tf_migrate.rules.prenorm import caller_residual
from tf_migrate.rules.prenorm.caller_residual import output_class
from tf_migrate.rules.prenorm.builtin_layers import (builtin_layers, builtin_transformers, stack_with_norm,
                                                     transformer_subclass_init, with_norm_first)
from tf_migrate.analysis.imports import reference
from tf_migrate.analysis.names import argument
from tf_migrate.plan import ClassPlan
from tf_migrate.rules.prenorm.prenorm_edit import final_norm, norm_keys, prenorm_replacements
from tf_migrate.rules.prenorm.add_modules import add_module_refusal
from tf_migrate.rules.prenorm.flags import flag_finding
from tf_migrate.rules.prenorm.norm_names import project_norm_named
from tf_migrate.rules.prenorm.residual import FlagChosen, ResidualFinder, Sublayers, Unprovable
from tf_migrate.engine.rule import Component, Equivalence, Finding, Fix, Note, Refusal, Rule
from tf_migrate.rules.prenorm.layer_loop import layer_loop, own_list_norm
from tf_migrate.rules.prenorm.stacks import (CONTAINERS, Stack, StackRun, find_run, find_stacks,
                                             stream_read_in_loop)
from tf_migrate.rules.prenorm.tree import (aliased_params, chosen_block_problem, component, own_norm_of,
                                           own_norm_parameters, reads_before, side_by_side,
                                           stack_members)

_HINT = "rewrite by hand, or mark the class `# tf-migrate: skip[TFM201]`"
_FINE_TUNE = "fine-tune the migrated model before use: pre-norm computes a different function"


def _literal(expr, value: str) -> bool:
    return isinstance(expr, cst.Name) and expr.value == value


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

    Flags: when one attribute named for the norm position (`self.normalize_before`,
    `self.pre_norm`) decides every conditional norm, the block already offers pre-norm: a note
    says so. `--option prenorm.flags=flip` turns its default to True where `__init__` defines it
    (`normalize_before=False` -> `True`; a keyless plan; no final norm is added: the model's own
    flag-dependent final norm, if any, must follow). A pre-norm sublayer that is itself optional
    (`if memory is not None:` around it) is read as pre-norm.

    Refuses when: the residual or its branch is scaled (also in the statement binding it); a
    norm is applied under an `if` that is no such flag; a norm of a post-norm block is not
    part of a sublayer the rule can read (`+=` sums, a residual scaled in a temporary); an intermediate of the sublayer or the
    norm's output is read outside the residual stream; the norm is not the whole value of its
    statement; the residual comes in from the caller (BERT's `*Output` classes) and some caller
    does not pass its sublayer's own input (`caller_residual`); no stack holding the block is found, or its forward does not
    run the blocks in a plain loop; a built-in layer is not stacked in the same function; an
    `nn.Transformer` is given a custom encoder or decoder. An `nn.Transformer` (instance, or the
    `super().__init__` of a subclass) gets `norm_first=True`: it owns final norms, so no new key.
    """

    code = "TFM201"
    name = "prenorm"
    equivalence = Equivalence.COMPATIBLE
    summary = "post-norm residual sublayers -> pre-norm, plus one final norm per stack (fine-tune after)"
    # Norm: LayerNorm, RMSNorm and a project's own norm classes; ModuleList/Sequential: a stack
    # whose blocks are post-norm in another file gets its final norm here
    triggers = ("Norm", "Transformer", "ModuleList", "Sequential")
    options = {"flags": "keep"}
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

    def __init__(self, options=None) -> None:
        super().__init__(options)
        if self.settings["flags"] not in ("keep", "flip"):
            from tf_migrate.engine.run import UsageError

            raise UsageError(f"option prenorm.flags must be keep or flip, not {self.settings['flags']!r}")

    def census(self, ctx) -> Iterator[Component]:
        from tf_migrate.rules.prenorm.census import components

        return components(ctx, self.code)

    def check(self, ctx) -> Iterator[Finding]:
        blocks: dict[int, tuple] = {}  # block class -> (class, forward, sublayers)
        groups: dict[int, list] = {}  # stack statement -> [(block, stack, run)]
        refused: dict[int, int] = {}  # stack statement -> line of a block that was refused
        for cls in ctx.module_classes:
            yield from self._builtin(ctx, cls)
            forward = cls.methods.get("forward")
            if forward is None or ctx.suppressed(self.code, forward):
                continue
            added = add_module_refusal(ctx, cls, forward, ResidualFinder(ctx, cls, forward).is_norm)
            if added is not None:
                yield Refusal(added[0], f"{cls.qualname}: {added[1]}", _HINT)
                continue
            if output_class(ctx, cls) is not None:
                continue  # the residual comes from the caller: caller_residual decides (below)
            try:
                found = ResidualFinder(ctx, cls, forward).find()
            except FlagChosen as exc:
                yield flag_finding(ctx, cls, exc, self.code, flip=self.settings["flags"] == "flip")
                continue
            except Unprovable as exc:
                for stack in find_stacks(ctx, cls):
                    refused.setdefault(id(stack.statement), exc.line)
                yield Refusal(exc.line, f"{cls.qualname}: {exc.reason}", _HINT)
                continue
            for line in found.pre:
                yield Note(line, f"{cls.qualname}: residual sublayer is already pre-norm; left alone")
            if not found.post:
                continue
            loop = layer_loop(ctx, cls, forward, found.post)
            if isinstance(loop, str):
                yield Refusal(ctx.line(found.post[0].statement), f"{cls.qualname}: {loop}", _HINT)
                continue
            if loop is not None:
                yield from self._layer_loop(ctx, cls, forward, found, loop)
                continue
            stacks = find_stacks(ctx, cls)
            runs = [find_run(stack) for stack in stacks]
            try:
                aliases = self._aliases(ctx, cls, forward, found)
            except Unprovable as exc:
                yield Refusal(exc.line, f"{cls.qualname}: {exc.reason}", _HINT)
                continue
            if any(stack.fctx.project_key != ctx.project_key for stack in stacks):
                yield from self._across_files(ctx, cls, forward, found, aliases)
                continue
            parallel = next((stack for stack, run in zip(stacks, runs) if run is None and side_by_side(stack)), None)
            if parallel is not None:
                yield Refusal(ctx.line(found.post[0].statement), (
                    f"{cls.qualname} is post-norm, but `self.{parallel.attr}` of {parallel.cls.qualname} "
                    f"(line {ctx.line(parallel.statement)}) runs these blocks side by side, each on its own "
                    f"input (line {side_by_side(parallel)}), not one after another: there is no last block "
                    "whose output a final norm would close"), _HINT)
                continue
            collected = next(((stack, read) for stack, run in zip(stacks, runs)
                              if run is not None and (read := stream_read_in_loop(stack, run))), None)
            if collected is not None:
                stack, read = collected
                refused.setdefault(id(stack.statement), ctx.line(found.post[0].statement))
                yield Refusal(ctx.line(found.post[0].statement), (
                    f"{cls.qualname} is post-norm, but the loop over `self.{stack.attr}` of "
                    f"{stack.cls.qualname} also reads `{read.value}` after each block (line {ctx.line(read)}): "
                    "the last block's output is taken there, before the final norm could close it"), _HINT)
                continue
            unrun = next((stack for stack, run in zip(stacks, runs) if run is None), None)
            if unrun is not None:
                yield Refusal(ctx.line(found.post[0].statement), (
                    f"{cls.qualname} is post-norm, but its stack `self.{unrun.attr}` of {unrun.cls.qualname} "
                    f"(line {ctx.line(unrun.statement)}) is not run whole by one loop in forward that feeds "
                    "each block's output to the next as one stream, so the final norm cannot be placed"),
                    "run the blocks in one for loop: `x = block(x, ...)`")
                continue
            if not stacks or None in runs:
                yield Refusal(ctx.line(found.post[0].statement), (
                    f"{cls.qualname} is post-norm, but the stack of blocks that holds it (a "
                    "container of these blocks only, run whole by one loop in forward) was not "
                    "found, so the final norm cannot be placed"),
                    "build the blocks in an nn.ModuleList and run them in one for loop")
                continue
            chosen = next(((stack, problem) for stack in stacks if (problem := chosen_block_problem(
                ctx, stack, stack.path, found.post[-1].norm, self._analyse))), None)
            if chosen:
                refused.setdefault(id(chosen[0].statement), ctx.line(found.post[0].statement))
                yield Refusal(ctx.line(found.post[0].statement), f"{cls.qualname} is post-norm, but {chosen[1]}", _HINT)
                continue
            blocks[id(cls)] = (cls, forward, found, aliases)
            for stack, run in zip(stacks, runs):
                groups.setdefault(id(stack.statement), []).append((id(cls), stack, run))
        yield from self._rewrite(ctx, blocks, groups, refused)
        yield from self._stacks_of_other_files(ctx, groups)
        yield from caller_residual.findings(self, ctx)

    def _layer_loop(self, ctx, cls, forward, found, loop) -> Iterator[Finding]:
        """The model's own loop over parallel per-layer lists: sublayers rewritten in the loop,
        the final norm applied right after it (before the statement that follows the loop)."""
        body = forward.body.body
        position = next(i for i, statement in enumerate(body) if statement is loop.loop)
        if position + 1 >= len(body):
            yield Refusal(ctx.line(loop.loop), f"{cls.qualname}: nothing follows the loop over the "
                          "layers in forward: no place to apply the final norm", _HINT)
            return
        following = body[position + 1]
        stack = Stack(cls, loop.norm_list, loop.filled, "self", ctx)
        own, func, imports = None, None, []
        listed_own = own_list_norm(ctx, loop.norm)
        if listed_own is not None:
            own = listed_own
            _, func, imports = self._copy(ctx)
        replacements, keys, attr = final_norm(ctx, stack, StackRun(loop.loop, loop.variable), loop.norm,
                                              f"{loop.norm_list}[-1]", set(), func=func, own=own)
        apply = replacements.pop(loop.loop)
        replacements[following] = cst.FlattenSentinel([apply.nodes[1], following])
        yield Fix(ctx.line(found.post[0].statement),
                  f"{cls.qualname}: {len(found.post)} post-norm sublayer(s) in its loop over the layers "
                  "-> pre-norm; " + _FINE_TUNE, prenorm_replacements(ctx, forward, found.post))
        plan = ClassPlan(ctx.path, cls.qualname, [self.code], new=keys)
        yield Fix(ctx.line(following), f"{cls.qualname}: final norm `self.{attr}` after its loop over "
                  "the layers (new, initialised to identity)", replacements, plans=[plan], imports=imports)

    def _aliases(self, ctx, cls, forward, found) -> dict[int, list[str]]:
        """Per post-norm sublayer whose input is a parameter of forward: the other parameters
        a caller passes the same tensor (self-attention's k and v beside q)."""
        aliases: dict[int, list[str]] = {}
        finder = ResidualFinder(ctx, cls, forward)
        for post in found.post:
            name = post.inputs[0]
            origin = finder.origin(name.value, finder.flow.statement_of(name))
            if origin != ("param", name.value):
                continue
            params, problem = aliased_params(ctx, cls, forward, name.value)
            if problem:
                raise Unprovable(ctx.line(post.statement), f"the sublayer's callers cannot all be read ({problem})")
            first = min(ctx.line(n) for n in post.inputs)
            late = reads_before(ctx, forward, params, first)
            if late:
                raise Unprovable(ctx.line(post.statement), (
                    f"`{late}` is passed the same tensor as `{name.value}` by a caller but is read "
                    "before the sublayer input is: the normalised input cannot reach it"))
            if params:
                aliases[id(post)] = params
        return aliases

    def _analyse(self, fctx, cls):
        """(post-norm sublayers, None) or (None, why refused) for a class of any file of the tree."""
        def compute():
            forward = cls.methods.get("forward")
            if forward is None:
                return None, None
            where = os.path.relpath(fctx.path, fctx.project.root)
            try:
                found = ResidualFinder(fctx, cls, forward).find()
            except FlagChosen:
                return None, None
            except Unprovable as exc:
                return None, f"{exc.reason} ({where}, line {exc.line})"
            if found.post and not self._runs_on(fctx, forward):
                # its file's run would not rewrite it: the stack must not get a final norm either
                return None, f"{cls.qualname} ({where}) is post-norm but skipped there (a skip comment, or no trigger word)"
            return found, None
        return fctx.project.memo(("prenorm.analyse", fctx.project_key, cls.qualname), compute)

    def _runs_on(self, fctx, forward) -> bool:
        """Whether this rule's run over that file reaches this forward (the engine's trigger words,
        `skip-file`, and `# tf-migrate: skip` comments)."""
        from tf_migrate.engine import suppress

        return any(word in fctx.text for word in self.triggers) \
            and bool(suppress.without_skipped_file(fctx.text, [self])) and not fctx.suppressed(self.code, forward)

    def _across_files(self, ctx, cls, forward, found, aliases) -> Iterator[Finding]:
        """A sublayer stacked in another file: rewrite it here when its whole component (every
        stack holding it, every class of those stacks) can be migrated; the stack's own file adds
        the final norm, deciding from the same component."""
        problem, _ = component(ctx, [(ctx, cls)], self._analyse, find_stacks, find_run)
        if problem:
            yield Refusal(ctx.line(found.post[0].statement), (
                f"{cls.qualname} is post-norm, but its stack cannot be migrated whole: {problem}"), _HINT)
            return
        yield Fix(ctx.line(found.post[0].statement),
                  f"{cls.qualname}: {len(found.post)} post-norm sublayer(s) -> pre-norm (the final "
                  "norm goes after the stack that holds it); " + _FINE_TUNE,
                  prenorm_replacements(ctx, forward, found.post, aliases))

    def _stacks_of_other_files(self, ctx, groups) -> Iterator[Finding]:
        """Stacks of this file whose post-norm sublayers live in other files: the final norm."""
        taken: set[tuple[int, str]] = set()
        for cls in ctx.module_classes:
            for sub in cls.submodules.values():
                if sub.callee not in CONTAINERS or id(sub.statement) in groups:
                    continue
                stack = Stack(cls, sub.name, sub.statement, f"self.{sub.name}[-1]", ctx)
                start = [(mfctx, mcls) for _, mfctx, mcls in stack_members(ctx, stack)
                         if mfctx.project_key != ctx.project_key and (self._analyse(mfctx, mcls)[0] or Sublayers()).post]
                if not start:
                    continue
                problem, stacks = component(ctx, start, self._analyse, find_stacks, find_run)
                if problem:
                    yield Refusal(ctx.line(sub.statement), (
                        f"{cls.qualname}: the blocks of `self.{sub.name}` are post-norm in another "
                        f"file, but cannot be migrated whole: {problem}"), _HINT)
                    continue
                for held, members in stacks:
                    if held.fctx.project_key == ctx.project_key and held.cls.qualname == cls.qualname \
                            and held.attr == sub.name:
                        yield self._remote_final_norm(ctx, stack, members, taken)

    def _remote_final_norm(self, ctx, stack, members, taken) -> Fix:
        path, mfctx, mcls, found = [m for m in members if m[3] is not None and m[3].post][-1]
        norm = mcls.submodules[found.post[-1].norm].call
        callee = mfctx.names.callee(norm) or ""
        own, func, imports = self._own(ctx, mfctx, mcls, found.post[-1].norm)
        kind = project_norm_named(mfctx, mcls, found.post[-1].norm)
        if own is None:
            nn, needed = reference(ctx, "torch.nn", "nn")
            imports = [needed] if needed else []
            func = f"{nn}.{kind or callee.rsplit('.', 1)[-1]}"
        replacements, keys, attr = final_norm(ctx, stack, find_run(stack), norm, found.post[-1].norm,
                                              taken, norm_ctx=mfctx, path=path, func=func, own=own,
                                              callee=kind and f"torch.nn.{kind}")
        plan = ClassPlan(ctx.path, stack.cls.qualname, [self.code], new=keys)
        return Fix(ctx.line(find_run(stack).statement), f"{stack.cls.qualname}: final norm `self.{attr}` "
                   f"after the last block (new, initialised to identity); its blocks' sublayers "
                   f"({Path(mfctx.path).name}) become pre-norm", replacements, plans=[plan],
                   imports=imports)

    def _rewrite(self, ctx, blocks, groups, refused) -> Iterator[Finding]:
        """Whole stacks only: a block sharing a stack with a refused block is refused too."""
        poisoned: dict[int, int] = {}
        while True:
            before = len(poisoned)
            for key, members in groups.items():
                line = refused.get(key) or next(
                    (poisoned[b] for b, _, _ in members if b in poisoned), None)
                if line is not None:
                    refused[key] = line
                    poisoned.update({b: line for b, _, _ in members if b not in poisoned})
            if len(poisoned) == before:
                break
        for block, (cls, forward, found, aliases) in blocks.items():
            if block in poisoned:
                yield Refusal(ctx.line(found.post[0].statement), (
                    f"{cls.qualname} is post-norm, but a block of the same stack was refused "
                    f"(line {poisoned[block]}); a stack is migrated whole or not at all"), _HINT)
            else:
                yield Fix(ctx.line(found.post[0].statement),
                          f"{cls.qualname}: {len(found.post)} post-norm sublayer(s) -> pre-norm; "
                          + _FINE_TUNE, prenorm_replacements(ctx, forward, found.post, aliases))
        taken: set[tuple[int, str]] = set()
        for key, members in groups.items():
            if key not in refused:
                yield self._final_norm(ctx, blocks[members[-1][0]], *members[-1][1:], taken)

    def _final_norm(self, ctx, block, stack, run, taken) -> Fix:
        cls, _, found, _ = block
        norm = cls.submodules[found.post[-1].norm].call
        own, func, imports = self._own(ctx, ctx, cls, found.post[-1].norm)
        kind = project_norm_named(ctx, cls, found.post[-1].norm)
        if kind is not None and own is None:  # a project alias or factory: the torch class it builds
            nn, needed = reference(ctx, "torch.nn", "nn")
            func, imports = f"{nn}.{kind}", [needed] if needed else []
        replacements, keys, attr = final_norm(ctx, stack, run, norm, found.post[-1].norm, taken,
                                              func=func, own=own, callee=kind and f"torch.nn.{kind}")
        plan = ClassPlan(ctx.path, stack.cls.qualname, [self.code], new=keys)
        return Fix(ctx.line(run.statement), f"{stack.cls.qualname}: final norm `self.{attr}` after "
                   "the last block (new, initialised to identity)", replacements, plans=[plan], imports=imports)

    def _own(self, ctx, fctx, cls, norm_attr):
        """A project norm class: its parameters and `import copy` (the final norm is a deepcopy)."""
        found = own_norm_of(fctx, cls, norm_attr)
        if found is None:
            return None, None, []
        return (own_norm_parameters(*found), *self._copy(ctx)[1:])

    def _copy(self, ctx):
        name, needed = reference(ctx, "copy", "copy")
        if needed == ("copy", None, None):  # `copy` names something else here
            name, needed = reference(ctx, "copy", "copy_module")
        if needed == ("copy", None, "copy"):
            needed = ("copy", None, None)
        return None, f"{name}.deepcopy", [needed] if needed else []

    def _builtin(self, ctx, cls) -> Iterator[Finding]:
        for method in cls.methods.values():
            for layer in builtin_layers(ctx, method):
                yield from self._builtin_layer(ctx, cls, layer)
            for model in builtin_transformers(ctx, method):
                yield from self._builtin_transformer(ctx, cls, model)
        for model in transformer_subclass_init(ctx, cls):
            yield from self._builtin_transformer(ctx, cls, model)

    def _builtin_transformer(self, ctx, cls, model) -> Iterator[Finding]:
        line = ctx.line(model.call)
        if _literal(model.norm_first, "True"):
            yield Note(line, "nn.Transformer already has norm_first=True; left alone")
        elif model.norm_first is not None and not _literal(model.norm_first, "False"):
            yield Refusal(line, f"norm_first={ctx.code(model.norm_first)} is not a literal")
        elif model.custom is not None:
            yield Refusal(line, "nn.Transformer is given a custom encoder/decoder: norm_first does "
                          "not reach it", "migrate the custom encoder/decoder it is given")
        else:
            # Only the flag changes: its encoder and decoder already end in a norm of their own,
            # so the plan names the class and adds no key.
            plan = ClassPlan(ctx.path, cls.qualname, [self.code])
            yield Fix(line, "nn.Transformer -> norm_first=True; its encoder and decoder already end "
                      "in a final norm (no new key); " + _FINE_TUNE,
                      {model.call: with_norm_first(model.call)}, plans=[plan])

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
        new_layer = with_norm_first(layer.call)
        replacements = {layer.call: new_layer}
        plan = ClassPlan(ctx.path, cls.qualname, [self.code])  # keyless when the stack has its norm
        imports = []
        if argument(layer.stack, 2, "norm") is None:
            nn, needed = reference(ctx, "torch.nn", "nn")
            imports = [needed] if needed else []
            if any(a.value is layer.call for a in layer.stack.args):
                del replacements[layer.call]  # nested: the new stack call carries the new layer
            replacements[layer.stack] = stack_with_norm(ctx, layer, nn, new_layer)
            plan.new = norm_keys("LayerNorm", {}, f"{layer.stack_attr}.norm")
        stack_note = "final norm on its stack" if plan.new else "its stack already ends in a norm"
        yield Fix(line, f"built-in layer -> norm_first=True, {stack_note}; " + _FINE_TUNE,
                  replacements, plans=[plan], imports=imports)
