"""BERT-style output classes: the norm of a sublayer whose residual the caller passes in.

    class SelfOutput:  forward(h, input_tensor): return norm(drop(dense(h)) + input_tensor)
    class Attention:   forward(x): s = self.self(x); return self.output(s[0], x)

The output class cannot move its norm in front of the sublayer: the sublayer (`self.self`) runs
in the caller. So the caller does it. Every `self.output(a, r)` in the tree must pass as `r` the
very tensor `a` was computed from (the sublayer's own input); those reads of `r` become
`self.output.<norm>(r)` (the norm stays owned by the output class: checkpoint keys keep their
names), the output class returns `drop(dense(h)) + input_tensor`, and every stack of blocks that
holds such classes gets one final norm after its loop. Other inputs of the sublayer (the memory
of cross-attention) are not touched. Like `tree.py`, the decision is per whole-tree component:
every output class reachable through shared stacks, every caller of each, every stack holding
them; one problem anywhere refuses every file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import libcst as cst

from tf_migrate.analysis.dataflow import loads
from tf_migrate.analysis.imports import reference
from tf_migrate.analysis.names import self_attribute
from tf_migrate.analysis.nodes import find
from tf_migrate.engine.rule import Finding, Fix, Refusal
from tf_migrate.plan import ClassPlan
from tf_migrate.rules.prenorm.prenorm_edit import final_norm
from tf_migrate.rules.prenorm.residual import ResidualFinder, Unprovable, _Branch
from tf_migrate.rules.prenorm.loop_run import element_of, loop_run
from tf_migrate.rules.prenorm.stacks import CONTAINERS, Stack, StackRun, find_stacks
from tf_migrate.rules.prenorm.tree import (_MAX_COMPONENT, NORMS, aliased_params, holders, own_norm_of, own_norm_parameters,
                                           resolve_class, stack_members, submodule_classes)

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

_HINT = "rewrite by hand, or mark the class `# tf-migrate: skip[TFM201]`"
_FINE_TUNE = "fine-tune the migrated model before use: pre-norm computes a different function"
_TEMPORARIES = ("normed", "h_norm", "x_norm") + tuple(f"normed{i}" for i in range(1, 100))


@dataclass
class OutputClass:
    """`forward(h, r)` returning `norm(<h's projection> + r)`: `r` comes from the caller."""

    fctx: "FileContext"
    cls: "ModuleClass"
    forward: cst.FunctionDef
    norm: str  # self.<norm>
    call: cst.Call  # the norm applied in forward
    params: list[str]  # forward's parameters after self
    residual: str  # the parameter added before the norm


@dataclass
class CallSite:
    """`self.<sub>(a, r)` in a method of a holder: the reads of `r` that computed `a`."""

    fctx: "FileContext"
    holder: "ModuleClass"
    method: cst.FunctionDef
    sub: str
    norm: str
    inputs: list[cst.Name]
    residual: cst.Name
    origin: object


@dataclass
class StackEnd:
    stack: Stack
    run: StackRun
    path: str  # from the stack class to the output class whose norm the final norm copies
    output: OutputClass


@dataclass
class Component:
    outputs: list[OutputClass]
    calls: list[CallSite]
    stacks: list[StackEnd]


# -- recognising an output class -------------------------------------------------------------


class _Finder(ResidualFinder):
    """The residual analysis of one method, asked about one call's arguments."""

    def branch_inputs(self, expr: cst.BaseExpression, statement, name: str) -> list[cst.Name]:
        found = _Branch()
        self._expand(expr, statement, self.origin(name, statement), found)
        return found.inputs


def output_class(fctx: "FileContext", cls: "ModuleClass") -> OutputClass | None:
    """`cls` when its forward is `return norm(<projection of h> + r)` with `r` a parameter read
    nowhere else (also `h = norm(h + r); return h`)."""
    return fctx.project.memo(("prenorm.output_class", fctx.project_key, id(fctx.module), cls.qualname),
                             lambda: _output_class(fctx, cls))


