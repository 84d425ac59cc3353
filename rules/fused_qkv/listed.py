"""q/k/v held as elements 0-2 of a list of Linears (`clones(nn.Linear(d, d), 4)`, a comprehension),
of four whose element 3 is the output projection or of three, applied as
`q, k, v = [l(x).view(...) for l, x in zip(self.linears, (query, key, value))]` or index by index.

query/key/value are then parameters of forward: whether they are one tensor is decided by the
callers, so every call of every instance of the class is read (`callers`). The list becomes
`self.qkv` (elements 0-2 concatenated) and, of four, `self.out` (element 3 renamed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import libcst as cst

from tf_migrate.analysis.dataflow import binds, loads
from tf_migrate.analysis.helpers import bind_arguments
from tf_migrate.analysis.symbols import symbols_of
from tf_migrate.analysis.linear import linear_elements
from tf_migrate.analysis.names import int_value, self_attribute
from tf_migrate.analysis.nodes import find
from tf_migrate.engine.edits import replace_nodes
from tf_migrate.plan import ClassPlan, Concatenation
from tf_migrate.analysis.project.places import place, shown_path
from tf_migrate.rules.fused_qkv.projections import _inside, applied, different_inputs, same_input
from tf_migrate.rules.fused_qkv.qkv_split import Blocked, CrossCall, forward_edits, split_suffix

FUSED, OUT = "qkv", "out"
_WRAPPING_DEPTH = 3  # modules that pass q, k, v on to the attention, followed up to their callers


@dataclass
class ListedFusion:
    attribute: str
    replacements: dict
    plan: ClassPlan
    statement: cst.SimpleStatementLine


def listed_candidates(ctx, cls) -> list[str]:
    """Attributes built as a list of exactly four Linears, zipped or called by index in a method."""
    found = []
    for name in cls.submodules:
        listed = linear_elements(ctx, cls, name)
        if listed is not None and listed.count in (3, 4) and (_zip_uses(ctx, cls, name) or _indexed(ctx, cls, name, listed.count)):
            found.append(name)
    return found


def _zip_uses(ctx, cls, name: str) -> list[cst.Call]:
    return [ctx.parents.get(ctx.parents.get(ref)) for ref in cls.self_references(name)
            if isinstance(ctx.parents.get(ref), cst.Arg)
            and isinstance(ctx.parents.get(ctx.parents.get(ref)), cst.Call)
            and ctx.names.builtin(ctx.parents.get(ctx.parents.get(ref)).func) == "builtins.zip"]


def _indexed(ctx, cls, name: str, count: int) -> dict[int, list[cst.Call]]:
    """index -> the calls `self.<name>[index](...)` (negative indices counted from `count`)."""
    found: dict[int, list[cst.Call]] = {}
    for ref in cls.self_references(name):
        index = _call_index(ctx, ref)
        if index is not None:
            found.setdefault(index + count if -count <= index < 0 else index, []).append(ctx.parents.get(ctx.parents.get(ref)))
    return found


def listed_fusion(ctx, cls, attribute: str) -> ListedFusion:
    """The edits and plan fusing elements 0-2 of `self.<attribute>`; Blocked says why not."""
    sub = cls.submodules[attribute]
    if FUSED in cls.submodules or OUT in cls.submodules or any(
            next(cls.self_references(n), None) is not None or n in cls.methods for n in (FUSED, OUT)):
        raise Blocked(f"the class already has `{FUSED}` or `{OUT}`")
    listed = linear_elements(ctx, cls, attribute)
    if len({ctx.code(e.call) for e in listed.elements}) != 1:
        raise Blocked(f"the elements of `self.{attribute}` are built differently")
    with_out = listed.count == 4
    layer = listed.element(0)
    if not layer.linear_signature or layer.in_features is None or layer.out_features is None \
            or not _inside(ctx, layer.call, sub.statement):
        raise Blocked(f"the elements of `self.{attribute}` are not built in its statement as "
                      "`Linear(in, out[, bias])`")
    bias = "True" if layer.bias is None else ctx.code(layer.bias)
    if bias not in ("True", "False"):
        raise Blocked(f"bias={bias} is not a literal")
    init = cls.methods.get("__init__")
    for ref in cls.self_references(attribute):
        if _inside(ctx, ref, init) and not _inside(ctx, ref, sub.statement):
            raise Blocked(f"`self.{attribute}` is used in __init__ on line {ctx.line(ref)} besides its construction "
                          f"(an init over the elements would see a ({FUSED}) layer of another shape)")
    uses = [r for r in cls.self_references(attribute) if not _inside(ctx, r, init)]
    indexed = _indexed(ctx, cls, attribute, listed.count)
    zips = _zip_uses(ctx, cls, attribute)
    expected = len(zips) + sum(len(calls) for calls in indexed.values())
    shapes = ((1, [3]), (0, [0, 1, 2, 3])) if with_out else ((1, []), (0, [0, 1, 2]))
    if len(uses) != expected or (len(zips), sorted(indexed)) not in shapes \
            or any(len(indexed[i]) != 1 for i in range(3) if i in indexed):
        raise Blocked(f"`self.{attribute}` is not used exactly as q/k/v: "
                      + _unexpected_use(ctx, cls, attribute, uses, zips, indexed, listed.count))
    width = ctx.code(layer.out_features)
    split = split_suffix([width] * 3)
    if zips:
        replacements = _zip_edits(ctx, cls, attribute, zips[0], split)
    else:
        replacements = _index_edits(ctx, cls, attribute, [indexed[i][0] for i in range(3)], split)
    for call in indexed.get(3, []):
        if any(_inside(ctx, call, node) for node in replacements):
            raise Blocked(f"the output projection is applied where q, k or v are (line {ctx.line(call)})")
        replacements[call.func] = cst.parse_expression(f"self.{OUT}")
    func, in_code = ctx.code(layer.call.func), ctx.code(layer.in_features)
    bias_text = ", bias=False" if bias == "False" else ""
    three = f"3 * {width}" if isinstance(layer.out_features, (cst.Name, cst.Attribute, cst.Integer)) \
        else f"3 * ({width})"
    built = [cst.parse_statement(f"self.{FUSED} = {func}({in_code}, {three}{bias_text})"),
             cst.parse_statement(f"self.{OUT} = {func}({in_code}, {width}{bias_text})")][:2 if with_out else 1]
    built[0] = built[0].with_changes(leading_lines=sub.statement.leading_lines)
    replacements[sub.statement] = cst.FlattenSentinel(built)
    plan = ClassPlan(ctx.path, cls.qualname, [])
    for param in ["weight"] + (["bias"] if bias == "True" else []):
        plan.concatenated.append(Concatenation(f"{FUSED}.{param}", [f"{attribute}.{i}.{param}" for i in range(3)], 0))
        if with_out:
            plan.renamed[f"{attribute}.3.{param}"] = f"{OUT}.{param}"
    return ListedFusion(attribute, replacements, plan, sub.statement)


def _zip_edits(ctx, cls, attribute: str, zipped: cst.Call, split: str) -> dict:
    comprehension, inputs, projection = _comprehension(ctx, zipped, attribute)
    method = next(m for m in cls.methods.values() if _inside(ctx, comprehension, m))
    # `(x, x, x)` is one tuple display: one object, whatever x is
    if len(set(inputs)) == 1:
        source = inputs[0]
    else:
        source = _same_parameters(ctx, cls, method, [(name, comprehension) for name in inputs])
    fused = f"self.{FUSED}({source}){split}"
    statement = ctx.parents.get(ctx.parents.get(comprehension))
    assign = statement.body[0] if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 \
        else None
    targets = assign.targets[0].target if isinstance(assign, cst.Assign) and len(assign.targets) == 1 \
        and assign.value is comprehension else None
    names = [e.value.value for e in targets.elements if isinstance(e.value, cst.Name)] \
        if isinstance(targets, cst.Tuple) else []
    if len(set(names)) != 3 or any(loads(comprehension.elt, n) for n in names):
        return {comprehension: _rewritten(comprehension, projection, fused)}
    # `q, k, v = <fused>` then `q, k, v = [f(x) for x in (q, k, v)]`: torch.fx can unpack a
    # split but not iterate one, so the module stays symbolically traceable
    split_line = cst.parse_statement(f"{', '.join(names)} = {fused}").with_changes(
        leading_lines=statement.leading_lines)
    kept = replace_nodes(statement, {comprehension: _rewritten(comprehension, projection, f"({', '.join(names)})")})
    return {statement: cst.FlattenSentinel([split_line, kept.with_changes(leading_lines=[])])}


def _index_edits(ctx, cls, attribute: str, calls: list[cst.Call], split: str) -> dict:
    for index, call in enumerate(calls):
        if not (len(call.args) == 1 and call.args[0].keyword is None and not call.args[0].star
                and isinstance(call.args[0].value, cst.Name)):
            raise Blocked(f"`self.{attribute}[{index}]` is not called with one tensor name (line {ctx.line(call)})")
    apps = [applied(ctx, cls, f"{attribute}[{i}]", call, call.args[0].value) for i, call in enumerate(calls)]
    blocked = next((a for a in apps if isinstance(a, str)), None)
    if blocked is not None:
        raise Blocked(blocked)
    inputs = [a.input.value for a in apps]
    if len(set(inputs)) == 1:
        if not same_input(ctx, apps):
            raise Blocked(different_inputs(ctx, apps))
        source = inputs[0]
    else:
        if any(a.method is not apps[0].method for a in apps):
            raise Blocked("the three elements are applied in different methods")
        source = _same_parameters(ctx, cls, apps[0].method, [(a.input.value, a.call) for a in apps])
    return forward_edits(ctx, apps, f"self.{FUSED}({source}){split}")


def _unexpected_use(ctx, cls, attribute: str, uses, zips, indexed, count: int) -> str:
    """The one use of `self.<attribute>` that breaks the q/k/v shape (a single zip, or `[0]`, `[1]`,
    `[2]` (and `[3]` with four elements) called once each), at its line."""
    def said(node) -> str:
        code = " ".join(ctx.code(node).split())
        if len(code) > 60:
            code = f"{ctx.code(node.func)}(...)" if isinstance(node, cst.Call) else code[:57] + "..."
        return f"`{code}` (line {ctx.line(node)})"

    zipped = {id(z) for z in zips}
    other = next((r for r in uses if _call_index(ctx, r) is None
                  and id(ctx.parents.get(ctx.parents.get(r))) not in zipped), None)
    if other is not None:
        return f"{said(_enclosing_call(ctx, other))} uses it other than in a zip or an indexed call"
    if len(zips) > 1:
        return f"it is zipped twice, {said(zips[0])} and {said(zips[1])}"
    output = {count - 1} if count == 4 else set()
    if zips and set(indexed) - output:
        call = min((c for i, calls in indexed.items() if i not in output for c in calls), key=ctx.line)
        return f"it is zipped in {said(zips[0])} and indexed in {said(call)}"
    repeated = next((i for i in sorted(indexed) if len(indexed[i]) > 1), None)
    if repeated is not None:
        return (f"element {repeated} is called {len(indexed[repeated])} times, "
                + " and ".join(said(c) for c in indexed[repeated][:2]))
    missing = next((i for i in (sorted(output) if zips else range(count)) if i not in indexed), None)
    if missing is not None:
        return f"element {missing} of its {count} is never called"
    extra = next(i for i in sorted(indexed) if not 0 <= i < count)
    return f"{said(indexed[extra][0])} calls element {extra} of {count}"


def _enclosing_call(ctx, node) -> cst.CSTNode:
    """The call a use of the list sits in (`zip(self.linears, ...)`, `self.linears[2](h)`)."""
    current = ctx.parents.get(node)
    while current is not None and not isinstance(current, cst.Call):
        current = ctx.parents.get(current)
    return current or node


def _call_index(ctx, ref) -> int | None:
    """i for `self.linears[i](...)` with a literal i."""
    subscript = ctx.parents.get(ref)
    call = ctx.parents.get(subscript)
    if not (isinstance(subscript, cst.Subscript) and isinstance(call, cst.Call) and call.func is subscript
            and len(subscript.slice) == 1 and isinstance(subscript.slice[0].slice, cst.Index)):
        return None
    return int_value(subscript.slice[0].slice.value)


def _comprehension(ctx, zipped: cst.Call, attribute: str):
    """`[<elt using l(x) once> for l, x in zip(self.<attribute>, (a, b, c))]`: the comprehension,
    the names a, b, c and the projection call `l(x)`."""
    loop = ctx.parents.get(zipped)
    comprehension = ctx.parents.get(loop)
    shape = f"`[... l(x) ... for l, x in zip(self.{attribute}, (query, key, value))]`"
    if not (isinstance(loop, cst.CompFor) and loop.iter is zipped and isinstance(comprehension, (cst.ListComp,
            cst.GeneratorExp)) and loop.inner_for_in is None and not loop.ifs and loop.asynchronous is None):
        raise Blocked(f"`self.{attribute}` is zipped outside a comprehension {shape}")
    target = loop.target
    args = zipped.args
    if not (isinstance(target, cst.Tuple) and len(target.elements) == 2
            and all(isinstance(e.value, cst.Name) for e in target.elements)
            and len(args) == 2 and self_attribute(args[0].value) == attribute
            and isinstance(args[1].value, (cst.Tuple, cst.List)) and len(args[1].value.elements) == 3
            and all(isinstance(e.value, cst.Name) and not isinstance(e, cst.StarredElement)
                    for e in args[1].value.elements)):
        raise Blocked(f"the zip is not of the form {shape}")
    layer_name, tensor_name = (e.value.value for e in target.elements)
    calls = find(comprehension.elt, lambda n: isinstance(n, cst.Call) and isinstance(n.func, cst.Name)
                 and n.func.value == layer_name)
    if not (len(calls) == 1 and len(calls[0].args) == 1 and isinstance(calls[0].args[0].value, cst.Name)
            and calls[0].args[0].value.value == tensor_name and calls[0].args[0].keyword is None
            and not calls[0].args[0].star and len(loads(comprehension.elt, layer_name)) == 1
            and len(loads(comprehension.elt, tensor_name)) == 1):
        raise Blocked(f"the comprehension does more with `{layer_name}`/`{tensor_name}` than `{layer_name}"
                      f"({tensor_name})` once")
    return comprehension, [e.value.value for e in args[1].value.elements], calls[0]


def _rewritten(comprehension, projection: cst.Call, iterable: str):
    """`[f(l(x)) for l, x in zip(...)]` -> `[f(x) for x in <iterable>]`."""
    tensor = projection.args[0].value
    loop = comprehension.for_in.with_changes(target=tensor, iter=cst.parse_expression(iterable))
    return comprehension.with_changes(elt=replace_nodes(comprehension.elt, {projection: tensor}), for_in=loop)


def _same_parameters(ctx, cls, method: cst.FunctionDef, reads: list[tuple[str, cst.CSTNode]], depth: int = 0) -> str:
    """The first of three parameters of forward (each read, unchanged, by its node) that every call
    of every instance passes the same name for. Blocked (naming the call) otherwise. A call that
    passes on its own forward's parameters (`self.inner(q, k, v)` in a wrapping module) is
    decided by the callers of that module in turn."""
    inputs = [name for name, _ in reads]
    try:
        for name, node in reads:
            _still_the_parameter(ctx, method, name, node)
        rebound = None
    except Blocked as exc:  # raised after the callers: a call passing other tensors says more
        rebound = exc
    try:
        if method.name.value != "forward":
            raise Blocked(f"the projections are in `{method.name.value}`, not forward: its callers are not followed")
        params = [p.name.value for p in method.params.params]
        if any(name not in params for name in inputs) or method.params.posonly_params:
            raise Blocked(f"the names ({', '.join(inputs)}) are not all parameters of forward")
        positions = [params.index(name) - 1 for name in inputs]  # without self
        inner = find(cls.node, lambda n: self_attribute(n) == "forward" or (
            isinstance(n, cst.Call) and isinstance(n.func, cst.Name) and n.func.value == "self"))
        if inner:
            raise Blocked(f"`{ctx.code(inner[0])}` on line {ctx.line(inner[0])} calls forward from inside the class")
        try:
            calls = callers(ctx, cls)
        except Blocked:
            if rebound is not None:
                raise rebound
            raise
        if not calls and rebound is not None:
            raise rebound
        if not calls:
            raise Blocked(f"no call of a `{cls.node.name.value}` in the tree: its callers decide whether "
                          f"{', '.join(inputs)} are one tensor")
        for fctx, call in calls:
            passed = [_argument(call, position, name) for position, name in zip(positions, inputs)]
            if not all(isinstance(p, cst.Name) for p in passed) or len({p.value for p in passed}) != 1:
                through = _passed_through(fctx, call, passed) if depth < _WRAPPING_DEPTH else None
                if through is not None:
                    try:
                        _same_parameters(fctx, *through, [(p.value, call) for p in passed], depth + 1)
                        continue
                    except CrossCall:
                        raise
                    except Blocked:
                        pass  # the outer callers cannot be followed: this call is the nearest evidence
                raise CrossCall(f"`{' '.join(fctx.code(call).split())}` on {place(ctx, fctx, call)} passes "
                              f"{', '.join(fctx.code(p) if p is not None else '?' for p in passed)} as "
                              f"{', '.join(inputs)}: cross-attention, not one tensor")
        if rebound is not None:
            raise rebound
        return inputs[0]
    finally:
        rebound = None  # the error's traceback holds this frame: a local naming it is a cycle


def _passed_through(fctx, call: cst.Call, passed: list) -> tuple | None:
    """(owner class, its forward) when `call` sits in a module's forward and passes names that
    are all parameters of that forward: the owner's callers decide what they are."""
    if not all(isinstance(p, cst.Name) for p in passed):
        return None
    method = fctx.parents.get(call)
    while method is not None and not isinstance(method, cst.FunctionDef):
        method = fctx.parents.get(method)
    owner = next((c for c in fctx.module_classes if method is not None and c.methods.get("forward") is method), None)
    params = {p.name.value for p in method.params.params} if method is not None else set()
    if owner is None or not all(p.value in params for p in passed):
        return None
    try:
        for p in passed:
            _still_the_parameter(fctx, method, p.value, call)
    except Blocked:
        return None  # `x = x + ...` before the call: not what the module's caller passed
    return owner, method


