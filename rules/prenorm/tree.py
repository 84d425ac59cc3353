"""Blocks, sublayers and stacks across the files of the tree.

A sublayer class that normalises its own output (`layer_norm(dropout(out) + residual)` in an
attention or feed-forward class, FastSpeech-style) is held by a block in another file, and the
block is stacked by a model in a third one. Each file's run decides the same thing from the
whole tree: the sublayer's file moves the norm, the stack's file adds the final norm, and both
agree because both ask `component_problem` about the same set of classes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Iterator

import libcst as cst

from tf_migrate.analysis.nodes import PerNode


if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext
    from tf_migrate.analysis.modules import ModuleClass

_MAX_COMPONENT = 64

NORMS = (
    "torch.nn.LayerNorm", "torch.nn.RMSNorm",
    "torch.nn.modules.normalization.LayerNorm", "torch.nn.modules.normalization.RMSNorm",
)


def files_naming(ctx: "FileContext", name: str) -> Iterator["FileContext"]:
    """The other files of the run whose text names `name` (parsed lazily by the index)."""
    word = re.compile(rf"\b{re.escape(name)}\b")
    for path in sorted(ctx.project.files):
        if path == ctx.project_key:
            continue
        text = ctx.project.text(path)
        if text is not None and word.search(text):
            other = ctx.project.context(path)
            if other is not None:
                yield other


def names_class(fctx: "FileContext", name: str, home: "FileContext", cls: "ModuleClass") -> bool:
    """`name` at module level of `fctx` stands for class `cls` of file `home` (imports followed)."""
    if fctx.project_key == home.project_key:
        return any(c.node.name.value == name for c in home.module_classes)
    return any(s.kind == "class" and s.path == home.project_key and s.qualname == cls.qualname
               for s in fctx.project.resolve_name(fctx.project_key, name))


def resolve_class(fctx: "FileContext", name: str) -> tuple["FileContext", "ModuleClass"] | None:
    """The module class a bare name stands for in `fctx`: this file's, or an imported one."""
    cls = _top_level_classes(fctx).get(name)
    if cls is not None:
        return fctx, cls
    for symbol in fctx.project.resolve_name(fctx.project_key, name):
        if symbol.kind != "class" or symbol.path is None or symbol.path == fctx.project_key:
            continue
        other = fctx.project.context(symbol.path)
        if other is None:
            continue
        for cls in other.module_classes:
            if cls.qualname == symbol.qualname:
                return other, cls
    return None


def _top_level_classes(fctx: "FileContext") -> dict[str, "ModuleClass"]:
    """Name -> the first module class of the file by that name outside any class, as a scan of
    `module_classes` finds it: one table per file version, not a scan per question."""
    def build() -> dict[str, "ModuleClass"]:
        table: dict[str, "ModuleClass"] = {}
        for cls in fctx.module_classes:
            if "." not in cls.qualname:
                table.setdefault(cls.node.name.value, cls)
        return table

    return fctx.memo("prenorm.tree.top_level_classes", build)


def holders(ctx: "FileContext", cls: "ModuleClass") -> list[tuple["FileContext", "ModuleClass", object]]:
    """Every `self.<sub> = Cls(...)` of another class, in this file or one importing the class."""
    name = cls.node.name.value
    found = []
    for fctx in [ctx, *files_naming(ctx, name)]:
        if fctx is not ctx and not names_class(fctx, name, ctx, cls):
            continue
        found += [(fctx, holder, sub) for holder, sub in _built_by_name(fctx).get(name, ()) if holder is not cls]
    return found


def _built_by_name(fctx: "FileContext") -> dict[str, list[tuple["ModuleClass", object]]]:
    """Class name -> every (class, submodule) `self.<sub> = Name(...)` of the file, in class and
    submodule order: built once per file version, not searched per block."""
    def build() -> dict[str, list[tuple["ModuleClass", object]]]:
        table: dict[str, list[tuple["ModuleClass", object]]] = {}
        for holder in fctx.module_classes:
            for sub in holder.submodules.values():
                if isinstance(sub.call.func, cst.Name):
                    table.setdefault(sub.call.func.value, []).append((holder, sub))
        return table

    return fctx.memo("prenorm.tree.built_by_name", build)


