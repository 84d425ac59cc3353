"""Where a block class is stacked: the model class whose `nn.ModuleList` / `nn.Sequential` holds
its instances (directly, or through a holder such as a layer class that owns the block), and
where that model's forward runs the stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.dataflow import loads
from tf_migrate.analysis.names import argument, self_attribute
from tf_migrate.analysis.nodes import cached, find, find_types, walk
from tf_migrate.rules.prenorm.tree import files_naming, holders, names_class

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

CONTAINERS = ("torch.nn.ModuleList", "torch.nn.Sequential")


@dataclass
class Stack:
    cls: "ModuleClass"
    attr: str  # self.<attr> holds the blocks
    statement: cst.SimpleStatementLine  # the __init__ statement that builds the stack
    path: str  # from the stack class to one block instance: "self.layers[-1].ff"
    fctx: "FileContext | None" = None  # the file of the stack class


def find_stacks(ctx: "FileContext", block: "ModuleClass", depth: int = 0) -> list[Stack]:
    """Every stack holding instances of `block` (an encoder and a decoder may share a layer), in
    this file or, through imports, in another file of the tree (then `fctx` names that file)."""
    name = block.node.name.value
    found = [Stack(cls, sub.name, sub.statement, f"self.{sub.name}[-1]", ctx)
             for cls, sub in _containers_naming(ctx).get(name, ())
             if _stacks(ctx, cls, sub.call, name) and not _changed_later(ctx, cls, sub)]
    for other in files_naming(ctx, name):
        if names_class(other, name, ctx, block):
            found += [Stack(cls, sub.name, sub.statement, f"self.{sub.name}[-1]", other)
                      for cls, sub in _containers_naming(other).get(name, ())
                      if _stacks(other, cls, sub.call, name) and not _changed_later(other, cls, sub)]
    if depth >= 3:
        return found
    for fctx, cls, sub in holders(ctx, block):
        found.extend(Stack(outer.cls, outer.attr, outer.statement, f"{outer.path}.{sub.name}", outer.fctx)
                     for outer in find_stacks(fctx, cls, depth + 1))
    return found


def _stacks(ctx, cls: "ModuleClass", container: cst.Call, name: str) -> bool:
    """The container is built from instances of `name` only, or from an __init__ parameter that
    the file fills with them (`Encoder([EncoderLayer(...) for _ in range(n)])`): with anything
    else in it (`nn.Sequential(*blocks, nn.Linear(d, n_out))`) its last item is not a block."""
    choices = class_choices(cls)
    return bool(container.args) and all(
        _instances_of(arg.value, name, choices) or _filled_with(ctx, cls, arg.value, name)
        or _appended_locally(ctx, cls, container, arg, name)
        for arg in container.args)


def block_names(ctx: "FileContext", cls: "ModuleClass", container: cst.Call) -> list[str]:
    """The block class names this container stacks, exactly those `_stacks` accepts: every
    called name near the container (its arguments, `__init__`, calls of the class) is tried."""
    return sorted(name for name in _tried_names(ctx, cls, container) if _stacks(ctx, cls, container, name))


def _tried_names(ctx: "FileContext", cls: "ModuleClass", container: cst.Call) -> set[str]:
    """Every name `_stacks` can accept for this container: each of its ways to accept a name needs
    a call of that name in the container, in `__init__` or in a call of the class, or the name
    among the class's choices."""
    places = [container] + [m for m in (cls.methods.get("__init__"),) if m is not None] \
        + list(ctx.index.calls_of(ctx.module, cls.node.name.value))
    return {node.func.value for place in places for node in find_types(place, cst.Call)
            if isinstance(node.func, cst.Name)} | {n for chosen in class_choices(cls).values() for n in chosen}


