"""TFM102: three projections of the same input -> one fused projection and a split.

The package holds the rule (here) and its private machinery: `projections` finds q/k/v triples,
`qkv_split` writes the fused projection and the split, `raw_qkv`/`raw_weights` handle raw
`nn.Parameter` triples, `fan_inits` checks initialisers. It imports `tf_migrate.analysis`, `engine.rule` and `plan`.
"""

from __future__ import annotations

import os
from typing import Iterator

from tf_migrate.rules.fused_qkv import fan_inits
from tf_migrate.analysis.contracts import consumers_of
from tf_migrate.analysis.linear import linear_construction, linear_wrapper
from tf_migrate.analysis.symbols import symbols_of
from tf_migrate.plan import ClassPlan, Concatenation
from tf_migrate.rules.fused_qkv.projections import (ROLES, Triple, application, different_inputs, foreign_attribute,
                                    linear_arguments, naming_string, other_init_uses, same_input, triples)
from tf_migrate.rules.fused_qkv.qkv_split import (Blocked, CrossCall, constructor_edits, forward_edits,
                                                 sizes_in_forward, split_suffix, total_size)
from tf_migrate.rules.fused_qkv.listed import listed_candidates, listed_fusion, passed_as_one
from tf_migrate.rules.fused_qkv.old_keys import old_key_reader
from tf_migrate.analysis.project.places import shown_root
from tf_migrate.rules.fused_qkv.raw_qkv import raw_fusion
from tf_migrate.rules.fused_qkv.unmatched import unmatched_refusals
from tf_migrate.engine.rule import Component, Equivalence, Finding, Fix, Refusal, Rule

_LINEAR = "torch.nn.Linear"
_PARAMETER = "torch.nn.Parameter"
_FAN_INITS = ("xavier", "kaiming")  # initialisers whose values depend on the weight's shape


