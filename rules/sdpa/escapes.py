"""Where the probabilities of an attention the matcher could not follow go besides the product with v.

The census (analysis/legacy_attention.py) finds `softmax(a·b) · v` in any spelling; when the
matcher says nothing about such a chain, its probabilities often leave it: appended to the
outputs, returned, stored on the module, handed to a hook or a helper, or multiplied a second
time. SDPA never computes them, so any such use blocks the rewrite whatever the spelling, and it
is the reason to give. This module walks the probabilities forward over the census's index
(`ast`, names in line order up to their next rebinding) and answers the first such use by line.
Reading their shape, dtype or device is not a use of their values.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from typing import Iterator

from tf_migrate.analysis.census import (
    META_ARGUMENT_METHODS, META_ATTRIBUTES, META_METHODS, FileIndex, Function, is_namespace, last_name, metadata_call,
    self_attribute, walker,
)
from tf_migrate.engine.rule import Refusal
from tf_migrate.analysis.legacy_attention import AttentionSite, carries, module_product
from tf_migrate.analysis.project.places import shown_root
from tf_migrate.analysis.result_uses import result_keeper

_BUDGET = 200  # nodes visited per walk
_CONTAINER_METHODS = ("append", "extend", "insert", "add", "update", "setdefault")
_HOOK_METHODS = ("register_hook", "retain_grad")
_RETURNS_TO_CALLER = ("forward",)  # methods whose callers are other modules, not this class


@dataclass(frozen=True)
class Escape:
    line: int
    what: str  # "appended to `outputs` at line 457 (`outputs.append(attn_prob)`, under `if ...:`)"


def escape(ctx, site: AttentionSite, index: FileIndex) -> Escape | None:
    """The first use of the site's probabilities (by line) that is neither the product with v, a
    step on the way to it, nor a read of their shape, dtype or device; None when there is none."""
    found = sorted(_escapes(ctx, site, index), key=lambda e: e.line)
    return found[0] if found else None


def _escapes(ctx, site: AttentionSite, index: FileIndex) -> Iterator[Escape]:
    parents = index.parents
    queue: deque[tuple[ast.AST, int | None]] = deque([(site.softmax, None)])
    seen: set[tuple[int, int | None]] = set()
    visited = 0
    while queue and visited < _BUDGET:
        node, position = queue.popleft()
        if (id(node), position) in seen:
            continue
        seen.add((id(node), position))
        visited += 1
        if node is site.output:
            continue
        function = index.function_of(node)
        parent = parents.get(node)
        if parent is None:
            continue
        if isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
            at = index.statement_of(node)  # `(p := softmax(s)) @ v`: `p` is read after the statement too
            queue.extend((load, None) for load in _reads_after(index, function, node.target.id, at))
        if isinstance(parent, ast.Attribute) and parent.value is node:
            call = parents.get(parent)
            if parent.attr in META_ATTRIBUTES:
                continue
            if isinstance(call, ast.Call) and call.func is parent:
                if parent.attr in META_METHODS:
                    continue
                if parent.attr in _HOOK_METHODS:
                    yield Escape(call.lineno, f"hooked by `{_short(call)}` at line {call.lineno}{_under(index, call)}")
                    continue
                queue.append((call, None))  # a tensor method: `.view()`, `.detach()`, `.float()`
                continue
            queue.append((parent, None))
            continue
        if isinstance(parent, ast.keyword):
            node, parent = parent, parents.get(parent)
        if position is not None and not isinstance(parent, (ast.Subscript, ast.Return, ast.Assign)):
            continue  # a helper's whole returned tuple used otherwise: not provably the probabilities
        if isinstance(parent, ast.Call) and node is not parent.func:
            yield from _argument(ctx, site, index, function, parent, queue)
            continue
        if isinstance(parent, ast.Subscript) and position is not None:
            if parent.value is node and isinstance(parent.slice, ast.Constant) and parent.slice.value == position:
                queue.append((parent, None))
            continue  # `helper(...)[0]`: another element of the returned tuple
        if isinstance(parent, ast.Tuple) and isinstance(parents.get(parent), ast.Return):
            yield from _returned(ctx, site, index, function, parents[parent], node, queue)
            continue  # `return out, p`: this element of the returned tuple
        if isinstance(parent, (ast.expr, ast.comprehension)) and not isinstance(parent, ast.Lambda):
            queue.append((parent, None))
            continue
        if isinstance(parent, ast.Return):
            yield from _returned(ctx, site, index, function, parent, node, queue)
            continue
        if isinstance(parent, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and parent.value is node:
            targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
            for target in targets:
                yield from _bound(index, function, parent, target, position, queue)


def _argument(ctx, site, index, function: Function, call: ast.Call, queue) -> Iterator[Escape]:
    """The probabilities (or a value computed from them) are an argument of `call`."""
    if call is site.output:
        return
    if module_product(call, function) is not None:
        yield Escape(call.lineno, f"multiplied a second time by `{_short(call)}` at line {call.lineno}"
                     f"{_under(index, call)}")
        return
    if metadata_call(call, index.modules) or isinstance(call.func, ast.Attribute) \
            and call.func.attr in META_ARGUMENT_METHODS:
        return  # `torch.ones_like(p)`, `x.type_as(p)`: their shape, dtype or device only
    name = last_name(call.func)
    if isinstance(call.func, ast.Attribute) and name in _CONTAINER_METHODS \
            and not is_namespace(call.func.value, index.modules):
        container = ast.unparse(call.func.value)
        verb = "appended to" if name == "append" else "inserted into" if name == "insert" else "added to"
        yield Escape(call.lineno, f"{verb} `{container}` at line {call.lineno} (`{_short(call)}`"
                     f"{_under(index, call, inline=True)})")
        return
    if carries(call, function):
        queue.append((call, None))
        return
    kept = _stored_by(index, function, call)
    where = f" at line {call.lineno}{_under(index, call)}"
    if kept:
        yield Escape(call.lineno, f"passed to `{ast.unparse(call.func)}(...)`{where}, which stores them in `self.{kept}`")
    else:
        yield Escape(call.lineno, f"passed to `{ast.unparse(call.func)}(...)`{where}, a function tf-migrate "
                     "does not follow")


def _returned(ctx, site, index, function: Function, statement: ast.Return, node, queue) -> Iterator[Escape]:
    """A `return` holding the probabilities: followed to the callers of a helper method of the same
    class; for `forward` or a free function, an escape unless every caller in the run ignores that
    element of the returned tuple."""
    element = _element(statement, node)
    name = getattr(function.node, "name", "")
    helper = function.cls is not None and name not in _RETURNS_TO_CALLER and isinstance(
        function.node, (ast.FunctionDef, ast.AsyncFunctionDef))
    if helper:
        callers = [c for c in index.calls if self_attribute(c.func) == name
                   and index.function_of(c).cls is function.cls]
        if callers:
            for call in callers:
                queue.append((call, element[0] if element else None))
            return
    if element is not None and isinstance(function.node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
            and (function.cls is None or name == "forward"):
        kind, qualname = ("class", function.cls.qualname) if function.cls else ("function", function.qualname)
        keeper = result_keeper(ctx.project, ctx.source_path, qualname, kind, *element)
        if keeper is None:
            return  # every caller in the run ignores them
        reader = f", and {keeper.describe(shown_root(ctx.project, keeper.path))}"
    else:
        reader = ""
    returner = f" by `{name}`" if name else ""
    yield Escape(statement.lineno, f"returned{returner} at line {statement.lineno} (`{_short(statement)}`"
                 f"{_under(index, statement, inline=True)}){reader}")


def _element(statement: ast.Return, node: ast.AST) -> tuple[int, int] | None:
    """(position, length) of the element of `return a, b` that `node` is, None when the return is
    not a tuple of which `node` is one element."""
    value = statement.value
    if node is value:
        return None
    if isinstance(value, ast.Tuple) and not any(isinstance(e, ast.Starred) for e in value.elts):
        for position, item in enumerate(value.elts):
            if item is node:
                return position, len(value.elts)
    return None


def _bound(index: FileIndex, function: Function, statement: ast.stmt, target: ast.AST,
           position: int | None, queue) -> Iterator[Escape]:
    if isinstance(target, (ast.Tuple, ast.List)):
        elements = [e.value if isinstance(e, ast.Starred) else e for e in target.elts]
        if position is not None and position < len(elements) and not any(isinstance(e, ast.Starred) for e in target.elts):
            elements = [elements[position]]
        for element in elements:
            yield from _bound(index, function, statement, element, None, queue)
        return
    attribute = self_attribute(target)
    if attribute is not None:
        yield Escape(statement.lineno, f"stored in `self.{attribute}` at line {statement.lineno}"
                     f"{_under(index, statement)}")
        return
    root = target
    while isinstance(root, (ast.Subscript, ast.Attribute)):
        root = root.value
    if self_attribute(root) is not None or (isinstance(root, ast.Attribute) and root is not target):
        yield Escape(statement.lineno, f"stored in `{ast.unparse(target)}` at line {statement.lineno}"
                     f"{_under(index, statement)}")
        return
    if isinstance(root, ast.Name):
        for load in _reads_after(index, function, root.id, statement):
            queue.append((load, position if root is target else None))


def _reads_after(index: FileIndex, function: Function, name: str, statement: ast.stmt) -> list[ast.Name]:
    """The reads of `name` that the binding made by `statement` reaches: after it, up to the next
    binding of `name` that always runs (that binding's own statement may still read it)."""
    end = getattr(statement, "end_lineno", statement.lineno) or statement.lineno
    later = [line for line, _, conditional in function.bindings.get(name, [])
             if line > end and not conditional]
    until = min(later, default=10 ** 9)
    found = []
    for load in function.loads.get(name, []):
        at = index.statement_of(load)
        line = at.lineno if at is not None else load.lineno
        if end < line <= until or (at is not None and at is not statement and at.lineno <= end < line):
            found.append(load)
    return found


def _stored_by(index: FileIndex, function: Function, call: ast.Call) -> str | None:
    """`X` when `call` is `self.m(p)` and method `m` of the class assigns its parameter to `self.X`."""
    name = self_attribute(call.func)
    if name is None or function.cls is None or name not in function.cls.methods:
        return None
    method = function.cls.methods[name]
    params = [a.arg for a in method.args.args[1:]]
    for node in ast.walk(method):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id in params:
            for target in node.targets:
                if self_attribute(target):
                    return self_attribute(target)
    return None


def _under(index: FileIndex, node: ast.AST, inline: bool = False) -> str:
    """`, under `if self.output_attentions:`` for a node inside an `if` of its function."""
    current = index.parents.get(node)
    while current is not None and not isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
        if isinstance(current, ast.If):
            text = f"under `if {_short(current.test, 50)}:`"
            return f", {text}" if inline else f" ({text})"
        current = index.parents.get(current)
    return ""


def _short(node: ast.AST, limit: int = 70) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def escaped_probabilities(ctx, lines: list[int]) -> Iterator[Refusal]:
    """A refusal for each attention of the census on which the matcher said nothing (no finding of
    the rule in its lines or the function around it) and whose probabilities escape."""
    from tf_migrate.engine.census import unsuppressed
    from tf_migrate.rules.sdpa.census import sited

    index = walker(ctx).index
    for site, component in sited(ctx, "TFM101"):
        functions = component.scopes[:-1] if site.function.cls is not None else component.scopes
        spans = [(component.start_line, component.end_line), *functions]
        if any(a <= line <= b for line in lines for a, b in spans) or not unsuppressed([component], ctx.skips):
            continue
        found = escape(ctx, site, index)
        if found is None:
            continue
        yield Refusal(site.output.lineno, (
            f"attention (scores at line {site.scores.lineno}, softmax at line {site.softmax.lineno}, "
            f"product with v here) not folded into SDPA: its probabilities, which SDPA never computes, "
            f"are {found.what}"),
            "keep this attention as it is, or stop using the probabilities there")