def _containers_naming(ctx: "FileContext") -> dict[str, list[tuple["ModuleClass", object]]]:
    """Block name -> the (class, container submodule) pairs, in class and submodule order, whose
    `_tried_names` hold it: a block's stacks are looked for among these only, not in every class
    of the file. Built once per file version."""
    def build() -> dict[str, list[tuple["ModuleClass", object]]]:
        table: dict[str, list[tuple["ModuleClass", object]]] = {}
        for cls in ctx.module_classes:
            for sub in cls.submodules.values():
                if sub.callee in CONTAINERS:
                    for name in _tried_names(ctx, cls, sub.call):
                        table.setdefault(name, []).append((cls, sub))
        return table

    return ctx.memo("prenorm.stacks.containers", build)


def _appended_locally(ctx, cls: "ModuleClass", container: cst.Call, arg: cst.Arg, name: str) -> bool:
    """`blocks = []; for ...: blocks.append(Block(...)); self.blocks = nn.Sequential(*blocks)`: a
    local list of `__init__` that only ever receives instances of `name` and then fills the stack."""
    if not (arg.star == "*" and isinstance(arg.value, cst.Name)):
        return False
    init = cls.methods.get("__init__")
    local = arg.value.value
    if init is None:
        return False
    reads = [n for n in find(init.body, lambda n: isinstance(n, cst.Name) and n.value == local)]
    created = appended = 0
    for node in reads:
        parent = ctx.parents.get(node)
        if node is arg.value or (isinstance(parent, cst.Attribute) and parent.attr is node):
            continue
        if isinstance(parent, cst.AssignTarget) and isinstance(ctx.parents.get(parent), cst.Assign) \
                and isinstance(ctx.parents[parent].value, cst.List) and not ctx.parents[parent].value.elements:
            created += 1
        elif isinstance(parent, cst.Attribute) and parent.value is node and parent.attr.value == "append" \
                and isinstance(ctx.parents.get(parent), cst.Call) and len(ctx.parents[parent].args) == 1 \
                and _is_call_of(ctx.parents[parent].args[0].value, name):
            appended += 1
        else:
            return False
    return created == 1 and appended >= 1


def _filled_with(ctx, cls: "ModuleClass", value: cst.BaseExpression, name: str) -> bool:
    if isinstance(value, cst.StarredElement):
        value = value.value
    if not isinstance(value, cst.Name):
        return False
    position = _param_position(cls, value.value)
    return position is not None and _constructed_with(ctx, cls, position, value.value, name)


_MUTATORS = ("append", "extend", "insert", "add_module", "register_module", "pop")


def _changed_later(ctx, cls: "ModuleClass", sub) -> bool:
    """`self.blocks.append(nn.Linear(...))`, `self.blocks[-1] = ...`, `self.blocks += ...`, a
    second `self.blocks = ...`: the stack's items are not only the blocks it was built from."""
    built = {id(node) for node in walk(sub.statement)}
    for reference in cls.self_references(sub.name):
        if id(reference) in built:
            continue
        parent = ctx.parents.get(reference)
        if isinstance(parent, cst.Attribute) and parent.attr.value in _MUTATORS:
            return True
        if isinstance(parent, (cst.AugAssign, cst.AssignTarget)) or (
                isinstance(parent, cst.Subscript) and isinstance(ctx.parents.get(parent), cst.AssignTarget)):
            return True
    return False


def _instances_of(expr: cst.BaseExpression, name: str, choices: dict[str, set[str]] | None = None) -> bool:
    if isinstance(expr, (cst.ListComp, cst.GeneratorExp)):
        return _is_call_of(expr.elt, name, choices)
    if isinstance(expr, (cst.List, cst.Tuple)):
        return bool(expr.elements) and all(_is_call_of(e.value, name, choices) for e in expr.elements)
    if isinstance(expr, cst.StarredElement):
        return _instances_of(expr.value, name, choices)
    return False


def _is_call_of(expr: cst.BaseExpression, name: str, choices: dict[str, set[str]] | None = None) -> bool:
    """`Name(...)`, or `self.<attr>(...)` where `self.<attr>` holds a class chosen among some
    that include `name` (`self.layer_type = A if flag else B`)."""
    if not isinstance(expr, cst.Call):
        return False
    if isinstance(expr.func, cst.Name):
        return expr.func.value == name
    attr = self_attribute(expr.func)
    return attr is not None and name in (choices or {}).get(attr, ())