def _output_class(fctx, cls) -> OutputClass | None:
    forward = cls.methods.get("forward")
    if forward is None or not isinstance(forward.body, cst.IndentedBlock):
        return None
    parameters = forward.params
    if parameters.star_arg not in (None, cst.MaybeSentinel.DEFAULT) or parameters.kwonly_params \
            or parameters.star_kwarg is not None or parameters.posonly_params:
        return None
    params = [p.name.value for p in parameters.params][1:]
    if len(params) != 2 or any(p.default is not None for p in parameters.params[1:]):
        return None
    finder = ResidualFinder(fctx, cls, forward)
    norms = find(forward, lambda n: isinstance(n, cst.Call) and (finder.is_norm(n.func) or _fallback_norm(fctx, cls, n.func)))
    if len(norms) != 1:
        return None
    call = norms[0]
    norm = self_attribute(call.func)
    if norm is None or len(call.args) != 1 or call.args[0].keyword or call.args[0].star:
        return None
    add = call.args[0].value
    if not (isinstance(add, cst.BinaryOperation) and isinstance(add.operator, cst.Add)):
        return None
    residual = next((side.value for side in (add.right, add.left)
                     if isinstance(side, cst.Name) and side.value in params), None)
    other = add.left if isinstance(add.right, cst.Name) and add.right.value == residual else add.right
    if residual is None or loads(other, residual) or len(loads(forward.body, residual)) != 1:
        return None
    if not _returned_whole(fctx, forward, call):
        return None
    return OutputClass(fctx, cls, forward, norm, call, params, residual)


def _returned_whole(fctx, forward: cst.FunctionDef, call: cst.Call) -> bool:
    """`return norm(...)` as forward's last statement, or `y = norm(...)` right before `return y`."""
    body = forward.body.body
    last = body[-1]
    if not (isinstance(last, cst.SimpleStatementLine) and len(last.body) == 1 and isinstance(last.body[0], cst.Return)):
        return False
    value = last.body[0].value
    if value is call:
        return True
    if not isinstance(value, cst.Name) or len(body) < 2:
        return False
    previous = body[-2]
    small = previous.body[0] if isinstance(previous, cst.SimpleStatementLine) and len(previous.body) == 1 else None
    return isinstance(small, cst.Assign) and len(small.targets) == 1 and small.value is call \
        and isinstance(small.targets[0].target, cst.Name) and small.targets[0].target.value == value.value


def _fallback_norm(fctx, cls, func: cst.BaseExpression) -> bool:
    """`self.x = N(...)` where the file binds `N` to `torch.nn.LayerNorm` in the fallback of a
    `try:` that imports a fused drop-in (`from apex... import FusedLayerNorm as N`)."""
    sub = cls.submodule_of(func)
    if sub is None or not isinstance(sub.call.func, cst.Name):
        return False
    name = sub.call.func.value
    for statement in fctx.module.body:
        if not isinstance(statement, cst.Try):
            continue
        imported = [alias for line in statement.body.body if isinstance(line, cst.SimpleStatementLine)
                    for small in line.body if isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar)
                    for alias in small.names if (alias.evaluated_alias or alias.evaluated_name) == name]
        fallback = [small for handler in statement.handlers for line in handler.body.body
                    if isinstance(line, cst.SimpleStatementLine) for small in line.body
                    if isinstance(small, cst.Assign) and any(isinstance(t.target, cst.Name) and t.target.value == name
                                                             for t in small.targets)]
        if imported and fallback and all(a.evaluated_name.endswith("LayerNorm") for a in imported) \
                and all(fctx.names.imported(small.value) in NORMS for small in fallback):
            return True
    return False


# -- the callers -----------------------------------------------------------------------------


