"""Recognising separate query/key/value projections of one attention class.

Shared by the fusion rule and anything else that needs to know which attributes of a class are
its q, k and v projections, and where `forward` applies them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import libcst as cst

from tf_migrate.analysis.dataflow import FunctionFlow
from tf_migrate.analysis.string_refs import naming_strings

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass, Submodule

ROLES = ("q", "k", "v")
_LONG = {"query": "q", "key": "k", "value": "v", "q": "q", "k": "k", "v": "v",
         "queries": "q", "keys": "k", "values": "v", "qs": "q", "ks": "k", "vs": "v"}
_PLURAL = frozenset({"queries", "keys", "values", "qs", "ks", "vs"})
# `query`, `q_proj`, `w_q`, `linear_k`, `to_v`, `wq`, `k_lin`, and plurals (`tokeys`, `w_qs`): one
# role word with a shared affix.
_NAME = re.compile(r"^(?P<pre>(?:w|W|to|linear|lin|proj|conv)?_?)"
                   r"(?P<role>queries|query|keys|key|values|value|qs|ks|vs|q|k|v)"
                   r"(?P<post>(?:_?(?:projection|proj|lin|linear|net|layer))?)$")


@dataclass
class Triple:
    """Three attributes that play q, k and v, named alike (`query`/`key`/`value`, `q_proj`, ...)."""

    attributes: dict[str, str]  # role -> attribute name
    fused_name: str  # what the fused attribute is called: `qkv`, `qkv_proj`, `w_qkv`


def triples(names: list[str]) -> Iterator[Triple]:
    """Every complete q/k/v triple among attribute names, grouped by their shared affix (plural
    role words form their own triples: `keys` never pairs with `query`)."""
    groups: dict[tuple[str, str, bool], dict[str, str]] = {}
    for name in names:
        match = _NAME.match(name)
        if match:
            affix = (match["pre"], match["post"], match["role"] in _PLURAL)
            groups.setdefault(affix, {})[_LONG[match["role"]]] = name
    for (pre, post, _), roles in groups.items():
        if len(roles) == 3:
            yield Triple(roles, f"{pre}qkv{post}")


@dataclass
class Application:
    """`self.<attribute>(<input>)` (or `<input> @ self.<weight>` ...), the projection's one application."""

    call: cst.BaseExpression  # the call, or the whole product of a raw weight
    method: cst.FunctionDef
    statement: cst.BaseStatement
    input: cst.BaseExpression


def application(ctx: "FileContext", cls: "ModuleClass", attribute: str) -> Application | str:
    """Where forward applies a projection, or why that cannot be pinned down."""
    init = cls.methods.get("__init__")
    uses = [ref for ref in cls.self_references(attribute) if not _inside(ctx, ref, init)]
    if len(uses) != 1:
        return (f"`self.{attribute}` is used {len(uses)} times outside __init__ (fusion needs exactly one call)"
                + "".join(f"; line {ctx.line(u)}: `{_use_code(ctx, u)}`" for u in uses[:4]))
    call = ctx.parents.get(uses[0])
    if not (isinstance(call, cst.Call) and call.func is uses[0] and len(call.args) == 1
            and call.args[0].keyword is None and not call.args[0].star):
        return f"`self.{attribute}` is not called with one positional tensor"
    return applied(ctx, cls, attribute, call, call.args[0].value)