def class_choices(cls: "ModuleClass") -> dict[str, set[str]]:
    """`self.<attr> = Block` or `self.<attr> = A if flag else B` in `__init__`, the attribute's only
    binding in the class: attr -> the class names it may hold. Calling it builds one of them.
    Read once per class node (the answer depends on the class's own code only)."""
    return cached(cls.node, "prenorm.class_choices", lambda node: _class_choices(cls))


def _class_choices(cls: "ModuleClass") -> dict[str, set[str]]:
    init = cls.methods.get("__init__")
    found: dict[str, set[str]] = {}
    if init is None:
        return found
    writes: dict[str, int] = {}
    for node in find_types(cls.node, (cst.AssignTarget, cst.AugAssign, cst.AnnAssign, cst.Del, cst.For, cst.AsName)):
        target = node.name if isinstance(node, cst.AsName) else node.target
        for written in find(target, lambda n: self_attribute(n) is not None):
            writes[self_attribute(written)] = writes.get(self_attribute(written), 0) + 1
    for statement in find_types(init.body, cst.SimpleStatementLine):
        small = statement.body[0] if len(statement.body) == 1 else None
        if not (isinstance(small, cst.Assign) and len(small.targets) == 1):
            continue
        attr = self_attribute(small.targets[0].target)
        names = _class_names(small.value)
        if attr is not None and names is not None and writes.get(attr) == 1:
            found[attr] = names
    return found


def _class_names(value: cst.BaseExpression) -> set[str] | None:
    """`Block` -> {"Block"}; `A if c else B` (nested too) -> {"A", "B"}; else None."""
    if isinstance(value, cst.Name) and value.value[:1].isupper():
        return {value.value}
    if isinstance(value, cst.IfExp):
        body, orelse = _class_names(value.body), _class_names(value.orelse)
        return body | orelse if body is not None and orelse is not None else None
    return None


def _param_position(cls: "ModuleClass", param: str) -> int | None:
    init = cls.methods.get("__init__")
    if init is None:
        return None
    names = [p.name.value for p in init.params.params][1:]
    return names.index(param) if param in names else None


def _constructed_with(ctx, cls: "ModuleClass", position: int, keyword: str, name: str) -> bool:
    target = cls.node.name.value
    found = [
        (value := argument(node, position, keyword)) is not None and _instances_of(value, name)
        for node in ctx.index.calls_of(ctx.module, target)
    ]
    return bool(found) and all(found)


@dataclass
class StackRun:
    """Where the stack's output is ready: after `statement`, in the variable `variable`."""

    statement: cst.BaseStatement
    variable: str


def find_run(stack: Stack) -> StackRun | None:
    """`for layer in self.layers: x = layer(x, ...)`, or `x = self.blocks(x)` for a Sequential."""
    forward = stack.cls.methods.get("forward")
    if forward is None or not isinstance(forward.body, cst.IndentedBlock):
        return None
    if len(find(forward, lambda node: self_attribute(node) == stack.attr)) != 1:
        return None  # run in parts (`self.blocks[:k]`, then `[k:]`) or read again: no single end
    for statement in forward.body.body:
        if isinstance(statement, cst.For) and statement.orelse is None \
                and _iterates_whole(statement.iter, stack.attr):
            variable = _loop_carried(statement)
            return StackRun(statement, variable) if variable else None
        if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
            small = statement.body[0]
            if isinstance(small, cst.Assign) and isinstance(small.value, cst.Call) \
                    and self_attribute(small.value.func) == stack.attr \
                    and isinstance(small.targets[0].target, cst.Name):
                return StackRun(statement, small.targets[0].target.value)
    return None


def _iterates_whole(iterable: cst.BaseExpression, attr: str) -> bool:
    """`self.blocks`, `enumerate(self.blocks)`, `zip(self.blocks, ...)`; not a slice of it."""
    if self_attribute(iterable) == attr:
        return True
    return isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Name) \
        and iterable.func.value in ("enumerate", "zip") \
        and any(self_attribute(arg.value) == attr for arg in iterable.args)


