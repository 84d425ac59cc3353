"""Who, elsewhere in the tree, depends on a submodule, buffer or state_dict key a rewrite removes,
renames or stops calling.

`consumers_of(project, owner, name, kinds)` looks through the files of the run that can see the
owner class (its own file, and files that name its module, package or class) for:
- "hook": a forward/backward hook registered on `<expr>.name`, or on modules picked while walking
  `modules()`/`named_modules()` by type (`isinstance(m, nn.Dropout)`, given as `module_types`), by a
  name test that mentions `name`, or not picked at all (every module);
- "key": code that counts a model's state_dict keys (`assert len(a) == len(b)` in a function that
  calls `state_dict()`), and key-like strings that name it ("attn.bias", ".attn.bias");
- "string": `getattr(m, "name")`, `get_submodule("blocks.0.name")` and the like;
- "attribute": `<expr>.name` in another file (not `self.name`, which is that class's own attribute,
  unless the class derives from the owner).
Uses inside the owner class itself are the rule's own business and are not reported.

Per file, for a rule's own questions about the file it rewrites (owner class included):
`hook_registrations(project, path)` and `type_tests(project, path, module_types)`.
"""

from __future__ import annotations

import ast
import bisect
import os
import weakref
from dataclasses import dataclass

from tf_migrate.analysis.project.index import ProjectIndex, Symbol, absolute, canonical, dotted_text
from tf_migrate.analysis.walked import walked

HOOKS = frozenset({"register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
                   "register_backward_hook", "register_full_backward_pre_hook"})
_BY_NAME = frozenset({"getattr", "hasattr", "setattr", "delattr", "get_submodule", "get_parameter", "get_buffer"})
_WALKS = frozenset({"modules", "named_modules", "children", "named_children"})
_SMALL_PACKAGE = 200  # files: a project's own package, scanned whole; larger ones only where they name the owner


@dataclass(frozen=True)
class Consumer:
    path: str
    line: int
    what: str

    def where(self, root: str | None = None) -> str:
        shown = os.path.relpath(self.path, root) if root and self.path.startswith(root) else os.path.basename(self.path)
        return f"{shown}:{self.line}"

    def describe(self, root: str | None = None) -> str:
        return f"{self.what} ({self.where(root)})"


def consumers_of(project: ProjectIndex, owner: Symbol | None, name: str, kinds: frozenset[str] | set[str],
                 module_types: frozenset[str] = frozenset()) -> list[Consumer]:
    key = ("consumers", owner, name, frozenset(kinds), frozenset(module_types))
    return project.memo(key, lambda: _consumers(project, owner, name, kinds, module_types))


@dataclass(frozen=True)
class Registration:
    """A hook registered in a file: `<receiver>.register_forward_hook(...)`."""

    line: int
    callee: str  # as written: `self.mixer.softmax.register_forward_hook`
    target: str | None  # the attribute the hook goes on (`softmax`); None unless `<expr>.<name>.register_*`


@dataclass(frozen=True)
class TypeTest:
    """`isinstance(m, T)` (T alone or in a tuple) where T is one of the module types asked about."""

    line: int
    text: str  # the whole call, as written
    type: str  # T, as written


def hook_registrations(project: ProjectIndex, path: str) -> list[Registration]:
    """Every hook registered in `path`, in the order of its text."""
    path = absolute(path)
    summary, text = project.summary(path), project.text(path) or ""
    if summary is None:
        return []
    return [Registration(node.lineno, ast.get_source_segment(text, node.func) or ast.unparse(node.func),
                         node.func.value.attr if isinstance(node.func.value, ast.Attribute) else None)
            for node in _facts(summary.tree).hooks]


def type_tests(project: ProjectIndex, path: str, module_types: frozenset[str]) -> list[TypeTest]:
    """The `isinstance` tests of `path` that pick modules of `module_types`, in the order of its text."""
    path = absolute(path)
    summary, text = project.summary(path), project.text(path) or ""
    if summary is None:
        return []
    facts = _facts(summary.tree)
    found = []
    for node in facts.type_tests:
        tested = _tested_type(project, path, facts, node, module_types)
        if tested is not None:
            found.append(TypeTest(node.lineno, ast.get_source_segment(text, node) or ast.unparse(node), tested))
    return found