class SeparateQkvToFused(Rule):
    """Fuse separate q, k and v projections of one tensor (`nn.Linear`s, or raw `nn.Parameter`
    weights applied with einsum/@/matmul/F.linear) into one projection and a split.

    Why: one (d -> dq + dk + dv) matmul instead of three small ones: fewer kernel launches and a
    better-shaped GEMM; it is also the layout modern code and checkpoints use.

    Also q/k/v as elements 0-2 of a list of equal Linears (`clones(nn.Linear(d, d), 4)`, a
    ModuleList comprehension of 3 or 4; element 3 the output projection), zipped with
    `(query, key, value)` or called by index: they become `self.qkv` (and `self.out`).

    Also projections built by a project wrapper that holds one nn.Linear and only applies it
    (`analysis.linear.linear_wrapper`): the fused projection is one wrapper, the keys go through
    it (`q_proj.inner.weight`); a shape-dependent init in the wrapper is named in the message.

    Also projections of three parameters of forward (`forward(self, q, k, v)`) when every call
    of every instance in the tree passes one name for the three (`self.attn(x, x, x)`); split
    sizes built from constructor arguments are read from the attributes that keep them
    (`self.n_head * self.d_k`).

    Safety: exact. Concatenating the weights along the output dimension and splitting the output
    in q, k, v order computes exactly the three projections. Applied only when the three take the
    same input size, agree on bias, and forward applies each exactly once, on the same binding of
    the same local name (so every caller passes the same tensor to all three). Raw weights must be
    applied by the same product (same einsum spec); the `nn.init` calls that initialised them are
    pointed at the slices of the stacked weight, so each slice keeps its distribution. A generic
    initialiser that reads the shape (`for p in model.parameters(): xavier_uniform_(p)`) would
    see the stacked weight: the fix then says that fresh models initialise differently.

    Checkpoint: `qkv.weight = cat([q.weight, k.weight, v.weight], dim=0)`, the same for biases;
    raw weights: `w_qkv = cat([w_q, w_k, w_v], dim=<the weight's output dim>)` (1 for
    `x @ w` and `"btd,de->bte"`, 0 for `F.linear`), raw biases `b_qkv = cat([b_q, b_k, b_v])`;
    the old keys disappear. Lists:
    `qkv.* = cat(linears.0/1/2.*)`, `linears.3.*` renamed `out.*`.

    Refuses when: the projections read different tensors (cross-attention, or a class used for
    both: a call passing different tensors is named, as for lists below); bias presence differs; `in_features` differ; a projection is used anywhere but one
    call; it is not an `nn.Linear` (GPT-2 `Conv1D` stores its weight transposed); code elsewhere in
    the tree hooks a projection, names it (a string, `getattr`, a LoRA target list, another object's
    attribute) or counts the state_dict keys; the split sizes
    cannot be read in the method; the names the split binds would clash; the input is changed in
    place between the applications (`x.mul_()`, `x[i] = ...`); `__init__` touches one projection
    after building it, or a subclass or another object in the file reaches it. Raw weights: any use but
    one product and `nn.init` calls (tied, returned, `.data` init, a key string, another
    object's attribute); products spelled differently; raw biases (`<product> + self.b_q`)
    on only some of the three, used elsewhere, not 1-D, named unlike `b_q/b_k/b_v`, or added where
    the output size is not last; a raw bias passed to F.linear (not fused yet); the
    weights differ in more than their output size. Lists: forward's query/key/value are three
    parameters and some call of an instance passes different names (naming that call), or no call
    is in the tree, or an instance is built or reached other than `self.<a> = Cls(...)` called as
    `self.<a>(...)`/`.forward(...)` (here or in a file importing the class); a parameter rebound
    before it is projected; `__init__` or any method uses the list other than so (an init loop).
    """

    code = "TFM102"
    name = "fused-qkv"
    equivalence = Equivalence.EXACT
    summary = "separate q/k/v projections (nn.Linear or raw nn.Parameter) of one input -> one and a split"
    triggers = ("Linear", "Parameter", "Conv1D")
    example_before = (
        "self.query = nn.Linear(d, d)\nself.key = nn.Linear(d, d)\nself.value = nn.Linear(d, d)\n"
        "...\nq = self.query(x)\nk = self.key(x)\nv = self.value(x)\n"
    )
    example_after = "self.qkv = nn.Linear(d, 3 * d)\n...\nq, k, v = self.qkv(x).split(self.d, dim=-1)\n"

    def census(self, ctx) -> Iterator[Component]:
        from tf_migrate.rules.fused_qkv.census import components

        return components(ctx, self.code)

    def check(self, ctx) -> Iterator[Finding]:
        lines: list[int] = []
        for finding in self._check(ctx):
            lines.append(finding.line)
            yield finding
        yield from unmatched_refusals(ctx, self.code, lines)

    def _check(self, ctx) -> Iterator[Finding]:
        for cls in ctx.module_classes:
            if ctx.suppressed(self.code, cls.node):
                continue
            for triple in triples(list(cls.submodules) + list(cls.crowded)):
                name = next((a for a in triple.attributes.values() if a in cls.crowded), None)
                if name is not None:
                    crowded = cls.crowded[name]
                    yield Refusal(ctx.line(crowded), f"q/k/v projections not fused: `self.{name}` is "
                                  f"assigned on line {ctx.line(crowded)}, shared with other statements (`;`)",
                                  "put each projection on its own line, then rerun")
                    continue
                yield from self._triple(ctx, cls, triple)
            for attribute in listed_candidates(ctx, cls):
                yield self._listed(ctx, cls, attribute)

    def _triple(self, ctx, cls, triple: Triple) -> Iterator[Finding]:
        subs = [cls.submodules[triple.attributes[r]] for r in ROLES]
        try:
            if triple.fused_name in cls.submodules or triple.fused_name in cls.methods \
                    or triple.fused_name in cls.buffers or next(cls.self_references(triple.fused_name), None):
                raise Blocked(f"the class already has `{triple.fused_name}`")
            consumer = _consumer(ctx, cls, triple) or old_key_reader(ctx, [triple.attributes[r] for r in ROLES])
            if consumer is not None:
                raise Blocked(consumer)
            raw = all(s.callee == _PARAMETER for s in subs)
            yield self._raw(ctx, cls, triple, subs) if raw else self._linear(ctx, cls, triple, subs)
        except Blocked as exc:
            yield Refusal(ctx.line(subs[0].statement), f"q/k/v projections not fused: {exc}",
                          "fuse by hand, or mark the class `# tf-migrate: skip[TFM102]`")

    def _listed(self, ctx, cls, attribute: str) -> Finding:
        statement = cls.submodules[attribute].statement
        try:
            reader = old_key_reader(ctx, [attribute])
            if reader is not None:
                raise Blocked(reader)
            fusion = listed_fusion(ctx, cls, attribute)
        except Blocked as exc:
            return Refusal(ctx.line(statement), f"q/k/v projections in `self.{attribute}` not fused: {exc}",
                           "fuse by hand, or mark the class `# tf-migrate: skip[TFM102]`")
        fusion.plan.rules.append(self.code)
        inits = fan_inits.generic_shape_inits(ctx, 0)
        message = f"{attribute}[0..2] -> fused `qkv` + split" + (f", {attribute}[3] -> `out`" if fusion.plan.renamed else "")
        return Fix(line=ctx.line(statement), message=message + (fan_inits.warning(ctx, inits) if inits else ""),
                   replacements=fusion.replacements, plans=[fusion.plan])

    def _linear(self, ctx, cls, triple, subs) -> Fix:
        apps = [application(ctx, cls, triple.attributes[r]) for r in ROLES]
        blocked = next((a for a in apps if isinstance(a, str)), None)
        one = False
        if blocked is None and not same_input(ctx, apps):
            try:
                one = passed_as_one(ctx, cls, apps)
            except CrossCall:
                raise  # a call passing other tensors as k and v says more than how the layers are built
            except Blocked as exc:
                blocked = str(exc)
            blocked = blocked or (None if one else different_inputs(ctx, apps))
        blocked = _constructor_problem(ctx, subs) or blocked
        blocked = blocked or other_init_uses(ctx, cls, subs)
        blocked = blocked or foreign_attribute(ctx, cls, [triple.attributes[r] for r in ROLES])
        blocked = blocked or naming_string(ctx, [triple.attributes[r] for r in ROLES])
        if blocked is not None:
            raise Blocked(blocked)
        return self._fix(ctx, cls, triple, subs, apps)

    def _raw(self, ctx, cls, triple, subs) -> Fix:
        fusion = raw_fusion(ctx, cls, triple, subs)
        plan = ClassPlan(ctx.path, cls.qualname, [self.code])
        plan.concatenated.append(Concatenation(triple.fused_name, [triple.attributes[r] for r in ROLES], fusion.dim))
        if fusion.biases is not None:  # 1-D, stacked like the weights' output sizes
            plan.concatenated.append(Concatenation(fusion.biases.fused_name, fusion.biases.names, 0))
        return self._made(ctx, triple, subs, fusion.replacements, plan, fusion.dim)

    def _fix(self, ctx, cls, triple, subs, apps) -> Fix:
        arguments = [_arguments(ctx, s) for s in subs]
        outs = [ctx.code(a["out_features"]) for a in arguments]
        bias = _bias_code(ctx, arguments[0])
        fused = f"self.{triple.fused_name}({ctx.code(apps[0].input)})"
        replacements = forward_edits(ctx, apps, fused + split_suffix(sizes_in_forward(ctx, cls, outs)))
        wrapper = linear_wrapper(ctx, subs[0].call)
        replacements.update(_init_edits(ctx, triple, subs, arguments[0], outs, bias, wrapper))
        plan = ClassPlan(ctx.path, cls.qualname, [self.code])
        params = ["weight"] + (["bias"] if bias != "False" else [])
        through = f".{wrapper.inner}" if wrapper is not None else ""  # `query_proj.linear.weight`
        for param in params:
            plan.concatenated.append(Concatenation(f"{triple.fused_name}{through}.{param}",
                                                   [f"{triple.attributes[r]}{through}.{param}" for r in ROLES], 0))
        return self._made(ctx, triple, subs, replacements, plan, 0, wrapper)  # nn.Linear weights are (out, in)

    def _made(self, ctx, triple, subs, replacements, plan, stacked_dim: int, wrapper=None) -> Fix:
        message = f"{', '.join(triple.attributes[r] for r in ROLES)} -> fused `{triple.fused_name}` + split"
        if wrapper is not None:
            message += f" (kept as the wrapper `{wrapper.qualname}`, keys through `.{wrapper.inner}`)"
            shaped = [name for name in wrapper.inits if name.startswith(_FAN_INITS)]
            if shaped:
                message += (f"; fresh models initialise differently: `{wrapper.qualname}` applies "
                            f"{', '.join(shaped)} to the fused weight, whose fans differ (converted checkpoints "
                            "are exact)")
        inits = fan_inits.generic_shape_inits(ctx, stacked_dim)
        return Fix(line=ctx.line(subs[0].statement), message=message + (fan_inits.warning(ctx, inits) if inits else ""),
                   replacements=replacements, plans=[plan])