def _calls_of(fctx, holder: "ModuleClass", sub) -> tuple[list[cst.Call], str | None]:
    """The calls `self.<sub>(...)` of the holder. Other attributes of it may be read or replaced
    (`self.output.dense = prune(self.output.dense)`); its norm, its forward, or the module itself
    passed anywhere make the callers unreadable."""
    calls, built = [], sub.statement
    for reference_ in holder.self_references(sub.name):
        parent = fctx.parents.get(reference_)
        if isinstance(parent, cst.Call) and parent.func is reference_:
            calls.append(parent)
            continue
        if isinstance(parent, cst.Attribute) and parent.value is reference_ \
                and parent.attr.value not in _CALLING and parent.attr.value not in _norm_names(fctx, sub):
            continue
        node = reference_
        while node is not None and node is not built:
            node = fctx.parents.get(node)
        if node is None:
            return [], (f"`self.{sub.name}` of {holder.qualname} ({_rel(fctx)}, line "
                        f"{fctx.line(reference_)}) is used other than called")
    return calls, None


_CALLING = ("forward", "__call__", "register_forward_hook", "register_forward_pre_hook")


def _norm_names(fctx, sub) -> set[str]:
    found = resolve_class(fctx, sub.call.func.value) if isinstance(sub.call.func, cst.Name) else None
    out = output_class(*found) if found is not None else None
    return {out.norm} if out is not None else set()


def _method_of(fctx, holder: "ModuleClass", node: cst.CSTNode) -> cst.FunctionDef | None:
    current = fctx.parents.get(node)
    while current is not None and not isinstance(current, cst.FunctionDef):
        current = fctx.parents.get(current)
    return current if current is not None and current in holder.methods.values() else None


def _call_site(fctx, holder, sub, call: cst.Call, out: OutputClass) -> tuple[CallSite | None, str | None]:
    where = f"`self.{sub.name}(...)` in {holder.qualname} ({_rel(fctx)}, line {fctx.line(call)})"
    method = _method_of(fctx, holder, call)
    if method is None:
        return None, f"{where} is not called from a method of the class"
    given: dict[str, cst.BaseExpression] = {}
    for position, arg in enumerate(call.args):
        if arg.star:
            return None, f"{where} unpacks its arguments"
        name = arg.keyword.value if arg.keyword else (out.params[position] if position < len(out.params) else None)
        if name not in out.params or name in given:
            return None, f"{where} does not pass the two arguments of {out.cls.qualname}.forward"
        given[name] = arg.value
    if set(given) != set(out.params):
        return None, f"{where} does not pass the two arguments of {out.cls.qualname}.forward"
    residual = given[out.residual]
    projected = given[next(p for p in out.params if p != out.residual)]
    if not isinstance(residual, cst.Name):
        return None, f"{where} passes `{fctx.code(residual)}` as the residual, not a name"
    finder = _Finder(fctx, holder, method)
    statement = finder.flow.statement_of(call)
    if not isinstance(statement, cst.SimpleStatementLine):
        return None, f"{where} is not in a simple statement"
    try:
        inputs = finder.branch_inputs(projected, statement, residual.value)
    except Unprovable as exc:
        return None, f"{where}: {exc.reason} (line {exc.line})"
    if not inputs:
        return None, (f"{where} adds `{residual.value}` as the residual, but its sublayer's output "
                      f"`{fctx.code(projected)}` is not computed from `{residual.value}`: the residual is not "
                      "the sublayer's own input")
    origin = finder.origin(residual.value, statement)
    block = fctx.parents.get(statement)
    for name in inputs:
        at = finder.flow.statement_of(name)
        if not isinstance(at, cst.SimpleStatementLine) or fctx.parents.get(at) is not block:
            return None, (f"{where}: the sublayer reads `{residual.value}` on line {fctx.line(name)}, in "
                          "another block than the call: the norm has no one place to go")
    problem = _aliases(fctx, holder, method, residual.value, origin, where)
    if problem:
        return None, problem
    return CallSite(fctx, holder, method, sub.name, out.norm, inputs, residual, origin), None


