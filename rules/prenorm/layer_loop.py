"""A model that is its own stack: parallel `nn.ModuleList`s of attentions, norms and FFNs, one
item per layer, run by `for i in range(...)` in forward with the norms indexed by the layer
(`x = self.norms_1[i](x + drop(self.attns[i](x, x, mask)))`). The final norm goes right after
that loop, built after the `__init__` statement that fills the last norm list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.names import self_attribute
from tf_migrate.analysis.nodes import find
from tf_migrate.rules.prenorm.tree import NORMS, own_norm_parameters, resolve_class

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

def listed_norm(ctx: "FileContext", cls: "ModuleClass", node: cst.CSTNode) -> cst.Call | None:
    """`self.<list>[i]` where `<list>` is an nn.ModuleList holding only norms of one kind (built
    by `.append(Norm(...))` in a loop, or from a list comprehension): the norm's constructor call."""
    if not (isinstance(node, cst.Subscript) and len(node.slice) == 1):
        return None
    name = self_attribute(node.value)
    sub = cls.submodules.get(name) if name else None
    if sub is None or sub.callee != "torch.nn.ModuleList":
        return None
    items = []
    if sub.call.args:
        value = sub.call.args[0].value
        if not isinstance(value, cst.ListComp) or len(sub.call.args) != 1:
            return None
        items.append(value.elt)
    for reference in cls.self_references(name):
        parent = ctx.parents.get(reference)
        if reference is node.value or _inside(ctx, reference, sub.statement):
            continue
        if isinstance(parent, cst.Attribute) and parent.attr.value == "append" \
                and isinstance(ctx.parents.get(parent), cst.Call) and len(ctx.parents[parent].args) == 1:
            items.append(ctx.parents[parent].args[0].value)
        elif isinstance(parent, cst.Attribute) and parent.attr.value in ("extend", "insert", "pop"):
            return None
    if not items or not all(isinstance(item, cst.Call) for item in items):
        return None
    kinds = {ctx.code(item.func) for item in items}
    if len(kinds) != 1 or not (ctx.names.callee(items[0]) in NORMS or own_list_norm(ctx, items[0]) is not None):
        return None
    return items[0]


def own_list_norm(ctx: "FileContext", call: cst.Call) -> list[tuple[str, str]] | None:
    if not isinstance(call.func, cst.Name):
        return None
    found = resolve_class(ctx, call.func.value)
    return own_norm_parameters(*found) if found is not None else None


def _inside(ctx, node, container) -> bool:
    while node is not None:
        if node is container:
            return True
        node = ctx.parents.get(node)
    return False


@dataclass
class LayerLoop:
    loop: cst.For  # the forward loop over the layers
    variable: str  # the stream the loop carries
    norm_list: str  # the last sublayer's norm list
    norm: cst.Call  # one item of it
    filled: cst.BaseStatement  # the top-level __init__ statement after which the lists are full


def layer_loop(ctx: "FileContext", cls: "ModuleClass", forward: cst.FunctionDef, posts) -> LayerLoop | str | None:
    """The loop when every post-norm sublayer's norm is `self.<list>[i]` inside one top-level
    `for i in range(...)` of forward; a reason when it is that shape but cannot take a final norm;
    None when the norms are not listed at all."""
    listed = [p for p in posts if isinstance(p.call.func, cst.Subscript)]
    if not listed:
        return None
    if len(listed) != len(posts):
        return "some norms are items of per-layer lists and some are not"
    loops = {id(_top_loop(ctx, forward, p.statement)): _top_loop(ctx, forward, p.statement) for p in posts}
    loop = next(iter(loops.values()))
    if len(loops) != 1 or loop is None or loop.orelse is not None or not _range_loop(loop):
        return "the per-layer norms are not all applied inside one `for i in range(...)` loop of forward"
    index = loop.target.value
    last = posts[-1]
    target = last.statement.body[0]
    if not (isinstance(target, cst.Assign) and isinstance(target.targets[0].target, cst.Name)):
        return "the last norm of the loop is not assigned to the stream"
    for post in posts:
        subscript = post.call.func
        if not (isinstance(subscript.slice[0].slice, cst.Index)
                and isinstance(subscript.slice[0].slice.value, cst.Name)
                and subscript.slice[0].slice.value.value == index):
            return f"the norm `{ctx.code(subscript)}` is not indexed by the loop variable `{index}`"
    lists = {self_attribute(p.call.func.value) for p in posts}
    for name in lists:
        if len(find(forward, lambda node: self_attribute(node) == name)) != 1:
            return f"`self.{name}` is read more than once in forward: the loop is not the whole stack"
    norm_list = self_attribute(last.call.func.value)
    init = cls.methods.get("__init__")
    filled = _last_top_statement(ctx, init, norm_list) if init is not None else None
    if filled is None:
        return f"`self.{norm_list}` is not filled by a statement of __init__'s own body"
    return LayerLoop(loop, target.targets[0].target.value, norm_list, listed_norm(ctx, cls, last.call.func), filled)


def _top_loop(ctx, forward: cst.FunctionDef, statement) -> cst.For | None:
    node = statement
    while node is not None and node is not forward:
        parent = ctx.parents.get(node)
        if isinstance(node, cst.For) and isinstance(parent, cst.IndentedBlock) and ctx.parents.get(parent) is forward:
            return node
        node = parent
    return None


def _range_loop(loop: cst.For) -> bool:
    return isinstance(loop.target, cst.Name) and isinstance(loop.iter, cst.Call) \
        and isinstance(loop.iter.func, cst.Name) and loop.iter.func.value == "range"


def _last_top_statement(ctx, init: cst.FunctionDef, name: str) -> cst.BaseStatement | None:
    if not isinstance(init.body, cst.IndentedBlock):
        return None
    found = None
    for statement in init.body.body:
        if find(statement, lambda node: self_attribute(node) == name):
            found = statement
    return found