def passed_as_one(ctx, cls, apps) -> bool:
    """The three projections read different parameters of forward (`forward(self, q, k, v)`) that
    every call of every instance in the tree passes one name for (`self.attn(x, x, x)`): then they
    are one tensor. False when the inputs are not such names; Blocked naming the call that
    passes different tensors (cross-attention), or why the callers cannot be followed."""
    if any(isinstance(a, str) or not isinstance(a.input, cst.Name) for a in apps) \
            or len({a.input.value for a in apps}) == 1 or any(a.method is not apps[0].method for a in apps):
        return False
    params = [p.name.value for p in apps[0].method.params.params]
    if any(a.input.value not in params for a in apps):
        return False
    return _same_parameters(ctx, cls, apps[0].method, [(a.input.value, a.call) for a in apps]) == apps[0].input.value


def _still_the_parameter(ctx, method: cst.FunctionDef, name: str, node: cst.CSTNode) -> None:
    """`node` reads parameter `name` as the caller passed it: its statement is at the top of the
    method (no loop brings a later binding back) and nothing before it, nor `node`, binds the name.
    The statement may rebind it after reading (`query, key, value = [... zip(..., (query, ...))]`)."""
    body = list(method.body.body)
    statement = next((s for s in body if _inside(ctx, node, s)), None)
    if statement is not None and not isinstance(statement, cst.SimpleStatementLine):
        raise Blocked(f"`{name}` is projected inside a block of {method.name.value} (line {ctx.line(node)}: "
                      f"`{' '.join(ctx.code(statement).split())[:60]}...`), not on every path: the block may "
                      "bind it another way (a cache of keys and values)")
    if statement is None or binds(node, name):
        raise Blocked(f"`{name}` is bound by the projection's own expression on line {ctx.line(node)}: "
                      "it may not be what the caller passed")
    earlier = next((s for s in body[:body.index(statement)] if binds(s, name)), None)
    if earlier is not None:
        raise Blocked(f"`{name}` is rebound in {method.name.value} on line {ctx.line(earlier)} "
                      f"(`{' '.join(ctx.code(earlier).split())[:60]}`) before it is projected on line "
                      f"{ctx.line(node)}: it may not be what the caller passed")