def _other_reads(sites: list[CallSite]) -> str | None:
    """A read of a stream, in a method calling output classes, that is neither a sublayer input
    nor a residual argument of one of those calls (`if`/`else` paths each calling one, included):
    it read the normalised stream before and would read the un-normalised one after."""
    fctx, holder, method = sites[0].fctx, sites[0].holder, sites[0].method
    finder = _Finder(fctx, holder, method)
    inside = {id(n) for site in sites for n in site.inputs + [site.residual]}
    for site in sites:
        for name in loads(method.body, site.residual.value):
            if id(name) not in inside and finder.origin(name.value, finder.flow.statement_of(name)) == site.origin:
                return (f"`{name.value}` in {holder.qualname}.{method.name.value} ({_rel(fctx)}) is read on line "
                        f"{fctx.line(name)} outside the sublayers and residuals of its output classes: it "
                        "would read the un-normalised stream")
    return None


def _aliases(fctx, holder, method, name: str, origin, where: str) -> str | None:
    """A parameter that some caller passes the very tensor it passes as the stream (the memory
    of an attention given `x` twice) would keep reading the un-normalised tensor: refuse."""
    if origin != ("param", name):
        return None
    if method.name.value != "forward":
        others = [p.name.value for p in method.params.params[1:] if p.name.value != name]
        return (f"{where}: `{method.name.value}` has other parameters ({', '.join(others)}) whose callers "
                "are not read") if others else None
    params, problem = aliased_params(fctx, holder, method, name)
    if problem:
        return f"{where}: the callers of {holder.qualname} cannot all be read ({problem})"
    if params:
        return (f"{where}: a caller passes the stream `{name}` also as `{params[0]}`: which of them "
                "the norm must reach is not decided here")
    return _stacked_aliases(fctx, holder, method, name, where)


# -- stacks --------------------------------------------------------------------------------


def _unheld(fctx, cls, chain: tuple[str, ...] = (), depth: int = 0) -> str | None:
    """A chain of holders from `cls` up that no stack holds: the class would become pre-norm
    there with no final norm after it."""
    chain = chain + (cls.qualname,)
    direct = find_stacks(fctx, cls, depth=3)
    held = holders(fctx, cls)
    if not direct and not held:
        return (f"{' in '.join(chain)} ({_rel(fctx)}) is not inside a stack of blocks: no final norm "
                "would follow it there")
    if depth >= 3:
        return None
    for hfctx, holder, _ in held:
        problem = _unheld(hfctx, holder, chain, depth + 1)
        if problem:
            return problem
    return None


def _stacked_aliases(fctx, holder, method, name: str, where: str) -> str | None:
    """The same question as `aliased_params`, asked of the loops that run `holder` as a block of a
    stack: `layer(x, x)` passes the stream as two parameters."""
    params = [p.name.value for p in method.params.params][1:]
    others = [p for p in params if p != name]
    for stack in find_stacks(fctx, holder, depth=3):
        run = loop_run(stack)
        element = element_of(run.statement, stack.attr) if run is not None and isinstance(run.statement, cst.For) else None
        if element is None:
            continue
        for node in loads(run.statement.body, element):
            call = stack.fctx.parents.get(node)
            if not (isinstance(call, cst.Call) and call.func is node):
                if others and any(loads(method.body, other) for other in others):
                    return (f"{where}: the blocks of `self.{stack.attr}` ({stack.cls.qualname}) are passed as "
                            f"`{stack.fctx.code(call if isinstance(call, cst.CSTNode) else node)}`, so which tensors "
                            f"reach {', '.join(others)} cannot be read")
                continue
            given: dict[str, str] = {}
            for position, arg in enumerate(call.args):
                key = arg.keyword.value if arg.keyword else (params[position] if position < len(params) and not arg.star else None)
                if key is not None and isinstance(arg.value, cst.Name):
                    given[key] = arg.value.value
            same = [p for p in others if name in given and given.get(p) == given[name]]
            if same:
                return (f"{where}: the loop of {stack.cls.qualname} ({_rel(stack.fctx)}, line "
                        f"{stack.fctx.line(call)}) passes the stream `{given[name]}` also as `{same[0]}`: which "
                        "of them the norm must reach is not decided here")
    return None


# -- the whole-tree component -----------------------------------------------------------------


def component(rule, fctx, cls) -> tuple[str | None, Component | None]:
    """The same answer from whichever output class it starts: memoised on its sorted members."""
    key = ("prenorm.caller_residual", fctx.project_key, cls.qualname)
    return fctx.project.memo(key, lambda: _component(rule, fctx, cls))


