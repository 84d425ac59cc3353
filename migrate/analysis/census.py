"""A deliberately broad look at a file, by meaning: where do tensors flow, whatever the spelling?

The precise matchers (attention.py, ffn.py, the rules' own recognisers) accept only what they
can rewrite. The census beside them asks a looser question, so that a legacy component the
matcher cannot follow still gets an outcome instead of silence. It reads Python's `ast` of the
file (cheap, and the census needs no rewriting), follows names through every assignment of a
function (line order only: loops and branches are not told apart, which over-approximates), and
`self.X` through every method that assigns it. Attribute reads that are not values
(`.shape`, `.dtype`, `.device`, `.size()`) are not followed.

Everything here is shared by the rules' `census.py` modules; rule-specific patterns live there.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

from tf_migrate.analysis.walked import walked

if TYPE_CHECKING:
    from tf_migrate.engine.context import FileContext

# Reads of a tensor that are not its values: following them would make every size depend on x.
META_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"})
META_METHODS = frozenset({"size", "dim", "numel", "type_as_dtype", "get_device", "is_floating_point",
                          "element_size", "stride"})
# Functions that build a new tensor from another one's shape, dtype and device alone
# (`torch.ones_like(scores)`): like `.shape`, not a use of its values.
META_FUNCTIONS = frozenset({"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
                            "randint_like"})
# Methods whose argument gives only its shape or dtype (`x.type_as(p)`, `m.expand_as(scores)`).
META_ARGUMENT_METHODS = frozenset({"type_as", "expand_as", "view_as", "reshape_as"})
_BUDGET = 200  # nodes visited per walk: chains are short; this bounds odd code


def dotted(node: ast.AST) -> str:
    """`torch.nn.functional.softmax` for that attribute chain; '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    if isinstance(node, ast.Call):  # nn.Softmax(dim=-1)(x): the class's name
        inner = dotted(node.func)
        return ".".join([inner, *reversed(parts)]) if inner else ""
    return ""


def last_name(node: ast.AST) -> str:
    """The last segment of a callee: `softmax` for `F.softmax`, `x.softmax`, `nn.Softmax(...)`."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def self_attribute(node: ast.AST) -> str | None:
    """`X` for `self.X`."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def literal_string(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


@dataclass(eq=False)
class ClassInfo:
    node: ast.ClassDef
    qualname: str
    # self.X -> every value assigned to it (`self.X = v`, `register_buffer("X", v)`, `setattr`)
    attributes: dict[str, list[ast.expr]] = field(default_factory=dict)
    methods: dict[str, ast.FunctionDef] = field(default_factory=dict)

    def constructor(self, attribute: str) -> str:
        """The callee that built `self.X` (`nn.Linear`, `make_linear`), '' when not a call."""
        for value in self.attributes.get(attribute, ()):
            if isinstance(value, ast.Call):
                return dotted(value.func)
        return ""

    def constructor_call(self, attribute: str) -> ast.Call | None:
        return next((v for v in self.attributes.get(attribute, ()) if isinstance(v, ast.Call)), None)


@dataclass(eq=False)
class Function:
    """One function (or the module body) with its local bindings, for the walks."""

    node: ast.AST
    cls: ClassInfo | None
    qualname: str
    # name -> (line, value, conditional) for every binding; a tuple target binds each name to the
    # whole value; conditional: inside an if/while/try/with of this function (it may not run)
    bindings: dict[str, list[tuple[int, ast.expr, bool]]] = field(default_factory=dict)
    loads: dict[str, list[ast.Name]] = field(default_factory=dict)
    # name -> the iterable of a `for`/comprehension target (`l` in `for l, x in zip(self.ls, ...)`)
    iterated: dict[str, ast.expr] = field(default_factory=dict)

    @property
    def lines(self) -> tuple[int, int]:
        return (getattr(self.node, "lineno", 1), getattr(self.node, "end_lineno", 1) or 1)

    def definitions(self, name: str, line: int) -> list[ast.expr]:
        """The bindings that may reach `line`: the nearest one before it, and the ones before that
        while each is conditional (a `for` body counts as run; a loop's later bindings are not
        followed). A name bound only on or after `line` (a loop) gives its first bindings."""
        found = self.bindings.get(name, [])
        reaching = []
        for at, value, conditional in reversed([b for b in found if b[0] < line]):
            reaching.append(value)
            if not conditional or len(reaching) == 3:
                break
        return reaching or [value for at, value, _ in found if at == line] or [v for _, v, _ in found][:3]