def _loop_carried(loop: cst.For) -> str | None:
    """The name each iteration feeds to the block and rebinds: `x = layer(x, ...)`."""
    if not isinstance(loop.body, cst.IndentedBlock):
        return None
    targets = [e.value for e in loop.target.elements] if isinstance(loop.target, cst.Tuple) \
        else [loop.target]
    blocks = {t.value for t in targets if isinstance(t, cst.Name)}
    body = list(loop.body.body)
    for position, statement in enumerate(body):
        unpacked = _first_of_output(statement, body[position + 1] if position + 1 < len(body) else None, blocks)
        if unpacked is not None:
            return unpacked
        if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
            small = statement.body[0]
            if isinstance(small, cst.Assign) and len(small.targets) == 1 \
                    and _first_target(small.targets[0].target) is not None \
                    and isinstance(small.value, cst.Call) \
                    and isinstance(small.value.func, cst.Name) and small.value.func.value in blocks:
                variable = _first_target(small.targets[0].target)
                if any(n.value == variable for n in loads(small.value, variable)):
                    return variable
    return None


def _first_of_output(statement, following, blocks: set[str]) -> str | None:
    """`outputs = block(x, ...)` then `x = outputs[0]` (a block returning a list or tuple whose first
    item is the stream): the stream variable `x`."""
    small = statement.body[0] if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 else None
    after = following.body[0] if isinstance(following, cst.SimpleStatementLine) and len(following.body) == 1 else None
    if not (isinstance(small, cst.Assign) and len(small.targets) == 1 and isinstance(small.targets[0].target, cst.Name)
            and isinstance(small.value, cst.Call) and isinstance(small.value.func, cst.Name)
            and small.value.func.value in blocks and isinstance(after, cst.Assign) and len(after.targets) == 1
            and isinstance(after.targets[0].target, cst.Name) and isinstance(after.value, cst.Subscript)):
        return None
    holder, variable = small.targets[0].target.value, after.targets[0].target.value
    index = after.value.slice[0].slice if len(after.value.slice) == 1 else None
    first = isinstance(index, cst.Index) and isinstance(index.value, cst.Integer) and index.value.value == "0"
    reads = {n.value for n in loads(small.value, variable)}
    if first and isinstance(after.value.value, cst.Name) and after.value.value.value == holder and variable in reads:
        return variable
    return None


def _first_target(target: cst.BaseAssignTargetExpression) -> str | None:
    """`x = layer(x)` -> x; `x, attn = layer(x)` (a block that also returns its attention) -> x."""
    if isinstance(target, cst.Name):
        return target.value
    if isinstance(target, cst.Tuple) and target.elements and all(
            isinstance(e.value, cst.Name) for e in target.elements):
        return target.elements[0].value.value
    return None


def stream_read_in_loop(stack: Stack, run: StackRun) -> cst.Name | None:
    """A read of the carried stream in the loop body after the block call (`outputs.append(x)`):
    the last block's output is taken there, where the final norm after the loop never reaches."""
    loop = run.statement
    if not isinstance(loop, cst.For) or not isinstance(loop.body, cst.IndentedBlock):
        return None
    seen_call = False
    for statement in loop.body.body:
        if seen_call:
            reads = loads(statement, run.variable)
            if reads:
                return reads[0]
            if isinstance(statement, cst.SimpleStatementLine) and any(
                    isinstance(t.target, cst.Name) and t.target.value == run.variable
                    for small in statement.body if isinstance(small, cst.Assign) for t in small.targets):
                return None  # rebound: later reads are of something else
        elif loads(statement, run.variable) and _binds_name(statement, run.variable):
            seen_call = True
    return None


def _binds_name(statement: cst.CSTNode, name: str) -> bool:
    small = statement.body[0] if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 else None
    return isinstance(small, cst.Assign) and len(small.targets) == 1 and _first_target(small.targets[0].target) == name