def _component(rule, start_fctx, start_cls) -> tuple[str | None, Component | None]:
    queue = [(start_fctx, start_cls)]
    seen: set[tuple[str, str]] = set()
    outputs, calls, ends = [], [], {}
    while queue:
        fctx, cls = queue.pop(0)
        key = (fctx.project_key, cls.qualname)
        if key in seen:
            continue
        seen.add(key)
        if len(seen) > _MAX_COMPONENT:
            return "too many classes share these stacks to read them all", None
        out = output_class(fctx, cls)
        if out is None:
            return f"{cls.qualname} ({_rel(fctx)}) is not an output class this rule reads", None
        if not rule._runs_on(fctx, out.forward):
            return f"{cls.qualname} ({_rel(fctx)}) is skipped there (a skip comment, or no trigger word)", None
        outputs.append(out)
        held = holders(fctx, cls)
        for hfctx, holder, sub in held:
            found, problem = _calls_of(hfctx, holder, sub)
            if problem:
                return problem, None
            for call in found:
                site, problem = _call_site(hfctx, holder, sub, call, out)
                if problem:
                    return problem, None
                if not rule._runs_on(hfctx, site.method):
                    return (f"{holder.qualname} ({_rel(hfctx)}) calls {cls.qualname} but is skipped there "
                            "(a skip comment, or no trigger word)"), None
                calls.append(site)
        problem = _unheld(fctx, cls)
        if problem:
            return problem, None
        for stack in find_stacks(fctx, cls):
            skey = (stack.fctx.project_key, stack.cls.qualname, stack.attr)
            if skey in ends:
                continue
            run = loop_run(stack)
            if run is None:
                return (f"the stack `self.{stack.attr}` of {stack.cls.qualname} ({_rel(stack.fctx)}, line "
                        f"{stack.fctx.line(stack.statement)}) is not run whole by one loop in forward, so the "
                        "final norm cannot be placed"), None
            if not rule._runs_on(stack.fctx, stack.cls.node):
                return f"{stack.cls.qualname} ({_rel(stack.fctx)}) holds the stack but is skipped there", None
            last = None
            listed = stack_members(stack.fctx, stack)
            members = {path: (mfctx, mcls) for path, mfctx, mcls in listed}
            for path, mfctx, mcls in listed:
                member = output_class(mfctx, mcls)
                if member is not None:
                    queue.append((mfctx, mcls))
                    if _unconditional(members, path):
                        last = (path, member)
                    continue
                found, problem = rule._analyse(mfctx, mcls)
                if problem:
                    return f"{mcls.qualname} in the same stack is refused: {problem}", None
                if found is not None and found.post:
                    return (f"{mcls.qualname} in the same stack normalises its own residuals: a stack "
                            "mixing both layouts is not migrated"), None
            if last is None:
                return (f"no output class is built unconditionally in every block of `self.{stack.attr}` "
                        f"({stack.cls.qualname}): the final norm has no norm to copy"), None
            ends[skey] = StackEnd(stack, run, last[0], last[1])
    methods: dict[int, list[CallSite]] = {}
    for site in calls:
        methods.setdefault(id(site.method), []).append(site)
    for sites in methods.values():
        problem = _other_reads(sites)
        if problem:
            return problem, None
    return None, Component(outputs, calls, list(ends.values()))


def _unconditional(members: dict[str, tuple], path: str) -> bool:
    """Every `self.<attr>` on the path from the block down is built at the top level of its
    class's `__init__` (not under `if config.add_cross_attention:`)."""
    while "." in path and not path.endswith("]"):
        parent, attr = path.rsplit(".", 1)
        if parent not in members:
            return False
        _, cls = members[parent]
        sub, init = cls.submodules.get(attr), cls.methods.get("__init__")
        if sub is None or init is None or members[parent][0].parents.get(sub.statement) is not init.body:
            return False
        path = parent
    return True


# -- the edits of one file --------------------------------------------------------------------