def _tested_type(project: ProjectIndex, path: str, facts: "_FileFacts", call: ast.Call,
                 module_types) -> str | None:
    """The first type `isinstance(x, T)` / `isinstance(x, (T, U))` tests that is one of
    `module_types` (as written), else None. A name imported inside a function counts too."""
    types = call.args[1].elts if isinstance(call.args[1], ast.Tuple) else [call.args[1]]
    for type_ in types:
        text = dotted_text(type_)
        symbols = project.resolve_dotted(path, text) if text else []
        qualified = {s.qualified for s in symbols}
        if text and not symbols:
            first, _, rest = text.partition(".")
            qualified = {canonical(f"{module}.{rest}" if rest else module)
                         for module in facts.local_imports.get(first, ())}
        if qualified & set(module_types):
            return text
    return None


def _consumers(project: ProjectIndex, owner: Symbol | None, name: str, kinds, module_types) -> list[Consumer]:
    found: list[Consumer] = []
    for path in _audience(project, owner, name, set(kinds)):
        summary = project.summary(path)
        if summary is None:
            continue
        skip = _owner_lines(owner, path)
        before = len(found)
        for consumer in _file_consumers(project, owner, path, summary.tree, name, kinds, module_types):
            if consumer.line not in skip:
                found.append(consumer)
        if len(found) == before and "hook" in kinds and module_types:
            found.extend(_picked_by_type(project, path, module_types, skip))
    return sorted(set(found), key=lambda c: (c.path, c.line))


def _picked_by_type(project: ProjectIndex, path: str, module_types, skip: range) -> list[Consumer]:
    """A file that picks modules of the types asked by `isinstance` and registers hooks, though not
    in one walk over `modules()` (`drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]`,
    then a loop over `drops`): the hooks may go on the owner's module."""
    tests = [t for t in type_tests(project, path, module_types) if t.line not in skip]
    hooks = [h for h in hook_registrations(project, path) if h.line not in skip]
    if not tests or not hooks:
        return []
    return [Consumer(path, tests[0].line, f"modules are picked by type (`{tests[0].text}`) where hooks are "
                     f"registered (line {hooks[0].line})")]


def _audience(project: ProjectIndex, owner: Symbol | None, name: str, kinds) -> list[str]:
    """Files that may reach the owner and whose text can hold a consumer of the kinds asked: its
    file, files that name its module, package or class, and the rest of its top-level package
    when that package is small (a library the size of torch is not scanned file by file)."""
    files = sorted(project.files | ({owner.path} if owner and owner.path else set()))
    words = {name} if kinds & {"string", "attribute", "key"} else set()
    words |= {"register_", "_hook"} if "hook" in kinds else set()
    words |= {"state_dict"} if "key" in kinds else set()
    if owner is None or owner.path is None:
        return [p for p in files if _mentions(project, p, words)]
    package = _top_package(owner.path)
    inside = [p for p in files if package and p.startswith(package + os.sep)] if package else []
    whole_package = set(inside) if len(inside) <= _SMALL_PACKAGE else set()
    names = {os.path.splitext(os.path.basename(owner.path))[0], (owner.qualname or "").split(".")[0],
             os.path.basename(package) if package and whole_package else ""} - {"", "__init__"}
    return [path for path in files if _mentions(project, path, words) and (
        path == owner.path or path in whole_package or _mentions(project, path, names))]


def _mentions(project: ProjectIndex, path: str, words: set[str]) -> bool:
    text = project.text(path)
    return text is not None and any(word in text for word in words)


def _top_package(path: str) -> str | None:
    """The outermost folder with an `__init__.py` that holds `path`."""
    folder, top = os.path.dirname(path), None
    while os.path.exists(os.path.join(folder, "__init__.py")):
        top, folder = folder, os.path.dirname(folder)
    return top