def _constructor_problem(ctx, subs) -> str | None:
    layers = [s.callee == _LINEAR or linear_construction(ctx, s.call) or linear_wrapper(ctx, s.call) for s in subs]
    other = next((s for s, layer in zip(subs, layers) if not getattr(layer, "linear_signature", layer)), None)
    if other is not None:
        built = ctx.code(other.call.func)
        if (other.callee or built).rsplit(".", 1)[-1] == "Conv1D":
            return (f"`{other.name}` is a Conv1D (line {ctx.line(other.statement)}): its weight is stored "
                    "transposed (in, out), unlike nn.Linear")
        return _overriding_subclass(ctx, subs) or (
            f"`{other.name}` is built by `{built}(...)` (line {ctx.line(other.statement)}), which "
            "tf-migrate cannot show returns a plain nn.Linear")
    if len({ctx.code(s.call.func) for s in subs}) != 1:  # the fused layer is built with one of them
        return "the projections are built by different callables (" + \
            ", ".join(f"{s.name}: {ctx.code(s.call.func)}" for s in subs) + ")"
    arguments = [_arguments(ctx, s) for s in subs]
    if any(a is None for a in arguments):
        return "a projection passes arguments other than in_features, out_features, bias"
    ins = {ctx.code(a["in_features"]) for a in arguments}
    if len(ins) != 1:
        return f"in_features differ ({', '.join(sorted(ins))})"
    biases = [_bias_code(ctx, a) for a in arguments]
    if len(set(biases)) != 1:
        detail = ", ".join(f"{s.name} bias={b} (line {ctx.line(s.statement)})" for s, b in zip(subs, biases))
        return f"bias presence differs: {detail}"
    if biases[0] not in ("True", "False"):
        return f"bias={biases[0]} is not a literal; cannot tell whether the fused Linear has one"
    return None