def submodule_classes(fctx: "FileContext", cls: "ModuleClass") -> Iterator[tuple[str, "FileContext", "ModuleClass"]]:
    """The project classes `cls` builds as submodules, in definition order."""
    for sub in cls.submodules.values():
        if isinstance(sub.call.func, cst.Name):
            found = resolve_class(fctx, sub.call.func.value)
            if found is not None and found[1] is not cls:
                yield (sub.name, *found)


def holder_calls(fctx: "FileContext", holder: "ModuleClass", sub) -> list[cst.Call] | None:
    """The calls `self.<sub>(...)` of the holder; None when `self.<sub>` is used any other way."""
    calls = []
    built = sub.statement
    for reference in holder.self_references(sub.name):
        parent = fctx.parents.get(reference)
        if isinstance(parent, cst.Call) and parent.func is reference:
            calls.append(parent)
            continue
        node = reference
        while node is not None and node is not built:
            node = fctx.parents.get(node)
        if node is None:
            return None
    return calls


def aliased_params(ctx: "FileContext", cls: "ModuleClass", method: cst.FunctionDef,
                   param: str) -> tuple[list[str], str | None]:
    """The other parameters of `method` that some caller passes the very tensor it passes as
    `param` (`self.attn(x, x, x)`: q, k and v), and a reason when the callers cannot be read."""
    params = [p.name.value for p in method.params.params][1:]
    if param not in params:
        return [], None
    found: list[str] = []
    for fctx, holder, sub in holders(ctx, cls):
        calls = holder_calls(fctx, holder, sub)
        if calls is None:
            return [], f"`self.{sub.name}` of {holder.qualname} is used other than called"
        for call in calls:
            given: dict[str, str] = {}
            for position, arg in enumerate(call.args):
                if arg.star:
                    return [], f"a call of `self.{sub.name}` unpacks its arguments"
                name = arg.keyword.value if arg.keyword else (params[position] if position < len(params) else None)
                if name is not None and isinstance(arg.value, cst.Name):
                    given[name] = arg.value.value
            if param not in given:
                continue
            found += [p for p, value in given.items()
                      if p != param and value == given[param] and p not in found]
    return [p for p in params if p in found], None


def stack_members(fctx: "FileContext", stack) -> list[tuple[str, "FileContext", "ModuleClass"]]:
    """The classes a stack's blocks are made of: the blocks, then what they build, depth first,
    each with its path from the stack (`self.layers[-1].attn`)."""
    from tf_migrate.rules.prenorm.stacks import block_names

    container = stack.cls.submodules[stack.attr].call
    names = block_names(fctx, stack.cls, container)
    found: list[tuple[str, "FileContext", "ModuleClass"]] = []
    seen: set[tuple[str, str]] = set()
    for name in sorted(names):
        resolved = resolve_class(fctx, name)
        if resolved is not None:
            _add_members(found, seen, f"self.{stack.attr}[-1]", *resolved, 0)
    return found


def _add_members(found: list, seen: set[tuple[str, str]], path: str, mfctx, mcls, depth: int) -> None:
    key = (mfctx.project_key, mcls.qualname)
    if key in seen or depth > 3:
        return
    seen.add(key)
    found.append((path, mfctx, mcls))
    for attr, sfctx, scls in submodule_classes(mfctx, mcls):
        _add_members(found, seen, f"{path}.{attr}", sfctx, scls, depth + 1)


def _calls_in(node: cst.CSTNode) -> list[cst.Call]:
    from tf_migrate.analysis.nodes import find_types

    return find_types(node, cst.Call)


def side_by_side(stack) -> int | None:
    """The line where forward applies the container's items each to its own input, in a
    comprehension over the container (`[f(o) for f, o in zip(self.ffns, outputs)]`), when no
    `for` statement iterates it; else None."""
    from tf_migrate.analysis.names import self_attribute
    from tf_migrate.analysis.nodes import find

    forward = stack.cls.methods.get("forward")
    reads = find(forward, lambda n: self_attribute(n) == stack.attr) if forward is not None else []
    found = None
    for read in reads:
        node = stack.fctx.parents.get(read)
        while node is not None and not isinstance(node, (cst.CompFor, cst.BaseStatement)):
            node = stack.fctx.parents.get(node)
        if isinstance(node, cst.For):
            return None
        if isinstance(node, cst.CompFor) and found is None:
            found = stack.fctx.line(node)
    return found