def _old_style_super(ctx, cls, node: cst.Name) -> bool:
    """`super(Cls, self)` inside the class itself."""
    arg, call = ctx.parents.get(node), ctx.parents.get(ctx.parents.get(node))
    return isinstance(arg, cst.Arg) and isinstance(call, cst.Call) and isinstance(call.func, cst.Name) \
        and call.func.value == "super" and call.args[0] is arg and _inside(ctx, call, cls.node)


def _argument(call: cst.Call, position: int, name: str) -> cst.BaseExpression | None:
    if any(a.star for a in call.args):
        return None
    positional = [a for a in call.args if a.keyword is None]
    if position < len(positional):
        return positional[position].value
    return next((a.value for a in call.args if a.keyword is not None and a.keyword.value == name), None)


def callers(ctx, cls) -> list[tuple[object, cst.Call]]:
    """Every call of an instance of `cls`, with the context of its file: each instance is built as
    `self.<holder> = Cls(...)` in an `__init__` (of this file or one that imports the class by its
    name) and only called through `self.<holder>(...)` in its class. Blocked when an instance is
    built or reached any other way."""
    name = cls.node.name.value
    word = re.compile(rf"\b{re.escape(name)}\b")
    holders = _holders(ctx, cls, name, word, ctx)
    for path in sorted(ctx.project.files):
        text = ctx.project.text(path)
        if path != ctx.project_key and text is not None and word.search(text):
            other = ctx.project.context(path)
            if other is None:
                raise Blocked(f"`{name}` is named in {shown_path(ctx.project, path)}, which cannot be read")
            if _own_class_of_that_name(other, name):
                continue
            holders += _holders(other, None, name, word, ctx)
    found = []
    for fctx, owner, holder in holders:
        for ref in owner.self_references(holder):
            parent = fctx.parents.get(ref)
            if isinstance(parent, cst.Call) and parent.func is ref:
                found.append((fctx, parent))
            elif isinstance(parent, cst.Attribute) and parent.attr.value == "forward" \
                    and isinstance(fctx.parents.get(parent), cst.Call) and fctx.parents.get(parent).func is parent:
                found.append((fctx, fctx.parents.get(parent)))  # `self.attention.forward(x, x, x)`: the same arguments
            elif not (isinstance(parent, cst.AssignTarget) and _inside(fctx, ref, _holding_statement(owner, holder))):
                raise Blocked(f"`self.{holder}` on {place(ctx, fctx, ref)} is used other than called")
        owners = [o.node for _, o, h in holders if h == holder]
        contexts = {f.project_key: f for f, _, h in holders if h == holder}
        for reference in ctx.project.references(holder):
            if reference.kind == "attribute" and reference.path not in contexts:
                contexts[reference.path] = ctx if reference.path == ctx.project_key else ctx.project.context(
                    reference.path)
        for key, other in contexts.items():
            if other is None:
                raise Blocked(f"`.{holder}` is reached in {key}, which cannot be read")
            _reached_only_by_owners(ctx, other, holder, owners)
    return found