def _consumer(ctx, cls, triple: Triple) -> str | None:
    """Code elsewhere in the tree that names a projection or counts the keys the fusion renames."""
    owner = ctx.project.class_symbol(ctx.source_path, cls.qualname)
    for role in ROLES:
        name = triple.attributes[role]
        found = consumers_of(ctx.project, owner, name, {"hook", "string", "key", "attribute"})
        if found:
            return f"`{name}` is used outside the class: {found[0].describe(shown_root(ctx.project, found[0].path))}"
    return None


def _overriding_subclass(ctx, subs) -> str | None:
    """Why a project subclass of nn.Linear is not one here: its forward or __init__ differs."""
    for sub in subs:
        for symbol in symbols_of(ctx, sub.call.func):
            if symbol.kind == "class" and ctx.project.derives_from(symbol, _LINEAR):
                changed = ctx.project.method(symbol, "forward") or ctx.project.method(symbol, "__init__")
                if changed is not None:
                    owner, method = changed
                    return (f"`{symbol.qualname}` derives from nn.Linear but defines its own {method.name} "
                            f"({os.path.basename(owner.path)}:{method.lineno})")
    return None


def _arguments(ctx, sub) -> dict | None:
    """in_features/out_features/bias of a projection's construction (nn.Linear or a wrapper)."""
    wrapper = linear_wrapper(ctx, sub.call)
    return wrapper.arguments(sub.call) if wrapper is not None else linear_arguments(sub)


def _bias_code(ctx, arguments) -> str:
    value = arguments.get("bias")
    return "True" if value is None else ctx.code(value)


def _init_edits(ctx, triple, subs, first_args, outs, bias, wrapper=None) -> dict:
    func = ctx.code(subs[0].call.func)
    bias_text = ", bias=False" if bias == "False" else ""
    if wrapper is not None:  # the wrapper's own bias parameter, or none when its bias is fixed
        bias_text = f", {wrapper.params[2]}={bias}" if len(wrapper.params) == 3 and (
            bias == "False" or wrapper.bias_default != "True") else ""
    text = f"self.{triple.fused_name} = {func}({ctx.code(first_args['in_features'])}, {total_size(outs)}{bias_text})"
    return constructor_edits(ctx, [s.statement for s in subs], text)