def _owner_lines(owner: Symbol | None, path: str) -> range:
    node = owner.node if owner is not None and owner.path == path else None
    if isinstance(node, ast.ClassDef):
        return range(node.lineno, (node.end_lineno or node.lineno) + 1)
    return range(0)


def _file_consumers(project: ProjectIndex, owner: Symbol | None, path: str, tree: ast.Module, name: str,
                    kinds, module_types):
    text = project.text(path) or ""
    facts = _facts(tree)
    for node in facts.candidates(name, with_functions="key" in kinds and "assert" in text):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from facts.key_counts(node, path)  # the same for every name
        else:
            yield from node_consumers(project, path, node, name, kinds, module_types)
    if "attribute" in kinds and path != getattr(owner, "path", None) and name in text:
        # every class's ancestry is read, as the walk did, so the files this answer reads stay the same
        derives = {None: False} | {qualname: _derives(project, owner, path, qualname) for qualname in facts.classes}
        for node, class_name in facts.attributes.get(name, ()):
            if derives[class_name] or dotted_text(node.value) != "self":
                yield Consumer(path, node.lineno, f"`{ast.unparse(node)}` reaches `{name}`")


_FACTS: "weakref.WeakKeyDictionary[ast.Module, _FileFacts]" = weakref.WeakKeyDictionary()


def _facts(tree: ast.Module) -> "_FileFacts":
    """One walk per parsed tree: a file given new text gets a new tree (`ProjectIndex.add`), so a
    new entry, and the old one goes with its tree."""
    facts = _FACTS.get(tree)
    if facts is None:
        facts = _FACTS[tree] = _FileFacts(tree)
    return facts


class _FileFacts:
    """The nodes of one file that can answer a question about some name, filed by that name, in the
    order of `ast.walk`, so that each question looks at its own few nodes instead of the file."""

    def __init__(self, tree: ast.Module) -> None:
        self.by_name: dict[str, list[tuple[int, ast.AST]]] = {}
        self.loops: list[tuple[int, ast.AST]] = []  # walks over `modules()` and the like: every name
        self.functions: list[tuple[int, ast.AST]] = []  # outer functions holding an assert: key counts, any name
        self.hooks: list[ast.Call] = []  # every hook registration, in the order of the text
        self.type_tests: list[ast.Call] = []  # every `isinstance(x, T)`, in the order of the text
        self.local_imports: dict[str, set[str]] = {}  # name -> what an import below module level binds
        outer = {id(f) for f in outer_functions(tree.body)}
        module_level = {id(statement) for statement in tree.body}
        asserts: list[int] = []  # the line of every `assert`: a function without one counts no keys
        asked = _ASKED
        for order, node in enumerate(walked(tree)):
            kind = node.__class__
            if kind not in asked:
                asked[kind] = issubclass(kind, _ASKED_BASES)
            if not asked[kind]:
                continue
            if isinstance(node, ast.Call):
                self._file(order, node, _call_names(node))
                if isinstance(node.func, ast.Attribute) and node.func.attr in HOOKS:
                    self.hooks.append(node)
                elif isinstance(node.func, ast.Name) and node.func.id == "isinstance" and len(node.args) == 2:
                    self.type_tests.append(node)
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in module_level:
                self._import(node)
            elif isinstance(node, (ast.For, ast.comprehension)):
                if _walks_modules(node):
                    self.loops.append((order, node))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if id(node) in outer:
                    self.functions.append((order, node))
            elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                self._file(order, node, {e.value for e in node.elts
                                         if isinstance(e, ast.Constant) and isinstance(e.value, str)})
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 200:
                self._file(order, node, set(node.value.split(".")))
            elif isinstance(node, ast.Assert):
                asserts.append(node.lineno)
        asserts.sort()
        self.functions = [(order, node) for order, node in self.functions
                          if _any_between(asserts, node.lineno, node.end_lineno or node.lineno)]
        self.attributes: dict[str, list[tuple[ast.Attribute, str | None]]] = {}
        self._key_counts: dict[tuple[int, str], list[Consumer]] = {}  # by outer function (kept by the tree)
        self.classes: list[str] = []  # qualified names of the classes `_attributes` enters, in its order
        self._attributes(tree.body, None, "")
        self.hooks.sort(key=_in_text)
        self.type_tests.sort(key=_in_text)

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                self.local_imports.setdefault(bound, set()).add(alias.name if alias.asname else bound)
        elif node.module and not node.level:
            for alias in node.names:
                self.local_imports.setdefault(alias.asname or alias.name, set()).add(f"{node.module}.{alias.name}")

    def _file(self, order: int, node: ast.AST, names: set[str]) -> None:
        for name in names:
            self.by_name.setdefault(name, []).append((order, node))

    def _attributes(self, body: list[ast.stmt], class_name: str | None, prefix: str) -> None:
        """`<expr>.name` by name, with the class (qualified name) whose body holds it directly."""
        for statement in body:
            if isinstance(statement, ast.ClassDef):
                self.classes.append(prefix + statement.name)
                self._attributes(statement.body, prefix + statement.name, prefix + statement.name + ".")
                continue
            for node in walked(statement):
                if isinstance(node, ast.Attribute):
                    self.attributes.setdefault(node.attr, []).append((node, class_name))

    def key_counts(self, function: ast.FunctionDef | ast.AsyncFunctionDef, path: str) -> list[Consumer]:
        key = (id(function), path)
        if key not in self._key_counts:
            self._key_counts[key] = list(_key_counts(function, path))
        return self._key_counts[key]

    def candidates(self, name: str, with_functions: bool) -> list[ast.AST]:
        found = self.by_name.get(name, []) + self.loops + (self.functions if with_functions else [])
        return [node for _, node in sorted(found, key=lambda pair: pair[0])]