def _own_class_of_that_name(fctx, name: str) -> bool:
    """The file defines its own module-level class `name` and reaches no other one: neither
    imports a `name` nor reads `<module>.name`, so its `name(...)` calls build its own class."""
    defines = any(isinstance(s, cst.ClassDef) and s.name.value == name for s in fctx.module.body)
    imported = find(fctx.module, lambda n: isinstance(n, cst.ImportAlias) and (
        (n.asname.name.value if n.asname is not None and isinstance(n.asname.name, cst.Name) else None) == name
        or fctx.code(n.name).rsplit(".", 1)[-1] == name))
    starred = find(fctx.module, lambda n: isinstance(n, cst.ImportFrom) and isinstance(n.names, cst.ImportStar))
    return defines and not imported and not starred and not fctx.index.attributes(fctx.module, name)


def _reached_only_by_owners(ctx, fctx, holder: str, owners: list[cst.ClassDef]) -> None:
    """Every `.<holder>` in the file is `self.<holder>` in an owner, or in another class that does
    not derive (by name) from an owner: its own attribute of that name."""
    names = {o.name.value for o in owners}
    for node in find(fctx.module, lambda n: isinstance(n, cst.Attribute) and n.attr.value == holder):
        owner = fctx.parents.get(node)
        while owner is not None and not isinstance(owner, cst.ClassDef):
            owner = fctx.parents.get(owner)
        if self_attribute(node) == holder and owner is not None and (any(owner is o for o in owners) or not any(
                isinstance(b.value, cst.Name) and b.value.value in names for b in owner.bases)):
            continue
        raise Blocked(f"`{fctx.code(node)}` on {place(ctx, fctx, node)} reaches an instance from outside "
                      "its holder")