def component(ctx: "FileContext", start: list[tuple["FileContext", "ModuleClass"]], analyse,
              find_stacks, find_run) -> tuple[str | None, list]:
    """Every post-norm class reachable from `start` through shared stacks, and the first problem
    (a refused member, a stack with no single run), as `(problem, stacks)`; `stacks` lists
    `(stack, members)` with each member's `(path, fctx, cls, found)`. The answer is the same
    whichever member the question starts from."""
    from tf_migrate.rules.prenorm.stacks import stream_read_in_loop

    queue = list(start)
    seen: set[tuple[str, str]] = set()
    stacks: dict[tuple[str, int], tuple] = {}
    while queue:
        mfctx, mcls = queue.pop(0)
        key = (mfctx.project_key, mcls.qualname)
        if key in seen:
            continue
        seen.add(key)
        if len(seen) > _MAX_COMPONENT:
            return "too many classes share these stacks to read them all", []
        found, problem = analyse(mfctx, mcls)
        if problem:
            return problem, []
        if found is None or not found.post:
            continue
        owned = find_stacks(mfctx, mcls)
        if not owned:
            return (f"{mcls.qualname} is post-norm, but no stack of blocks holding it was found, "
                    "so the final norm cannot be placed"), []
        for stack in owned:
            skey = (stack.fctx.project_key, id(stack.statement))
            if skey in stacks:
                continue
            if find_run(stack) is None and side_by_side(stack) is not None:
                return (f"`self.{stack.attr}` of {stack.cls.qualname} ({_where(ctx, stack.fctx)}line "
                        f"{stack.fctx.line(stack.statement)}) runs its post-norm blocks side by side, each on "
                        f"its own input (line {side_by_side(stack)}), not one after another: there is no "
                        "last block whose output a final norm would close"), []
            collected = stream_read_in_loop(stack, find_run(stack)) if find_run(stack) is not None else None
            if collected is not None:
                return (f"the loop over `self.{stack.attr}` of {stack.cls.qualname} ({_where(ctx, stack.fctx)}"
                        f"line {stack.fctx.line(collected)}) also reads `{collected.value}` after each block: "
                        "the last block's output is taken there, before the final norm could close it"), []
            if find_run(stack) is None:
                return (f"the stack `self.{stack.attr}` of {stack.cls.qualname} "
                        f"({_where(ctx, stack.fctx)}line {stack.fctx.line(stack.statement)}) is not run "
                        "whole by one loop in forward, so the final norm cannot be placed"), []
            members = []
            for path, sfctx, scls in stack_members(stack.fctx, stack):
                sfound, sproblem = analyse(sfctx, scls)
                if sproblem:
                    return (f"{scls.qualname} in the same stack is refused: {sproblem}"), []
                members.append((path, sfctx, scls, sfound))
                queue.append((sfctx, scls))
            last = [m for m in members if m[3] is not None and m[3].post][-1:]
            chosen = last and chosen_block_problem(stack.fctx, stack, last[0][0], last[0][3].post[-1].norm, analyse)
            if chosen:
                return chosen, []
            stacks[skey] = (stack, members)
    return None, list(stacks.values())


def _where(ctx, fctx) -> str:
    return "" if fctx.project_key == ctx.project_key else f"{_rel(fctx)}, "


def reads_before(ctx, method: cst.FunctionDef, names: list[str], line: int) -> str | None:
    """A read of one of `names` on a line before `line`: the normalised input would come too late."""
    from tf_migrate.analysis.nodes import find

    for node in find(method.body, lambda n: isinstance(n, cst.Name) and n.value in names):
        if ctx.line(node) < line:
            return node.value
    return None


def _rel(fctx) -> str:
    import os

    return os.path.relpath(fctx.path, fctx.project.root)


_PARAMETERS = ("torch.nn.Parameter", "torch.nn.parameter.Parameter")
_IDENTITY = {"torch.ones": "ones", "torch.zeros": "zeros"}
_NORMALISING = ("layer_norm(", "rms_norm(", "group_norm(")


def own_norm_parameters(fctx: "FileContext", cls: "ModuleClass") -> list[tuple[str, str]] | None:
    """A norm class written in the project (`gamma`/`beta` LayerNorms): its parameters with their
    init, `[("gamma", "ones"), ("beta", "zeros")]`, when `__init__` builds only parameters of
    `torch.ones` / `torch.zeros` (the identity a fresh final norm starts at) and forward
    normalises (`F.layer_norm`, or a mean taken away and a std / variance / rsqrt divided by);
    None for anything else. Read once per class of a file version (a norm class is asked about
    by every call of every block that holds one)."""
    found = fctx.memo("prenorm.tree.own_norm_parameters",
                      lambda: PerNode(lambda of: _own_norm_parameters(fctx, of)))(cls)
    return list(found) if found is not None else None