# The node types the walk of `_FileFacts` files something for (subclasses found once, per type).
_ASKED_BASES = (ast.Call, ast.Import, ast.ImportFrom, ast.For, ast.comprehension, ast.FunctionDef,
                ast.AsyncFunctionDef, ast.List, ast.Tuple, ast.Set, ast.Constant, ast.Assert)
_ASKED: dict[type, bool] = {}


def _any_between(lines: list[int], first: int, last: int) -> bool:
    """Whether the sorted `lines` hold one in first..last (a function's lines hold all its nodes)."""
    at = bisect.bisect_left(lines, first)
    return at < len(lines) and lines[at] <= last


def _in_text(node: ast.expr) -> tuple[int, int, int, int]:
    """Sorts nodes as they start in the text, an enclosing call before the calls inside it."""
    return node.lineno, node.col_offset, -(node.end_lineno or 0), -(node.end_col_offset or 0)


def _call_names(node: ast.Call) -> set[str]:
    """The names a call can answer for: the attribute a hook is registered on, or the strings a
    look-up by name is given (whole and split at dots)."""
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr in HOOKS:
        return {func.value.attr} if isinstance(func.value, ast.Attribute) else set()
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if called not in _BY_NAME:
        return set()
    names: set[str] = set()
    for a in node.args:
        if isinstance(a, ast.Constant) and isinstance(a.value, str):
            names.add(a.value)
            if len(a.value) < 200:
                names.update(a.value.split("."))
    return names


def _derives(project: ProjectIndex, owner: Symbol | None, path: str, qualname: str) -> bool:
    """Whether a class of `path` derives from the owner (then its `self.name` is the owner's own)."""
    symbol = project.class_symbol(path, qualname)
    return owner is not None and symbol is not None and owner in project.ancestors(symbol)