def _holding_statement(owner, holder: str) -> cst.CSTNode | None:
    """Where `self.<holder>` is built (`= Cls(...)`) or stored (`= <constructor parameter>`)."""
    sub = owner.submodules.get(holder)
    if sub is not None:
        return sub.statement
    init = owner.methods.get("__init__")
    stores = [a for a in find(init, lambda n: isinstance(n, cst.Assign)) if len(a.targets) == 1
              and self_attribute(a.targets[0].target) == holder] if init is not None else []
    return stores[0] if len(stores) == 1 else None


def _handed_to_constructor(fctx, built: cst.Call, root) -> tuple | None:
    """(file context, class, attribute) when `built` is passed to the constructor of a project
    module class (`EncoderLayer(Cls(...), d)`) whose `__init__` stores that parameter, unchanged
    and only there, as `self.<attribute> = <parameter>`: the instance is then held, and called,
    as `self.<attribute>` of that class."""
    arg = fctx.parents.get(built)
    outer = fctx.parents.get(arg)
    if not (isinstance(arg, cst.Arg) and isinstance(outer, cst.Call) and arg.value is built and not arg.star):
        return None
    symbols = symbols_of(fctx, outer.func)
    if len(symbols) != 1 or symbols[0].kind != "class" or fctx.project.method(symbols[0], "__init__") is None:
        return None
    owner_symbol, init = fctx.project.method(symbols[0], "__init__")
    if owner_symbol != symbols[0]:
        return None  # the constructor is inherited: keep to classes that define it
    bound = bind_arguments(init, outer, bound_self=True)
    param = next((name for name, value in (bound or {}).items() if value is built), None)
    octx = root if owner_symbol.path == root.project_key else \
        fctx.project.context(owner_symbol.path) if owner_symbol.path else None
    owner = next((c for c in octx.module_classes if c.qualname == owner_symbol.qualname), None) if octx else None
    cinit = owner.methods.get("__init__") if owner is not None else None
    if param is None or cinit is None:
        return None
    stores = [a for a in find(cinit, lambda n: isinstance(n, cst.Assign)) if isinstance(a.value, cst.Name)
              and a.value.value == param]
    holder = self_attribute(stores[0].targets[0].target) if len(stores) == 1 and len(stores[0].targets) == 1 \
        else None
    if holder is None or len(loads(cinit.body, param)) != 1 or binds(cinit.body, param) \
            or _holding_statement(owner, holder) is not stores[0]:
        return None
    return octx, owner, holder