def _use_code(ctx: "FileContext", ref: cst.Attribute, limit: int = 70) -> str:
    """The expression a use of `self.<attribute>` sits in (`self.q.relprop(cam, **kwargs)`),
    shortened to `limit` characters."""
    node: cst.CSTNode = ref
    parent = ctx.parents.get(node)
    while isinstance(parent, (cst.Attribute, cst.Call, cst.Subscript)) and getattr(parent, "value", None) is node \
            or isinstance(parent, cst.Call) and parent.func is node:
        node, parent = parent, ctx.parents.get(parent)
    text = " ".join(ctx.code(node).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def applied(ctx: "FileContext", cls: "ModuleClass", attribute: str, node: cst.BaseExpression,
            input: cst.BaseExpression) -> Application | str:
    """`node` (a projection's application) with the method and statement it sits in."""
    method = next((m for m in cls.methods.values() if _inside(ctx, node, m)), None)
    if method is None:
        return f"`self.{attribute}` is applied outside a method"
    statement = FunctionFlow(ctx, method).statement_of(node)
    return Application(node, method, statement, input)


def _inside(ctx: "FileContext", node: cst.CSTNode, ancestor: cst.CSTNode | None) -> bool:
    current: cst.CSTNode | None = node
    while current is not None:
        if current is ancestor:
            return True
        current = ctx.parents.get(current)
    return False


def other_init_uses(ctx: "FileContext", cls: "ModuleClass", subs: list["Submodule"]) -> str | None:
    """`nn.init.zeros_(self.k.bias)` and the like in `__init__`: they would name a module that is gone."""
    init = cls.methods.get("__init__")
    for sub in subs:
        for ref in cls.self_references(sub.name):
            if _inside(ctx, ref, init) and not _inside(ctx, ref, sub.statement):
                return (f"`self.{sub.name}` is used in __init__ on line {ctx.line(ref)} besides its "
                        "construction (an init or a freeze of one projection)")
    return None


def linear_arguments(sub: "Submodule") -> dict[str, cst.BaseExpression] | None:
    """in/out/bias of `nn.Linear(in, out, bias=...)`; None when other arguments are passed."""
    names = ("in_features", "out_features", "bias")
    found: dict[str, cst.BaseExpression] = {}
    for position, arg in enumerate(sub.call.args):
        if arg.star:
            return None
        key = arg.keyword.value if arg.keyword is not None else (names[position] if position < 3 else None)
        if key not in names:
            return None
        found[key] = arg.value
    if "in_features" not in found or "out_features" not in found:
        return None
    return found


def different_inputs(ctx: "FileContext", apps: list[Application]) -> str | None:
    """Why the three applications are not provably of one tensor, naming the one construct at its
    line; None when they are."""
    if same_input(ctx, apps):
        return None
    return "the projections are not provably applied to the same tensor: " + _input_difference(ctx, apps)


def _input_difference(ctx: "FileContext", apps: list[Application]) -> str:
    """The first thing that keeps the inputs apart, in the order `same_input` checks them."""
    ordered = sorted(apps, key=lambda a: ctx.line(a.call))
    first = ordered[0]

    def said(a: Application) -> str:
        return f"`{_short(ctx, a.call)}` (line {ctx.line(a.call)})"

    other = next((a for a in ordered if a.method is not first.method), None)
    if other is not None:
        return (f"{said(first)} is in `{first.method.name.value}`, {said(other)} in "
                f"`{other.method.name.value}`")
    expression = next((a for a in ordered if not isinstance(a.input, cst.Name)), None)
    if expression is not None:
        return (f"{said(expression)} projects the expression `{_short(ctx, expression.input)}`, not a "
                "local name")
    other = next((a for a in ordered if a.input.value != first.input.value), None)
    if other is not None:
        return (f"{said(first)} reads `{first.input.value}`, {said(other)} reads `{other.input.value}`, "
                "another tensor")
    name = first.input.value
    flow = FunctionFlow(ctx, first.method)
    reaching = [flow.definition(name, a.statement) for a in ordered]
    for a, definition in zip(ordered[1:], reaching[1:]):
        if getattr(definition, "statement", None) is not getattr(reaching[0], "statement", None):
            statement = definition.statement if definition is not None else reaching[0].statement
            return (f"`{name}` is rebound on line {ctx.line(statement)} (`{_short(ctx, statement)}`) "
                    f"between {said(first)} and {said(a)}")
    compound = next((a for a in ordered if not isinstance(a.statement, cst.SimpleStatementLine)), None)
    if compound is not None:
        keyword = type(compound.statement).__name__.lower()
        return f"{said(compound)} is in the header of a `{keyword}` statement"
    last = ordered[-1]
    changed = flow.mutation_between(name, first.statement, last.statement)
    if changed is None:
        return f"the reads of `{name}` from {said(first)} to {said(last)} could not be followed"
    where = ctx.line(changed)
    before = [a for a in ordered if ctx.line(a.call) < where][-1]
    after = next(a for a in ordered if ctx.line(a.call) > where)
    return (f"`{name}` is changed in place on line {where} (`{_short(ctx, flow.statement_of(changed))}`) "
            f"between {said(before)} and {said(after)}")


def _short(ctx: "FileContext", node: cst.CSTNode, limit: int = 60) -> str:
    """A node's code on one line, cut to `limit` characters."""
    code = " ".join(ctx.code(node).split())
    return code if len(code) <= limit else code[:limit - 3] + "..."


def same_input(ctx: "FileContext", apps: list[Application]) -> bool:
    """All three calls read the same binding of the same local name, in one method."""
    first = apps[0]
    if not all(isinstance(a.input, cst.Name) and a.method is first.method for a in apps):
        return False
    if len({a.input.value for a in apps}) != 1:
        return False
    flow = FunctionFlow(ctx, first.method)
    reaching = {id(getattr(flow.definition(a.input.value, a.statement), "statement", None)) for a in apps}
    if len(reaching) != 1 or not all(isinstance(a.statement, cst.SimpleStatementLine) for a in apps):
        return False
    ordered = sorted((a.statement for a in apps), key=ctx.line)
    return flow.mutation_between(first.input.value, ordered[0], ordered[-1]) is None  # `x.mul_()` between



def foreign_attribute(ctx: "FileContext", cls, names: list[str]) -> str | None:
    """Why fusing would leave a reference dangling: another object's `.q`, or `self.q` in a
    subclass (which may replace or call it). None when only the class itself reaches them."""
    own = {id(ref) for name in names for ref in cls.self_references(name)}
    table = _attribute_owners(ctx)
    found = [entry for number, name in enumerate(names) for entry in _candidates(table, name, number, cls)]
    for _, node in sorted(found, key=lambda entry: entry[0]):  # first in the file
        if id(node) not in own and not _own_attribute_elsewhere(ctx, cls, node):
            return (f"`{ctx.code(node)}` on line {ctx.line(node)} reaches `{node.attr.value}` from "
                    "outside its class (a subclass or another object)")
    return None


def _candidates(table, name: str, number: int, cls) -> list[tuple[tuple[int, int, int], cst.Attribute]]:
    """The `.<name>` references that may reach it from outside `cls`, keyed by (line, position of
    `name` in the asked names, position in the file) as the scan ordered them: every one not
    spelled `self.<name>` inside a class, and `self.<name>` in a class naming `cls` as a base.
    (`self.<name>` anywhere else is the class's own or another class's own attribute.)"""
    loose, by_base = table.get(name, ((), {}))
    own_name = cls.node.name.value
    return [((line, number, at), node) for line, at, node in (*loose, *by_base.get(own_name, ()))]


def _attribute_owners(ctx: "FileContext") -> dict[str, tuple[list, dict[str, list]]]:
    """Attribute name -> its references `<expr>.<name>` (line, position in the file, node), split
    into those that are not `self.<name>` inside a class, and, by each plain-name base of the
    class, the `self.<name>` inside it: one walk up from every reference per file version, where
    `foreign_attribute` walked up from every reference of the file per class."""
    def build() -> dict[str, tuple[list, dict[str, list]]]:
        table: dict[str, tuple[list, dict[str, list]]] = {}
        for at, node in enumerate(ctx.index.of_type(ctx.module, (cst.Attribute,), True)):
            loose, by_base = table.setdefault(node.attr.value, ([], {}))
            entry = (ctx.line(node), at, node)
            owner = None
            if isinstance(node.value, cst.Name) and node.value.value == "self":
                owner = ctx.parents.get(node)
                while owner is not None and not isinstance(owner, cst.ClassDef):
                    owner = ctx.parents.get(owner)
            if owner is None:
                loose.append(entry)
                continue
            for base in {b.value.value for b in owner.bases if isinstance(b.value, cst.Name)}:
                by_base.setdefault(base, []).append(entry)
        return table

    return ctx.memo("fused_qkv.attribute_owners", build)


def naming_string(ctx: "FileContext", names: list[str]) -> str | None:
    """A string of the file naming a projection (a tensor-parallel plan, `get_submodule`, a LoRA
    target list, a state_dict key) would name nothing once the three are fused."""
    for node, name in naming_strings(ctx, names):
        return (f"the string {ctx.code(node)} on line {ctx.line(node)} names `{name}`, which the "
                "fusion removes")
    return None


def _own_attribute_elsewhere(ctx: "FileContext", cls, node: cst.Attribute) -> bool:
    """`self.w_q` inside another class that does not inherit from this one: its own attribute."""
    if not (isinstance(node.value, cst.Name) and node.value.value == "self"):
        return False
    owner = ctx.parents.get(node)
    while owner is not None and not isinstance(owner, cst.ClassDef):
        owner = ctx.parents.get(owner)
    if owner is None or owner is cls.node:
        return False
    return not any(isinstance(b.value, cst.Name) and b.value.value == cls.node.name.value for b in owner.bases)