def node_consumers(project: ProjectIndex, path: str, node: ast.AST, name: str, kinds, module_types):
    """What one node of a file says about `name` (a function is asked only when it is an outer one
    and its file asserts something)."""
    if "hook" in kinds and isinstance(node, ast.Call) and _hook_call(node, name):
        yield Consumer(path, node.lineno, f"a hook is registered on `.{name}`")
    elif "hook" in kinds and isinstance(node, (ast.For, ast.comprehension)) and _walks_modules(node):
        yield from _selected_hooks(project, path, node, name, module_types)
    elif "key" in kinds and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        yield from _key_counts(node, path)
    elif "string" in kinds and isinstance(node, (ast.List, ast.Tuple, ast.Set)) and any(
            isinstance(e, ast.Constant) and e.value == name for e in node.elts):
        yield Consumer(path, node.lineno, f"a list of names includes {name!r}")
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _names(node.value, name):
        if "key" in kinds and "." in node.value:
            yield Consumer(path, node.lineno, f"the string {node.value!r} names `{name}`")
    elif "string" in kinds and isinstance(node, ast.Call) and _by_name(node, name):
        yield Consumer(path, node.lineno, f"`{ast.unparse(node.func)}` looks up `{name}` by name")


def outer_functions(body: list[ast.stmt]):
    """Functions and methods not nested in another function (a nested one is walked with its parent)."""
    for statement in body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield statement
        elif isinstance(statement, ast.ClassDef):
            yield from outer_functions(statement.body)
        elif isinstance(statement, (ast.If, ast.Try)):
            yield from outer_functions(statement.body + statement.orelse)


def _names(text: str, name: str) -> bool:
    return len(text) < 200 and name in text.split(".")


def _hook_call(node: ast.Call, name: str) -> bool:
    func = node.func
    return isinstance(func, ast.Attribute) and func.attr in HOOKS and isinstance(func.value, ast.Attribute) \
        and func.value.attr == name


def _by_name(node: ast.Call, name: str) -> bool:
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if called not in _BY_NAME:
        return False
    return any(isinstance(a, ast.Constant) and isinstance(a.value, str) and (a.value == name or _names(a.value, name))
               for a in node.args)


def _walks_modules(node: ast.For | ast.comprehension) -> bool:
    it = node.iter
    return isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr in _WALKS


def _selected_hooks(project: ProjectIndex, path: str, loop, name: str, module_types):
    """Hooks registered while walking a model's modules, when the walk may pick `name`."""
    body = loop.body if isinstance(loop, ast.For) else []
    registrations = [n for statement in body for n in ast.walk(statement)
                     if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in HOOKS]
    if not registrations:
        return
    tests = [n.test for statement in body for n in ast.walk(statement) if isinstance(n, (ast.If, ast.IfExp))]
    if not tests:
        yield Consumer(path, registrations[0].lineno, "hooks are registered on every module")
        return
    facts = _facts(project.summary(path).tree)
    for test in tests:
        for part in ast.walk(test):
            if isinstance(part, ast.Call) and dotted_text(part.func) == "isinstance" and len(part.args) == 2:
                text = _tested_type(project, path, facts, part, module_types)
                if text is not None:
                    yield Consumer(path, registrations[0].lineno, f"hooks are registered on every `{text}` module")
                    return
            if isinstance(part, ast.Constant) and isinstance(part.value, str) and part.value and \
                    (part.value in name or name in part.value):
                yield Consumer(path, registrations[0].lineno,
                               f"hooks are registered on modules whose name matches {part.value!r}")
                return


def _key_counts(function: ast.FunctionDef | ast.AsyncFunctionDef, path: str):
    """`assert len(sd_keys) == len(sd_keys_hf)` in a function that reads a `state_dict()`."""
    asserts, reads = [], False
    for node in walked(function):
        if isinstance(node, ast.Assert):
            asserts.append(node)
        elif isinstance(node, ast.Attribute) and node.attr == "state_dict":
            reads = True
    for node in asserts if reads else []:
        if isinstance(node.test, ast.Compare) and any(isinstance(op, ast.Eq) for op in node.test.ops):
            sides = [node.test.left, *node.test.comparators]
            if sum(isinstance(s, ast.Call) and dotted_text(s.func) == "len" for s in sides) >= 2:
                yield Consumer(path, node.lineno, f"`{function.name}` counts the state_dict keys")
