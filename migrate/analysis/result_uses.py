"""Who reads one element of the tuple a project function (or a module's forward) returns.

Attention written as `def attention(q, k, v, mask=None): ... return p @ v, p` or as a module whose
forward returns `(output, probabilities)` is often called by code that unpacks the pair and never
reads the second element. `result_keeper` searches the files of the run for every caller: a call of
the function, or a call of an instance of the module (`self.attn = Attention()` then
`self.attn(...)` in that class, or a local instance). It answers the first place that may read the
element, or None when every caller provably ignores it (`x, _ = f(...)`, `x, p = f(...)` with `p`
never read in that function, `f(...)[0]`, a bare call). A reference it cannot follow (passed as a
value, subclassed, kept in a list) counts as a reader, and so does finding no caller at all.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tf_migrate.analysis.nn_bases import dotted_text

if TYPE_CHECKING:
    from tf_migrate.analysis.project import ProjectIndex


@dataclass(frozen=True)
class Keeper:
    """A place that may read the element: `what` it does, in file `path` at `line`."""

    path: str
    line: int
    what: str

    def describe(self, root: str) -> str:
        shown = os.path.relpath(self.path, root) if os.path.isabs(self.path) else self.path
        return f"{self.what} in {shown}"


def result_keeper(project: "ProjectIndex", path: str, qualname: str, kind: str, position: int,
                  length: int) -> Keeper | None:
    """For function `qualname` (kind "function") or the forward of module class `qualname` (kind
    "class") defined in `path`, returning a tuple of `length` elements: the first caller that may
    read element `position`, or None when every caller in the run's files ignores it."""
    target = (os.path.abspath(path), qualname)
    name = qualname.rsplit(".", 1)[-1]
    callers = 0
    for file in sorted(project.files | {target[0]}):
        text = project.text(file)
        if text is None or name not in text:
            continue
        summary = project.summary(file)
        if summary is None:
            return Keeper(file, 1, f"a file naming `{name}` that tf-migrate cannot parse")
        parents = _parents(summary.tree)
        for node in ast.walk(summary.tree):
            if not _names_target(project, file, node, name, target):
                continue
            call = parents.get(node)
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "super":
                continue  # `super(Cls, self)` inside the class itself
            callers += 1
            if not (isinstance(call, ast.Call) and call.func is node):
                return Keeper(file, node.lineno, f"`{name}` is used at line {node.lineno} without being called")
            found = _call_reads(file, call, parents, position, length) if kind == "function" else \
                _instance_reads(file, call, parents, position, length, name)
            if found is not None:
                return found
    if not callers:
        return Keeper(target[0], 1, f"no caller of `{name}` in the files of this run: its results may be "
                      "read elsewhere")
    return None


def _names_target(project, file: str, node: ast.AST, name: str, target: tuple[str, str]) -> bool:
    if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load):
        symbols = project.resolve_name(file, name)
    elif isinstance(node, ast.Attribute) and node.attr == name and isinstance(node.ctx, ast.Load):
        text = dotted_text(node)
        symbols = project.resolve_dotted(file, text) if text else []
    else:
        return False
    return any((s.path, s.qualname) == target for s in symbols if s.path)


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    found = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            found[child] = node
    return found


def _enclosing(node: ast.AST, parents, kinds) -> ast.AST | None:
    current = parents.get(node)
    while current is not None and not isinstance(current, kinds):
        current = parents.get(current)
    return current


def _instance_reads(file, new: ast.Call, parents, position, length, name) -> Keeper | None:
    """`self.<attr> = Cls(...)` (every `self.<attr>` of that class must be a call) or
    `local = Cls(...)` (every read of `local` in that function must be a call)."""
    statement = parents.get(new)
    target = statement.targets[0] if isinstance(statement, ast.Assign) and len(statement.targets) == 1 else None
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
        scope, attr = _enclosing(statement, parents, (ast.ClassDef,)), target.attr
        uses = [n for n in ast.walk(scope) if isinstance(n, ast.Attribute) and n.attr == attr
                and isinstance(n.value, ast.Name) and n.value.id == "self" and n is not target
                and isinstance(n.ctx, ast.Load)] if scope else None  # `self.attn = None` reads nothing
        shown = f"self.{attr}"
    elif isinstance(target, ast.Name):
        scope, shown = _enclosing(statement, parents, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)), target.id
        uses = [n for n in ast.walk(scope) if isinstance(n, ast.Name) and n.id == target.id
                and isinstance(n.ctx, ast.Load)] if scope else None
    else:
        return Keeper(file, new.lineno, f"the `{name}(...)` made at line {new.lineno} is kept in a way "
                      "tf-migrate does not follow")
    if uses is None:
        return Keeper(file, new.lineno, f"`{shown}` is bound at module level (line {new.lineno})")
    for use in uses:
        call = parents.get(use)
        if _none_test(call):
            continue  # `if self.attn is not None:` reads no result
        if not (isinstance(call, ast.Call) and call.func is use):
            return Keeper(file, use.lineno, f"`{shown}` is used at line {use.lineno} without being called")
        found = _call_reads(file, call, parents, position, length)
        if found is not None:
            return found
    return None


def _none_test(node: ast.AST | None) -> bool:
    """`x is None` / `x is not None`."""
    return isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.Is, ast.IsNot)) \
        and isinstance(node.comparators[0], ast.Constant) and node.comparators[0].value is None


def _call_reads(file, call: ast.Call, parents, position: int, length: int) -> Keeper | None:
    """None when this call provably ignores element `position` of its result."""
    parent = parents.get(call)
    code = ast.unparse(call)
    code = code if len(code) <= 50 else code[:47] + "..."
    if isinstance(parent, ast.Expr):
        return None
    if isinstance(parent, ast.Subscript) and parent.value is call and isinstance(parent.slice, ast.Constant) \
            and isinstance(parent.slice.value, int) and not isinstance(parent.slice.value, bool) \
            and parent.slice.value % length != position % length:
        return None
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], (ast.Tuple, ast.List)):
        elements = parent.targets[0].elts
        if len(elements) == length and not any(isinstance(e, ast.Starred) for e in elements):
            kept = elements[position]
            if isinstance(kept, ast.Name):
                scope = _enclosing(parent, parents, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.Module))
                reads = [n for n in ast.walk(scope) if isinstance(n, ast.Name) and n.id == kept.id
                         and isinstance(n.ctx, ast.Load)]
                if kept.id == "_" or not reads:
                    return None
                return Keeper(file, reads[0].lineno, f"`{kept.id}`, bound from `{code}` at line {parent.lineno}, "
                              f"is read at line {reads[0].lineno}")
            return Keeper(file, parent.lineno, f"`{code}` at line {parent.lineno} binds it to "
                          f"`{ast.unparse(kept)}`")
    return Keeper(file, call.lineno, f"`{code}` at line {call.lineno} passes on its whole result")