def _holders(fctx, cls, name: str, word, root) -> list:
    """(file context, owner class, attribute) for each `self.<attribute> = <name>(...)` in a module's
    `__init__` of one file; Blocked for any other mention of `name` there (a plain import aside)."""
    named = find(fctx.module, lambda n: isinstance(n, cst.SimpleString) and word.search(n.value))
    if named:
        raise Blocked(f"`{fctx.code(named[0])}` on {place(root, fctx, named[0])} names `{name}` in a string")
    holders = []
    for node in find(fctx.module, lambda n: isinstance(n, cst.Name) and n.value == name):
        parent = fctx.parents.get(node)
        if cls is not None and (parent is cls.node or _old_style_super(fctx, cls, node)):
            continue
        if cls is None and isinstance(parent, cst.ImportAlias) and parent.asname is None \
                and isinstance(fctx.parents.get(parent), cst.ImportFrom):
            continue  # `from .attention import Cls`: its uses in this file are read below
        statement = fctx.parents.get(fctx.parents.get(parent)) if isinstance(parent, cst.Call) else None
        assign = fctx.parents.get(parent) if isinstance(parent, cst.Call) else None
        holder = self_attribute(assign.targets[0].target) if isinstance(assign, cst.Assign) \
            and len(assign.targets) == 1 and assign.value is parent and parent.func is node else None
        owner = next((c for c in fctx.module_classes if c.submodules.get(holder or "") is not None
                      and c.submodules[holder].statement is statement), None)
        if owner is None and isinstance(parent, cst.Call) and parent.func is node:
            handed = _handed_to_constructor(fctx, parent, root)  # `EncoderLayer(Cls(...), ...)`
            if handed is not None:
                holders.append(handed)
                continue
        if owner is None:
            raise Blocked(f"`{name}` on {place(root, fctx, node)} is used other than as "
                          f"`self.<name> = {name}(...)` in a module's __init__: the calls of its instances are "
                          "not followed")
        holders.append((fctx, owner, holder))
    return holders