class FileIndex:
    """Classes, functions and a parent map of one file's `ast`, built once per file context."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.parents: dict[ast.AST, ast.AST] = {}
        self.classes: list[ClassInfo] = []
        self.functions: list[Function] = []
        self.owner: dict[ast.AST, Function] = {}  # every node -> the innermost function holding it
        self.by_name: dict[str, list[Function]] = {}  # plain function/method name -> functions
        self.class_by_name: dict[str, ClassInfo] = {}
        self.calls: list[ast.Call] = []  # every call of the file, in walk order
        self._calls_named: dict[str, list[ast.Call]] | None = None  # see `calls_named`
        self._imports: list[ast.AST] = []  # Import/ImportFrom nodes, met by the scan
        module = Function(tree, None, "<module>")
        self.functions.append(module)
        self._scan(tree, module, None, "", False)
        # names bound by imports (`th`, `Fn`, `tnn`): a receiver named so is a namespace, not a tensor
        self.modules: frozenset[str] = frozenset(
            (alias.asname or alias.name).split(".")[0] for node in self._imports for alias in node.names)
        del self._imports

    def _scan(self, node: ast.AST, function: Function, cls: ClassInfo | None, prefix: str,
              branch: bool) -> None:
        """Every child of `node` (the order of `ast.iter_child_nodes`, depth first), then its own
        children. `branch`: whether `node` lies in an if/while/try/with/match of `function`."""
        parents, owner, kinds = self.parents, self.owner, _KINDS
        inside = branch or _conditional_type(node.__class__)  # what the children of `node` lie in
        for field in node._fields:
            value = getattr(node, field, None)
            if isinstance(value, list):
                children = value
            elif isinstance(value, _AST):
                children = (value,)
            else:
                continue
            for child in children:
                if not isinstance(child, _AST):  # `Dict.keys`' None for `**d`, `Global.names`
                    continue
                parents[child] = node
                owner[child] = function
                kind = kinds.get(child.__class__)
                if kind is None:
                    kind = kinds[child.__class__] = _kind(child.__class__)
                if kind is _LEAF:  # `Load()`, `Add()`: no children, nothing recorded
                    continue
                if kind is _NAME:  # the most frequent node: its one child, `ctx`, without a call
                    if isinstance(child.ctx, ast.Load):
                        function.loads.setdefault(child.id, []).append(child)
                    ctx = child.ctx
                    if ctx.__class__ in _CONTEXTS:
                        parents[ctx] = child
                        owner[ctx] = function
                    else:
                        self._scan(child, function, cls, prefix, inside)
                    continue
                if kind is _CONSTANT:  # no child unless its value is a node (never, when parsed)
                    if isinstance(child.value, (list, _AST)):
                        self._scan(child, function, cls, prefix, inside)
                    continue
                if kind is _CLASS:
                    info = ClassInfo(child, prefix + child.name)
                    self.classes.append(info)
                    self.class_by_name.setdefault(child.name, info)
                    self._scan(child, function, info, info.qualname + ".", inside)
                    continue
                if kind is _FUNCTION:
                    inner = Function(child, cls, prefix + child.name)
                    self.functions.append(inner)
                    self.by_name.setdefault(child.name, []).append(inner)
                    if cls is not None and node is cls.node:
                        cls.methods[child.name] = inner.node
                    _bind(function, child.name, child.lineno, child)
                    for arg in _arguments(child.args):
                        inner.bindings.setdefault(arg.arg, []).append((child.lineno, arg, False))
                    self._scan(child, inner, cls, inner.qualname + ".", False)
                    continue
                if kind is not _OTHER:
                    self._record(child, kind, function, cls, inside)
                self._scan(child, function, cls, prefix, inside)

    def _record(self, node: ast.AST, kind: int, function: Function, cls: ClassInfo | None,
                conditional: bool) -> None:
        """What one node binds, loads or calls. `conditional`: whether it lies in an
        if/while/try/with/match of `function` (a `for` counts as run)."""
        if kind is _CALL:  # (a Name's load is recorded by `_scan` itself)
            self.calls.append(node)
            if cls is None:
                return
            name = last_name(node.func)
            if name in ("register_buffer", "register_parameter") and len(node.args) >= 2:
                key = literal_string(node.args[0])
                if key:
                    cls.attributes.setdefault(key, []).append(node.args[1])
            elif name == "setattr" and len(node.args) == 3 and isinstance(node.args[0], ast.Name) \
                    and node.args[0].id == "self" and literal_string(node.args[1]):
                cls.attributes.setdefault(literal_string(node.args[1]), []).append(node.args[2])
        elif kind is _ASSIGN:
            for target in node.targets:  # `a = b = v` binds both: chained assignments are assignments
                self._target(target, node.value, node.lineno, function, cls, conditional)
        elif kind is _ANNOTATED:
            if node.value is not None:
                value = node.value
                if isinstance(node, ast.AugAssign):
                    value = ast.BinOp(left=_load_copy(node.target), op=node.op, right=node.value)
                    ast.copy_location(value, node)
                    self.parents[value] = node
                    self.parents[value.left] = value
                self._target(node.target, value, node.lineno, function, cls, conditional)
        elif kind is _NAMED:
            self._target(node.target, node.value, node.lineno, function, cls, conditional)
        elif kind is _FOR:
            self._target(node.target, node.iter, node.lineno, function, cls, conditional)
            self._iterated(node.target, node.iter, function)
        elif kind is _COMPREHENSION:
            self._target(node.target, node.iter, node.iter.lineno, function, cls, conditional)
            self._iterated(node.target, node.iter, function)
        elif kind is _WITH:
            for item in node.items:
                if item.optional_vars is not None:
                    self._target(item.optional_vars, item.context_expr, node.lineno, function, cls, conditional)
        elif kind is _IMPORT:
            self._imports.append(node)

    def _target(self, target: ast.AST, value: ast.expr, line: int, function: Function,
                cls: ClassInfo | None, conditional: bool) -> None:
        if isinstance(target, ast.Name):
            _bind(function, target.id, line, value, conditional)
        elif isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)) \
                and len(target.elts) == len(value.elts) \
                and not any(isinstance(e, ast.Starred) for e in (*target.elts, *value.elts)):
            for element, part in zip(target.elts, value.elts):  # `q, k = a(x), b(x)`: pairwise
                self._target(element, part, line, function, cls, conditional)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._target(element.value if isinstance(element, ast.Starred) else element,
                             value, line, function, cls, conditional)
        elif isinstance(target, ast.Subscript):  # `pe[:, 0::2] = sin(...)`: pe holds the value
            root = _root_name(target)
            if root is not None:  # a partial update: what was there before still reaches
                _bind(function, root, line, value, conditional=True)
            elif cls is not None and self_attribute(_root(target)):
                cls.attributes.setdefault(self_attribute(_root(target)), []).append(value)
        elif isinstance(target, ast.Attribute):
            attribute = self_attribute(target) or self_attribute(_root(target))
            if cls is not None and attribute:
                cls.attributes.setdefault(attribute, []).append(value)

    @staticmethod
    def _iterated(target: ast.AST, iterable: ast.expr, function: Function) -> None:
        if isinstance(target, ast.Name):
            function.iterated[target.id] = iterable
        elif isinstance(target, (ast.Tuple, ast.List)) and isinstance(iterable, ast.Call) \
                and last_name(iterable.func) == "zip":
            for element, source in zip(target.elts, iterable.args):
                if isinstance(element, ast.Name):
                    function.iterated[element.id] = source

    def calls_named(self, name: str) -> list[ast.Call]:
        """The file's calls `name(...)` of a plain name, in `calls` order: one table per file,
        built on the first question, not a scan of every call per question."""
        if self._calls_named is None:
            self._calls_named = {}
            for call in self.calls:
                if isinstance(call.func, ast.Name):
                    self._calls_named.setdefault(call.func.id, []).append(call)
        return self._calls_named.get(name, [])

    def function_of(self, node: ast.AST) -> Function:
        current: ast.AST | None = node
        while current is not None and current not in self.owner:
            current = self.parents.get(current)
        if current is None:
            return self.functions[0]
        if isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef)) and current is node:
            return self.owner[current]
        return self.owner[current]

    def statement_of(self, node: ast.AST) -> ast.stmt | None:
        current: ast.AST | None = node
        while current is not None and not isinstance(current, ast.stmt):
            current = self.parents.get(current)
        return current

    def class_of(self, function: Function) -> ClassInfo | None:
        return function.cls


def _arguments(args: ast.arguments) -> list[ast.arg]:
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    return every + [a for a in (args.vararg, args.kwarg) if a is not None]


def _bind(function: Function, name: str, line: int, value: ast.AST, conditional: bool = False) -> None:
    function.bindings.setdefault(name, []).append((line, value, conditional))


# What `FileIndex._scan` does with a node, by its type (`_kind`, remembered per type in `_KINDS`).
_LEAF, _OTHER, _CLASS, _FUNCTION, _NAME, _CALL, _ASSIGN, _ANNOTATED, _NAMED, _FOR, _COMPREHENSION, _WITH, \
    _IMPORT, _CONSTANT = range(14)
_KINDS: dict[type, int] = {}
_CONTEXTS = frozenset({ast.Load, ast.Store, ast.Del})  # a Name's `ctx`: no fields, nothing recorded
_AST = ast.AST


def _kind(node_type: type) -> int:
    if not node_type._fields:
        return _LEAF  # expression contexts and operators: no children, nothing to record
    for base, kind in ((ast.ClassDef, _CLASS), ((ast.FunctionDef, ast.AsyncFunctionDef), _FUNCTION),
                       (ast.Name, _NAME), (ast.Call, _CALL), (ast.Assign, _ASSIGN),
                       ((ast.AnnAssign, ast.AugAssign), _ANNOTATED), (ast.NamedExpr, _NAMED),
                       ((ast.For, ast.AsyncFor), _FOR), (ast.comprehension, _COMPREHENSION),
                       ((ast.With, ast.AsyncWith), _WITH), ((ast.Import, ast.ImportFrom), _IMPORT),
                       (ast.Constant, _CONSTANT)):
        if issubclass(node_type, base):
            return kind
    return _OTHER


_CONDITIONAL_TYPES: dict[type, bool] = {}


def _conditional_type(node_type: type) -> bool:
    """An if/while/try/with/match: what lies inside it may not run (a `for` counts as run)."""
    found = _CONDITIONAL_TYPES.get(node_type)
    if found is None:
        found = _CONDITIONAL_TYPES[node_type] = issubclass(
            node_type, (ast.If, ast.While, ast.Try, ast.With, ast.AsyncWith, ast.Match)) \
            or node_type.__name__ == "TryStar"
    return found


def _load_copy(target: ast.AST) -> ast.expr:
    if isinstance(target, ast.Name):
        copy = ast.Name(id=target.id, ctx=ast.Load())
        return ast.copy_location(copy, target)
    return target


def _root(node: ast.AST) -> ast.AST:
    while isinstance(node, (ast.Subscript, ast.Attribute)) and not self_attribute(node):
        node = node.value
    return node


def _root_name(node: ast.AST) -> str | None:
    root = _root(node)
    return root.id if isinstance(root, ast.Name) and root.id != "self" else None


def file_index(ctx: "FileContext") -> FileIndex:
    """The census index of the file as the context holds it (shared by every rule's census), on the
    `ast` the project holds for the same text (the engine's parse, or one the summary shares)."""
    def compute():
        tree = ctx.project.shared_tree(ctx.project_key, ctx.text)
        return FileIndex(tree if tree is not None else ast.parse(ctx.text))

    return ctx.memo("census.index", compute)


def is_parameter(function: Function, node: ast.AST) -> bool:
    return isinstance(node, ast.arg)


def operands(node: ast.AST, modules: frozenset[str] = frozenset()) -> list[ast.AST]:
    """The value inputs of an expression, not counting reads of shape, dtype or device."""
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in META_METHODS:
            return []
        if last_name(func) == "len":
            return []
        if isinstance(func, ast.Attribute) and func.attr in META_ARGUMENT_METHODS and len(node.args) == 1 \
                and not is_namespace(func.value, modules):
            return [func.value]
        if metadata_call(node, modules):
            return [a for a in node.args[1:]] + [k.value for k in node.keywords if k.arg == "fill_value"]
        inner = [func.value] if isinstance(func, ast.Attribute) and not self_attribute(func) \
            and not is_namespace(func.value, modules) else []
        return inner + [a.value if isinstance(a, ast.Starred) else a for a in node.args] \
            + [k.value for k in node.keywords if k.arg not in ("dtype", "device", "dim", "out")]
    if isinstance(node, ast.BinOp):
        return [node.left, node.right]
    if isinstance(node, ast.UnaryOp):
        return [node.operand]
    if isinstance(node, ast.Subscript):
        return [node.value]
    if isinstance(node, ast.Attribute):
        return [] if node.attr in META_ATTRIBUTES else [node.value]
    if isinstance(node, ast.IfExp):
        return [node.body, node.orelse]
    if isinstance(node, (ast.Tuple, ast.List)):
        return [e.value if isinstance(e, ast.Starred) else e for e in node.elts]
    if isinstance(node, (ast.ListComp, ast.GeneratorExp)):
        return [node.elt]
    if isinstance(node, ast.Starred):
        return [node.value]
    return []


def metadata_call(node: ast.AST, modules: frozenset[str] = frozenset()) -> bool:
    """`torch.ones_like(x)`, `zeros_like`, `full_like`, ...: reads only the shape, dtype and device
    of its first argument."""
    if not isinstance(node, ast.Call) or last_name(node.func) not in META_FUNCTIONS:
        return False
    return isinstance(node.func, ast.Name) or is_namespace(node.func.value, modules)


def is_namespace(node: ast.AST, modules: frozenset[str] = frozenset()) -> bool:
    """`torch`, `F`, `nn.functional`, `np`, or any imported name: a namespace, not a tensor a
    method is called on."""
    if not isinstance(node, (ast.Name, ast.Attribute)):
        return False
    name = dotted(node)
    root = name.split(".")[0] if name else ""
    return root in modules or root in _NAMESPACES


_NAMESPACES = frozenset({"torch", "F", "nn", "np", "numpy", "math", "jnp", "functional", "einops",
                         "opt_einsum"})


class Walker:
    """Backward and forward walks over one file's index."""

    def __init__(self, index: FileIndex) -> None:
        self.index = index
        self._tables: tuple | None = None  # `_call_tables`, built on the first question
        self._reads: dict[ClassInfo, dict[str, list[ast.AST]]] = {}  # class -> `attribute_reads` by name

    def back(self, expr: ast.AST, hit: Callable[[ast.AST, Function], bool],
             stop: Callable[[ast.AST, Function], bool] | None = None,
             into_functions: bool = False) -> ast.AST | None:
        """The nearest node (breadth first) that `hit` accepts among what `expr` is computed from.
        `stop` nodes are not entered. Names follow their bindings; `self.X` follows every value
        assigned to it in the class; with `into_functions`, a call of a function of this file
        follows that function's return values."""
        seen: set[int] = set()
        queue = deque([expr])
        visited = 0
        while queue and visited < _BUDGET:
            node = queue.popleft()
            if id(node) in seen:
                continue
            seen.add(id(node))
            visited += 1
            function = self.index.function_of(node)
            if node is not expr and hit(node, function):
                return node
            if node is expr and hit(node, function) and not isinstance(node, ast.Name):
                return node
            if stop is not None and node is not expr and stop(node, function):
                continue
            queue.extend(self._inputs(node, function, into_functions))
        return None

    def leaves(self, expr: ast.AST, stop: Callable[[ast.AST, Function], bool] | None = None) -> set[str]:
        """The function parameters and `self.X` attributes `expr` is computed from."""
        found: set[str] = set()

        def hit(node, function):
            if isinstance(node, ast.arg):
                found.add(node.arg)
            elif self_attribute(node) is not None and function.cls is not None \
                    and self_attribute(node) not in function.cls.attributes:
                found.add("self." + self_attribute(node))
            return False

        self.back(expr, hit, stop)
        return found

    def _inputs(self, node: ast.AST, function: Function, into_functions: bool) -> list[ast.AST]:
        if isinstance(node, ast.Name):
            line = self._statement_line(node)
            return list(function.definitions(node.id, line)) or self._outer(node, function)
        attribute = self_attribute(node)
        if attribute is not None and function.cls is not None:
            return list(function.cls.attributes.get(attribute, ()))[:4]
        if isinstance(node, ast.arg):
            return self.arguments_for(node) if into_functions else []
        found = operands(node, self.index.modules)
        if into_functions and isinstance(node, ast.Call):
            for callee in self.local_functions(node, function):
                found.extend(r.value for r in walked(callee.node)
                             if isinstance(r, ast.Return) and r.value is not None)
        return found

    def _statement_line(self, node: ast.AST) -> int:
        """The first line of the statement holding `node`: a read on the second line of
        `x = (2 *\n x)` is reached by the binding before that statement, not by the statement itself."""
        current = node
        while current is not None and not isinstance(current, ast.stmt):
            current = self.index.parents.get(current)
        return current.lineno if current is not None else node.lineno

    def arguments_for(self, parameter: ast.arg) -> list[ast.AST]:
        """What the callers in this file pass for `parameter`: `self.method(...)` calls in the
        class, `self.sub(...)` calls of a submodule built from the class (for `forward`), and calls
        of a plain function by name."""
        function = self._call_tables()[0].get(id(parameter))
        if function is None:
            return []
        params = [*function.node.args.posonlyargs, *function.node.args.args]
        if parameter not in params:
            position = None
        else:
            position = params.index(parameter) - (1 if self.is_method(function) else 0)
        found = []
        for call in self._callers(function):
            keyword = next((k.value for k in call.keywords if k.arg == parameter.arg), None)
            if keyword is not None:
                found.append(keyword)
            elif position is not None and 0 <= position < len(call.args) \
                    and not any(isinstance(a, ast.Starred) for a in call.args[:position + 1]):
                found.append(call.args[position])
        return found[:4]

    def is_method(self, function: Function) -> bool:
        """Defined in a class body (its first parameter is `self`), not a function nested in a method."""
        return function.cls is not None and self.index.parents.get(function.node) is function.cls.node

    def _callers(self, function: Function) -> Iterator[ast.Call]:
        name = function.node.name
        cls = function.cls if self.is_method(function) else None
        _, named, by_attribute, by_constructor = self._call_tables()
        if cls is None:
            yield from named.get(name, ())
            return
        found = {at: call for at, call, caller in by_attribute.get(name, ()) if caller.cls is cls}
        if name == "forward":
            found.update((at, call) for at, call in by_constructor.get(cls.node.name, ()))
        for at in sorted(found):  # the order of `index.calls`
            yield found[at]

    def _call_tables(self) -> tuple[dict, dict, dict, dict]:
        """Look-ups that answer `arguments_for` and `_callers` without a scan of every function and
        call of the file per question: parameter (by id) -> the first function that declares it;
        plain name -> its calls; `self.X(...)` calls by X, and by the last part of X's constructor
        (with their place in `index.calls` and the calling function)."""
        if self._tables is None:
            owners: dict[int, Function] = {}
            for f in self.index.functions:
                if isinstance(f.node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for parameter in _arguments(f.node.args):
                        owners.setdefault(id(parameter), f)
            named: dict[str, list[ast.Call]] = {}
            by_attribute: dict[str, list] = {}
            by_constructor: dict[str, list] = {}
            for at, call in enumerate(self.index.calls):
                if isinstance(call.func, ast.Name):
                    named.setdefault(call.func.id, []).append(call)
                attribute = self_attribute(call.func)
                if attribute is None:
                    continue
                caller = self.index.function_of(call)
                by_attribute.setdefault(attribute, []).append((at, call, caller))
                if caller.cls is not None:
                    key = caller.cls.constructor(attribute).rsplit(".", 1)[-1]
                    by_constructor.setdefault(key, []).append((at, call))
            self._tables = owners, named, by_attribute, by_constructor
        return self._tables

    def _outer(self, node: ast.Name, function: Function) -> list[ast.AST]:
        """A name a nested function reads from its enclosing function (or the module)."""
        parent = self.index.owner.get(function.node)
        while parent is not None:
            values = parent.definitions(node.id, 10 ** 9) if node.id in parent.bindings else []
            if values:
                return [v for v in values if not isinstance(v, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                 ast.ClassDef))]
            if parent is self.index.functions[0]:
                break
            parent = self.index.owner.get(parent.node)
        return []

    def local_functions(self, call: ast.Call, function: Function) -> list[Function]:
        """Functions of this file a call may run: `helper(...)` by name, `self.method(...)`."""
        func = call.func
        if isinstance(func, ast.Name):
            return [f for f in self.index.by_name.get(func.id, []) if f.node is not function.node][:2]
        attribute = self_attribute(func)
        if attribute and function.cls is not None and attribute in function.cls.methods:
            method = function.cls.methods[attribute]
            return [f for f in self.index.by_name.get(attribute, []) if f.node is method]
        return []

    def forward(self, node: ast.AST, hit: Callable[[ast.AST, Function], bool],
                follow_call: Callable[[ast.Call, Function], bool],
                follow_returns: Callable[[Function], Iterator[ast.AST]] | None = None) -> ast.AST | None:
        """The nearest expression (breadth first) computed from `node` that `hit` accepts.
        The value flows up through enclosing expressions (a call only when `follow_call` says so),
        into the names and `self.X` it is assigned to, and, with `follow_returns`, out of a
        function to the places that function's caller gives back."""
        return next(self.forward_every(node, hit, follow_call, follow_returns), None)

    def forward_every(self, node: ast.AST, hit: Callable[[ast.AST, Function], bool],
                      follow_call: Callable[[ast.Call, Function], bool],
                      follow_returns: Callable[[Function], Iterator[ast.AST]] | None = None
                      ) -> Iterator[ast.AST]:
        """Every expression `forward` would accept, nearest first; the walk does not go on past
        a hit (what is computed from a hit is the hit's business)."""
        seen: set[int] = set()
        queue = deque([node])
        visited = 0
        parents = self.index.parents
        while queue and visited < _BUDGET:
            current = queue.popleft()
            if id(current) in seen:
                continue
            seen.add(id(current))
            visited += 1
            function = self.index.function_of(current)
            if current is not node and hit(current, function):
                yield current
                continue
            parent = parents.get(current)
            if parent is None:
                continue
            if isinstance(parent, ast.Call) and current is not parent.func:
                queue.extend(self._stored(parent, function))
                if follow_call(parent, function):
                    queue.append(parent)
                continue
            if isinstance(parent, ast.Attribute) and parent.attr in META_ATTRIBUTES:
                continue
            if isinstance(parent, (ast.expr, ast.keyword, ast.comprehension)) \
                    and not isinstance(parent, ast.Lambda):
                queue.append(parent)
                continue
            queue.extend(self._assigned(parent, current, function, follow_returns))

    def _stored(self, call: ast.Call, function: Function) -> list[ast.AST]:
        """A value handed to `register_buffer("pe", v)`, `setattr(self, "pe", v)` or
        `self.pe.weight.data.copy_(v)` is read wherever `self.pe` is."""
        if function.cls is None:
            return []
        name = last_name(call.func)
        attribute = None
        if name in ("register_buffer", "register_parameter", "setattr") and call.args:
            attribute = literal_string(call.args[1 if name == "setattr" else 0]) if len(call.args) > 1 else None
        elif name == "copy_" and isinstance(call.func, ast.Attribute):
            attribute = self_attribute(_root(call.func.value))
        return self.attribute_reads(function.cls, attribute) if attribute else []

    def _assigned(self, statement: ast.AST, value: ast.AST, function: Function,
                  follow_returns) -> list[ast.AST]:
        targets: list[ast.AST] = []
        if isinstance(statement, ast.Assign):
            targets = list(statement.targets)
        elif isinstance(statement, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
            targets = [statement.target]
        elif isinstance(statement, (ast.For, ast.comprehension)):
            targets = [statement.target]
        elif isinstance(statement, ast.Return) and follow_returns is not None:
            return list(follow_returns(function))
        found: list[ast.AST] = []
        line = getattr(statement, "lineno", 0)
        for target in targets:
            for name in _bound_names(target):
                found.extend(n for n in function.loads.get(name, []) if n.lineno > line)
            attribute = self_attribute(target) or self_attribute(_root(target))
            if attribute and function.cls is not None:
                found.extend(self.attribute_reads(function.cls, attribute))
        return found

    def attribute_reads(self, cls: ClassInfo, attribute: str) -> list[ast.AST]:
        """Every read of `self.<attribute>` in the class (nested classes included), in `ast.walk`'s
        order: one walk per class, filed by attribute, not one walk per question."""
        reads = self._reads.get(cls)
        if reads is None:
            reads = self._reads[cls] = {}
            for n in walked(cls.node):
                if isinstance(n, ast.Attribute):
                    name = self_attribute(n)
                    if name is not None and isinstance(n.ctx, ast.Load):
                        reads.setdefault(name, []).append(n)
        return list(reads.get(attribute, ()))


def _bound_names(target: ast.AST) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for e in target.elts for n in _bound_names(e.value if isinstance(e, ast.Starred) else e)]
    if isinstance(target, ast.Subscript):
        root = _root_name(target)
        return [root] if root else []
    return []


def walker(ctx: "FileContext") -> Walker:
    return ctx.memo("census.walker", lambda: Walker(file_index(ctx)))


def line_span(*nodes: ast.AST) -> tuple[int, int]:
    lines = [n.lineno for n in nodes if hasattr(n, "lineno")]
    ends = [getattr(n, "end_lineno", n.lineno) or n.lineno for n in nodes if hasattr(n, "lineno")]
    return min(lines), max(ends)


# --- the vocabulary, by meaning ---------------------------------------------------------------

_PRODUCT_CALLS = frozenset({"matmul", "bmm", "mm", "einsum", "baddbmm"})


def product_operands(node: ast.AST) -> tuple[ast.expr, ast.expr] | None:
    """The two tensors multiplied by `a @ b`, `matmul`, `bmm`, `mm`, `baddbmm(c, a, b)` or a
    two-operand `einsum`, as function or method."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
        return node.left, node.right
    if not isinstance(node, ast.Call):
        return None
    name = last_name(node.func)
    if name not in _PRODUCT_CALLS:
        return None
    args = [a for a in node.args if not isinstance(a, ast.Starred)]
    receiver = node.func.value if isinstance(node.func, ast.Attribute) and not is_namespace(node.func.value) else None
    if name == "einsum":
        tensors = [a for a in args if literal_string(a) is None]
        if len(tensors) == 1 and isinstance(tensors[0], (ast.List, ast.Tuple)):
            tensors = list(tensors[0].elts)
        return (tensors[0], tensors[1]) if len(tensors) == 2 else None
    if name == "baddbmm":
        args = ([receiver] if receiver is not None else []) + args
        return (args[1], args[2]) if len(args) >= 3 else None
    if receiver is not None and len(args) == 1:
        return receiver, args[0]
    return (args[0], args[1]) if len(args) >= 2 else None


def is_softmax(node: ast.AST, function: Function) -> bool:
    """A softmax of any spelling: `F.softmax`, `x.softmax`, `nn.Softmax(d)(x)`, `self.softmax(x)`
    with `self.softmax = nn.Softmax(...)`, or a helper named for it (`masked_softmax`)."""
    if not isinstance(node, ast.Call):
        return False
    if _autograd_softmax(node):
        return True
    name = last_name(node.func).lower()
    if "log_softmax" in name or "softmax" not in name and "softmax" not in _built_by(node.func, function).lower():
        return False
    if self_attribute(node.func) is not None and function.cls is not None:
        built = function.cls.constructor(self_attribute(node.func)).lower()
        return "softmax" in built or (not built and "softmax" in name)
    return bool(node.args) or isinstance(node.func, ast.Attribute)


def softmax_input(node: ast.Call, modules: frozenset[str] = frozenset()) -> ast.AST | None:
    """`x` of `F.softmax(x, -1)`, `self.softmax(x)`, `nn.Softmax(-1)(x)` and `x.softmax(-1)`."""
    func = node.func
    if _autograd_softmax(node):
        return node.args[0]
    if isinstance(func, ast.Attribute) and not is_namespace(func.value, modules) and self_attribute(func) is None:
        return func.value
    return node.args[0] if node.args else None


def _autograd_softmax(node: ast.Call) -> bool:
    """`MaskedSoftmax.apply(x, ...)`: a custom autograd Function named for a softmax."""
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "apply" and bool(node.args)
            and "softmax" in last_name(func.value).lower() and "log_softmax" not in last_name(func.value).lower())


def _built_by(func: ast.AST, function: Function) -> str:
    attribute = self_attribute(func)
    if attribute is not None and function.cls is not None:
        return function.cls.constructor(attribute)
    return ""


def is_weight(node: ast.AST, function: Function) -> bool:
    """A parameter read as a matrix: `self.w_q`, `self.proj.weight`, `self.W[i]`, `weight.t()`."""
    while isinstance(node, (ast.Subscript, ast.Call)) or (
            isinstance(node, ast.Attribute) and node.attr in ("T", "mT", "t", "transpose", "data")):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Attribute):
                return False
            node = node.func.value
        else:
            node = node.value
    if isinstance(node, ast.Attribute) and node.attr in ("weight", "bias"):
        return True
    attribute = self_attribute(node)
    if attribute is None or function.cls is None:
        return False
    return "Parameter" in function.cls.constructor(attribute) or any(
        isinstance(v, ast.Call) and last_name(v.func) in ("randn", "zeros", "empty", "ones", "rand")
        for v in function.cls.attributes.get(attribute, ()))


_NOT_PROJECTIONS = ("dropout", "norm", "softmax", "embedding", "relu", "gelu", "silu", "tanh",
                    "sigmoid", "identity", "pool", "attention", "rotary", "position", "act")


def projection_name(node: ast.AST, function: Function, index: FileIndex) -> str | None:
    """The weight a projection call applies, by attribute: `query` for `self.query(x)` with
    `self.query` built by any callable but a known non-projection, `w_q` for `x @ self.w_q` /
    `F.linear(x, self.w_q)` / an einsum with it, `linears[*]` for a loop over a ModuleList."""
    if isinstance(node, ast.Call):
        attribute = self_attribute(node.func)
        if attribute is not None and function.cls is not None:
            if attribute in function.cls.methods:
                return None
            built = function.cls.constructor(attribute)
            if not built:
                return None
            lowered = built.lower()
            if any(word in lowered for word in _NOT_PROJECTIONS) or _is_non_unit_conv(
                    function.cls.constructor_call(attribute)):
                return None
            return attribute
        if isinstance(node.func, ast.Name) and node.func.id in function.iterated:
            source = function.iterated[node.func.id]
            group = self_attribute(source)
            if group is not None:
                return group + "[*]"
        if last_name(node.func) == "linear" and len(node.args) >= 2 and is_weight(node.args[1], function):
            return _weight_key(node.args[1])
    pair = product_operands(node)
    if pair is not None:
        weights = [p for p in pair if is_weight(p, function)]
        if len(weights) == 1:
            return _weight_key(weights[0])
    return None


def _weight_key(node: ast.AST) -> str:
    while not (self_attribute(node) or isinstance(node, ast.Name)) and isinstance(
            node, (ast.Subscript, ast.Attribute, ast.Call)):
        node = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            else getattr(node, "value", node)
        if isinstance(node, ast.Call) and not isinstance(node.func, ast.Attribute):
            break
    return self_attribute(node) or dotted(node) or "?"


def _is_non_unit_conv(call: ast.Call | None) -> bool:
    """A convolution with a kernel wider than 1 mixes positions: not a projection."""
    if call is None or "conv" not in last_name(call.func).lower() or last_name(call.func) == "Conv1D":
        return False
    kernel = next((k.value for k in call.keywords if k.arg == "kernel_size"),
                  call.args[2] if len(call.args) >= 3 else None)
    if isinstance(kernel, ast.Constant) and kernel.value == 1:
        return False
    if isinstance(kernel, ast.Tuple) and all(isinstance(e, ast.Constant) and e.value == 1 for e in kernel.elts):
        return False
    return True


ACTIVATIONS = frozenset({
    "relu", "gelu", "silu", "swish", "tanh", "sigmoid", "elu", "selu", "celu", "leaky_relu", "mish",
    "relu6", "softplus", "hardswish", "quick_gelu", "gelu_new", "gelu_fast", "new_gelu", "relu_",
    "squared_relu", "hardtanh",
})


def is_activation(node: ast.AST, function: Function) -> bool:
    """An element-wise nonlinearity: a function (`F.relu`, `torch.tanh`, `x.relu()`), a module
    (`self.act = nn.GELU()`), or a module looked up by name (`ACT2FN[...]`, `get_activation`)."""
    if not isinstance(node, ast.Call):
        return False
    name = last_name(node.func).lower()
    if name in ACTIVATIONS or (isinstance(node.func, ast.Call) and name in ACTIVATIONS):
        return True
    attribute = self_attribute(node.func)
    if attribute is not None and function.cls is not None:
        values = function.cls.attributes.get(attribute, ())
        for value in values:
            built = dotted(value.func if isinstance(value, ast.Call) else value).lower()
            if last_name(value.func if isinstance(value, ast.Call) else value).lower() in ACTIVATIONS:
                return True
            if isinstance(value, ast.Subscript) or "activation" in built or "act" in built.split(".")[-1]:
                return True
        return not values and ("act" in attribute.lower())
    return False


def is_dropout(node: ast.AST, function: Function) -> bool:
    if not isinstance(node, ast.Call):
        return False
    if "dropout" in last_name(node.func).lower():
        return True
    attribute = self_attribute(node.func)
    return bool(attribute and function.cls is not None
                and "dropout" in function.cls.constructor(attribute).lower())


def is_norm(node: ast.AST, function: Function) -> bool:
    """A layer or RMS norm over features (not batch or group norm: those are not a transformer's)."""
    if not isinstance(node, ast.Call):
        return False
    name = last_name(node.func)
    if name in ("layer_norm", "rms_norm"):
        return True
    attribute = self_attribute(node.func)
    if attribute is None or function.cls is None:
        return False
    built = last_name(function.cls.constructor_call(attribute).func) if function.cls.constructor_call(attribute) else ""
    if built:
        return "layernorm" in built.lower() or "rmsnorm" in built.lower()
    return any(word in attribute.lower() for word in ("layer_norm", "layernorm", "ln"))


BUILTIN_LAYERS = ("TransformerEncoderLayer", "TransformerDecoderLayer", "Transformer")


def builtin_layers(index: FileIndex) -> Iterator[tuple[ast.Call, str, str]]:
    """(call, enclosing class or '<module>', class name) of each `nn.TransformerEncoderLayer(...)`
    and its kin, however imported (a class of this file that shares the name is not one)."""
    for node in index.calls:
        name = last_name(node.func)
        if name not in BUILTIN_LAYERS or self_attribute(node.func) is not None:
            continue
        if isinstance(node.func, ast.Name) and name in index.class_by_name:
            continue
        if isinstance(node.func, ast.Attribute) and not isinstance(node.func.value, (ast.Name, ast.Attribute)):
            continue
        cls = enclosing_class(index, node)
        yield node, cls.qualname if cls else "<module>", name


def enclosing_class(index: FileIndex, node: ast.AST) -> ClassInfo | None:
    current = index.parents.get(node)
    while current is not None and not isinstance(current, ast.ClassDef):
        current = index.parents.get(current)
    return next((c for c in index.classes if c.node is current), None) if current is not None else None


def unit_projection_class(call: ast.Call | None) -> bool:
    """A constructor of a position-wise projection: `Linear` (any module's), GPT-2's `Conv1D`,
    a convolution with kernel size 1, or a factory named for one (`make_linear`, `Dense`)."""
    if call is None:
        return False
    name = last_name(call.func).lower()
    if "conv" in name:
        return not _is_non_unit_conv(call)
    return "linear" in name or "dense" in name