def _own_norm_parameters(fctx: "FileContext", cls: "ModuleClass") -> list[tuple[str, str]] | None:
    init, forward = cls.methods.get("__init__"), cls.methods.get("forward")
    if init is None or forward is None or cls.buffers or any(
            sub.callee not in _PARAMETERS for sub in cls.submodules.values()):
        return None
    code = fctx.code(forward)
    if not (any(word in code for word in _NORMALISING)
            or (".mean(" in code and any(word in code for word in (".std(", ".var(", "sqrt(", "rsqrt(")))):
        return None
    found = []
    for call in _calls_in(init):
        if fctx.names.callee(call) not in _PARAMETERS:
            continue
        inner = call.args[0].value if call.args else None
        kind = _IDENTITY.get(fctx.names.callee(inner)) if isinstance(inner, cst.Call) else None
        assign = fctx.parents.get(call)
        if kind is None or not isinstance(assign, cst.Assign) or len(assign.targets) != 1:
            return None
        attribute = assign.targets[0].target
        if not (isinstance(attribute, cst.Attribute) and isinstance(attribute.value, cst.Name)
                and attribute.value.value == "self"):
            return None
        found.append((attribute.attr.value, kind))
    if "register_parameter" in fctx.code(init):
        return None
    return found or None


def norm_class(fctx: "FileContext", cls: "ModuleClass", node: cst.CSTNode) -> tuple["FileContext", "ModuleClass"] | None:
    """The project class `self.<x>` (node) is built from, when it is a norm by its own code."""
    from tf_migrate.analysis.names import self_attribute

    name = self_attribute(node)
    return own_norm_of(fctx, cls, name) if name else None


def own_norm_of(fctx: "FileContext", cls: "ModuleClass", name: str) -> tuple["FileContext", "ModuleClass"] | None:
    sub = cls.submodules.get(name)
    if sub is None or not isinstance(sub.call.func, cst.Name):
        return None
    found = resolve_class(fctx, sub.call.func.value)
    if found is None or found[1] is cls:
        return None
    return found if own_norm_parameters(*found) is not None else None


def chosen_block_problem(fctx: "FileContext", stack, path: str, norm_attr: str, analyse) -> str | None:
    """Where the stack's block class is chosen at run time (`self.layer_type = A if flag else B`):
    why the final norm cannot serve every choice, or None. Each choice must be post-norm (or hold
    post-norm sublayers: a pre-norm choice would gain a norm it never had), and must have
    `<path>.<norm_attr>` (`self.layers[-1].attn.norm`), the norm the final norm is sized from."""
    from tf_migrate.rules.prenorm.stacks import block_names

    names = block_names(fctx, stack.cls, stack.cls.submodules[stack.attr].call)
    prefix = f"self.{stack.attr}[-1]"
    if len(names) < 2:
        return None
    where = f"the blocks of `self.{stack.attr}` of {stack.cls.qualname} are chosen at run time, and"
    if not path.startswith(prefix):
        return f"{where} the final norm's source `{path}` is not read from them"
    steps = [s for s in path[len(prefix):].split(".") if s] + [norm_attr]
    for name in names:
        found = resolve_class(fctx, name)
        if found is None or not _post_norm_within(*found, analyse, 0):
            return f"{where} {name} is not post-norm: it would gain a final norm it never had"
        for position, step in enumerate(steps):
            sub = found[1].submodules.get(step) if found is not None else None
            if sub is None:
                return f"{where} {name} has no `{path}.{norm_attr}` to size the final norm from"
            if position + 1 < len(steps):
                found = resolve_class(found[0], sub.call.func.value) \
                    if isinstance(sub.call.func, cst.Name) else None
    return None


def _post_norm_within(fctx: "FileContext", cls: "ModuleClass", analyse, depth: int) -> bool:
    found, problem = analyse(fctx, cls)
    if problem or (found is not None and found.post):
        return True  # a refused member answers for itself elsewhere in the component
    return depth < 3 and any(_post_norm_within(sfctx, scls, analyse, depth + 1)
                             for _, sfctx, scls in submodule_classes(fctx, cls))