def findings(rule, ctx: "FileContext") -> Iterator[Finding]:
    """The fixes (or one refusal per output class) of this file's part of every component it
    takes part in: output classes here, callers here, stacks here."""
    done: set[tuple] = set()
    for fctx, seed in _seeds(ctx):
        problem, comp = component(rule, fctx, seed)
        if problem:
            out = output_class(fctx, seed)
            if fctx.project_key == ctx.project_key and not ctx.suppressed(rule.code, out.forward):
                yield Refusal(ctx.line(out.call), (
                    f"{seed.qualname}: post-norm `{ctx.code(out.call)}` adds `{out.residual}`, which the "
                    f"caller passes in; moving the norm to the callers' sublayer input is refused: {problem}"), _HINT)
            continue
        key = tuple(sorted((o.fctx.project_key, o.cls.qualname) for o in comp.outputs))
        if key not in done:
            done.add(key)
            yield from _fixes(rule, ctx, comp)


def _seeds(ctx) -> list[tuple["FileContext", "ModuleClass"]]:
    """Output classes this file defines, its classes build, or its stacks hold."""
    seeds: dict[tuple[str, str], tuple] = {}

    def add(fctx, cls):
        if output_class(fctx, cls) is not None:
            seeds.setdefault((fctx.project_key, cls.qualname), (fctx, cls))

    for cls in ctx.module_classes:
        add(ctx, cls)
        for _, sfctx, scls in submodule_classes(ctx, cls):
            add(sfctx, scls)
        for sub in cls.submodules.values():
            if sub.callee in CONTAINERS:
                for _, mfctx, mcls in stack_members(ctx, Stack(cls, sub.name, sub.statement, f"self.{sub.name}[-1]", ctx)):
                    add(mfctx, mcls)
    return list(seeds.values())


def _fixes(rule, ctx, comp: Component) -> Iterator[Finding]:
    """This file's edits, read again from this file's own tree (the component may have been
    computed, and memoised, from another file's run, over another parse of this file)."""
    here = ctx.project_key
    local = {cls.qualname: cls for cls in ctx.module_classes}
    for out in [output_class(ctx, local[o.cls.qualname]) for o in comp.outputs if o.fctx.project_key == here]:
        add = out.call.args[0].value
        yield Fix(ctx.line(out.call), (
            f"{out.cls.qualname}: post-norm `{ctx.code(out.call)}` with the residual passed in -> "
            f"`{ctx.code(add)}`; its callers normalise the sublayer input with `self.<...>.{out.norm}` "
            "(same keys) and each stack gets a final norm; " + _FINE_TUNE),
            {out.call: add.with_changes(lpar=(), rpar=())})
    by_method: dict[int, list[CallSite]] = {}
    reported: dict[int, int] = {}  # method -> line of an output class of this file it calls
    for holder, attr in sorted({(s.holder.qualname, s.sub) for s in comp.calls if s.fctx.project_key == here}):
        cls = local[holder]
        sub = cls.submodules[attr]
        home, out_cls = resolve_class(ctx, sub.call.func.value)
        out = output_class(home, out_cls)
        for call in _calls_of(ctx, cls, sub)[0]:
            site, _ = _call_site(ctx, cls, sub, call, out)
            by_method.setdefault(id(site.method), []).append(site)
            if home.project_key == here:
                reported.setdefault(id(site.method), home.line(out.call))
    for key, sites in by_method.items():
        yield _caller_fix(ctx, sites, reported.get(key))
    taken: set[tuple[int, str]] = set()
    for end in comp.stacks:
        if end.stack.fctx.project_key == here:
            cls = local[end.stack.cls.qualname]
            sub = cls.submodules[end.stack.attr]
            stack = Stack(cls, sub.name, sub.statement, f"self.{sub.name}[-1]", ctx)
            yield _final_norm_fix(rule, ctx, StackEnd(stack, loop_run(stack), end.path, end.output), taken)


def _caller_fix(ctx, sites: list[CallSite], line: int | None) -> Fix:
    """The reads of each stream that computed an output class's input become its norm: inline for
    one read, one temporary before the first of several. Reported on `line`, the norm of an output
    class of this file it calls (the edit is that class's migration), else where it reads."""
    method = sites[0].method
    used = {node.value for node in find(method, lambda n: isinstance(n, cst.Name))}
    free = iter(t for t in _TEMPORARIES if t not in used)
    swap: dict[cst.CSTNode, cst.BaseExpression] = {}
    before: dict[cst.CSTNode, list[cst.BaseStatement]] = {}
    touched: dict[int, cst.CSTNode] = {}
    for site in sites:
        norm = f"self.{site.sub}.{site.norm}"
        first = min(site.inputs, key=lambda n: (ctx.line(n), ctx.column(n)))
        if len(site.inputs) == 1:
            swap[first] = cst.parse_expression(f"{norm}({first.value})")
        else:
            temporary = next(free)
            for name in site.inputs:
                swap[name] = cst.Name(temporary)
            before.setdefault(_statement(ctx, first), []).append(
                cst.parse_statement(f"{temporary} = {norm}({first.value})\n"))
        for name in site.inputs:
            statement = _statement(ctx, name)
            touched[id(statement)] = statement
    replacements = {}
    for statement in touched.values():
        new = statement.visit(_Swap(swap))
        if statement in before:
            head, *rest = before[statement]
            new = cst.FlattenSentinel([head.with_changes(leading_lines=statement.leading_lines), *rest,
                                       new.with_changes(leading_lines=())])
        replacements[statement] = new
    holder = sites[0].holder.qualname
    names = ", ".join(sorted({f"`self.{s.sub}`" for s in sites}))
    first = ctx.line(min((n for s in sites for n in s.inputs), key=ctx.line))
    return Fix(line or first, (
        f"{holder}.{method.name.value} (line {first}): the sublayer input of {names} is normalised by "
        f"its output class's norm (pre-norm); the residual stays the un-normalised stream; " + _FINE_TUNE),
        replacements)


class _Swap(cst.CSTTransformer):
    def __init__(self, swap: dict) -> None:
        self.swap = swap

    def leave_Name(self, original, updated):
        return self.swap.get(original, updated)


def _statement(ctx, node: cst.CSTNode) -> cst.CSTNode:
    while not isinstance(node, cst.SimpleStatementLine):
        node = ctx.parents[node]
    return node


def _final_norm_fix(rule, ctx, end: StackEnd, taken) -> Fix:
    out = end.output
    construction = out.cls.submodules[out.norm].call
    own_found = own_norm_of(out.fctx, out.cls, out.norm)
    imports: list = []
    own = None
    if own_found is not None:
        own = own_norm_parameters(*own_found)
        _, func, imports = rule._copy(ctx)
    elif out.fctx.project_key == ctx.project_key:
        func = ctx.code(construction.func)
    else:
        callee = out.fctx.names.callee(construction) or ""
        if callee not in NORMS:
            func = None
        else:
            nn, needed = reference(ctx, "torch.nn", "nn")
            imports = [needed] if needed else []
            func = f"{nn}.{callee.rsplit('.', 1)[-1]}"
    if func is None:  # a norm name of another file: copy the last block's norm, as for own classes
        _, func, imports = rule._copy(ctx)
        own = [("weight", "ones"), ("bias", "zeros")]
    replacements, keys, attr = final_norm(ctx, end.stack, end.run, construction, out.norm, taken,
                                          norm_ctx=out.fctx, path=end.path, func=func, own=own)
    plan = ClassPlan(ctx.path, end.stack.cls.qualname, [rule.code], new=keys)
    return Fix(ctx.line(end.run.statement), (
        f"{end.stack.cls.qualname}: final norm `self.{attr}` after the loop over `self.{end.stack.attr}` "
        f"(new, initialised to identity); the output classes of its blocks ({Path(out.fctx.path).name}) "
        "become pre-norm"), replacements, plans=[plan], imports=imports)


def _rel(fctx) -> str:
    import os

    return os.path.relpath(fctx.path, fctx.project.root)
