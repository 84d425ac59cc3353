"""What project definitions do, read from their `ast`: facts the semantic building blocks ask
about functions and classes in any file (the file being migrated included).

Every fact is a necessary-and-sufficient reading of a small, closed set of shapes; anything else
answers None ("not known"), never a guess.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from tf_migrate.analysis.project.index import ProjectIndex, Symbol, dotted_text

LINEAR_ARGUMENTS = ("in_features", "out_features", "bias")

ACTIVATION_CLASSES = {
    "torch.nn.ReLU": "relu", "torch.nn.GELU": "gelu", "torch.nn.SiLU": "silu", "torch.nn.Tanh": "tanh",
    "torch.nn.Sigmoid": "sigmoid", "torch.nn.Mish": "mish", "torch.nn.LeakyReLU": "leaky_relu",
    "torch.nn.ELU": "elu", "torch.nn.Softplus": "softplus", "torch.nn.ReLU6": "relu6",
    "torch.nn.Hardswish": "hardswish", "torch.nn.GLU": None,  # GLU halves its input: not elementwise
}
ACTIVATION_FUNCTIONS = {
    "torch.nn.functional.relu": "relu", "torch.relu": "relu", "torch.nn.functional.gelu": "gelu",
    "torch.nn.functional.silu": "silu", "torch.sigmoid": "sigmoid", "torch.nn.functional.sigmoid": "sigmoid",
    "torch.tanh": "tanh", "torch.nn.functional.tanh": "tanh", "torch.nn.functional.mish": "mish",
    "torch.nn.functional.leaky_relu": "leaky_relu", "torch.nn.functional.elu": "elu",
    "torch.nn.functional.softplus": "softplus", "torch.nn.functional.relu6": "relu6",
    "torch.nn.functional.hardswish": "hardswish",
}
# Tensor methods that are one activation each (`x.relu()`).
ACTIVATION_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
# Elementwise building blocks of hand-written activations (`0.5 * x * (1 + torch.tanh(...))`).
_ELEMENTWISE_CALLS = {
    "torch.tanh", "torch.erf", "torch.special.erf", "torch.sigmoid", "torch.exp", "torch.pow", "torch.sqrt",
    "torch.log1p", "torch.clamp", "torch.abs", "math.sqrt", "math.exp", "math.log", "numpy.sqrt",
    "torch.nn.functional.softplus", "torch.relu", "torch.nn.functional.relu", "torch.nn.functional.sigmoid",
    "torch.nn.functional.tanh", "torch.nn.functional.gelu", "torch.nn.functional.silu",
}
_ELEMENTWISE_METHODS = {"tanh", "sigmoid", "erf", "exp", "pow", "float", "half", "to", "type_as", "relu",
                        "clamp", "abs", "sqrt", "mul", "add", "div", "log1p"}
LAYER_NORM_CLASSES = {"torch.nn.LayerNorm", "apex.normalization.FusedLayerNorm",
                      "apex.normalization.fused_layer_norm.FusedLayerNorm",
                      "apex.normalization.MixedFusedLayerNorm"}


def _params(function: ast.FunctionDef, skip_self: bool) -> list[ast.arg]:
    args = function.args.posonlyargs + function.args.args
    return args[1:] if skip_self and args else args


def _body(function: ast.FunctionDef) -> list[ast.stmt]:
    """The statements without a leading docstring."""
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return body


def _resolve(project: ProjectIndex, path: str, node: ast.AST) -> list[Symbol]:
    text = dotted_text(node)
    return project.resolve_dotted(path, text) if text else []


def _externals(symbols: list[Symbol]) -> set[str]:
    return {s.qualified for s in symbols if s.kind == "external"}


# -- functions ----------------------------------------------------------------------------------

@dataclass
class ReturnedCall:
    """`return Callee(...)` or `m = Callee(...); ...; return m` in a function: the call, and for each
    argument that is one of the function's parameters, which one."""

    call: ast.Call
    callee: list[Symbol]
    params: dict[str, str] = field(default_factory=dict)  # argument position/keyword -> parameter


def returned_call(project: ProjectIndex, symbol: Symbol) -> ReturnedCall | None:
    """The single construction a function returns, when its value is never replaced on the way
    (`m = nn.Linear(...); init(m.weight); return m`; not `return nn.Sequential(m, norm)`)."""
    function = symbol.node
    if symbol.kind != "function" or not isinstance(function, ast.FunctionDef):
        return None
    returns = [n for n in ast.walk(function) if isinstance(n, ast.Return)]
    if len(returns) != 1 or returns[0].value is None:
        return None
    value = returns[0].value
    if isinstance(value, ast.Name):
        assigned = [n for n in ast.walk(function) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For))
                    and any(isinstance(t, ast.Name) and t.id == value.id for t in _targets(n))]
        if len(assigned) != 1 or not isinstance(assigned[0], ast.Assign):
            return None
        value = assigned[0].value
    if not isinstance(value, ast.Call):
        return None
    names = {a.arg for a in _params(function, False)} | {a.arg for a in function.args.kwonlyargs}
    params = {}
    for position, arg in enumerate(value.args):
        if isinstance(arg, ast.Name) and arg.id in names:
            params[str(position)] = arg.id
    for keyword in value.keywords:
        if keyword.arg and isinstance(keyword.value, ast.Name) and keyword.value.id in names:
            params[keyword.arg] = keyword.value.id
    return ReturnedCall(value, _resolve(project, symbol.path, value.func), params)


def _targets(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.Assign):
        return [t for target in node.targets for t in ast.walk(target)]
    if isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For)):
        return list(ast.walk(node.target))
    return []


def parameter_default(function: ast.FunctionDef, name: str) -> ast.expr | None:
    positional = function.args.posonlyargs + function.args.args
    defaults = function.args.defaults
    for arg, default in zip(positional[len(positional) - len(defaults):], defaults):
        if arg.arg == name:
            return default
    for arg, default in zip(function.args.kwonlyargs, function.args.kw_defaults):
        if arg.arg == name:
            return default
    return None


def parameter_names(function: ast.FunctionDef, skip_self: bool = False) -> list[str]:
    return [a.arg for a in _params(function, skip_self)]


def clones_function(project: ProjectIndex, symbol: Symbol) -> tuple[str, str] | None:
    """`def clones(module, N): return nn.ModuleList([copy.deepcopy(module) for _ in range(N)])`:
    (the module parameter, the count parameter)."""
    function = symbol.node
    if symbol.kind != "function" or not isinstance(function, ast.FunctionDef):
        return None
    body = _body(function)
    if len(body) != 1 or not isinstance(body[0], ast.Return) or not isinstance(body[0].value, ast.Call):
        return None
    call = body[0].value
    if _externals(_resolve(project, symbol.path, call.func)) != {"torch.nn.ModuleList"} or len(call.args) != 1:
        return None
    return deepcopy_comprehension(project, symbol.path, call.args[0])


def deepcopy_comprehension(project: ProjectIndex, path: str, node: ast.AST) -> tuple[str, str] | None:
    """`[copy.deepcopy(m) for _ in range(N)]`: (m's source, N's source)."""
    if not (isinstance(node, ast.ListComp) and len(node.generators) == 1 and isinstance(node.elt, ast.Call)):
        return None
    generator = node.generators[0]
    if not (isinstance(generator.iter, ast.Call) and dotted_text(generator.iter.func) == "range"
            and len(generator.iter.args) == 1 and not generator.ifs):
        return None
    element = node.elt
    if _externals(_resolve(project, path, element.func)) != {"copy.deepcopy"} or len(element.args) != 1:
        return None
    return ast.unparse(element.args[0]), ast.unparse(generator.iter.args[0])


# -- classes ------------------------------------------------------------------------------------

def forward_passes_through(project: ProjectIndex, symbol: Symbol, base: str) -> bool:
    """Whether a project subclass of `base` (e.g. "torch.nn.Linear") computes what `base` does:
    no class between it and `base` defines `forward`, or each `forward` only returns
    `super().forward(...)` of its input, possibly with dtype casts around it."""
    for ancestor in project.ancestors(symbol):
        if ancestor.kind != "class" or not isinstance(ancestor.node, ast.ClassDef):
            continue
        for statement in ancestor.node.body:
            if isinstance(statement, ast.FunctionDef) and statement.name == "forward" \
                    and not _super_forward_only(statement):
                return False
    return project.derives_from(symbol, base)


def _super_forward_only(function: ast.FunctionDef) -> bool:
    body = _body(function)
    if len(body) != 1 or not isinstance(body[0], ast.Return) or body[0].value is None:
        return False
    node = uncast(body[0].value)
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "forward"
            and isinstance(node.func.value, ast.Call) and dotted_text(node.func.value.func) == "super"):
        return False
    params = parameter_names(function, skip_self=True)
    return len(node.args) == 1 and not node.keywords and len(params) >= 1 \
        and isinstance(uncast(node.args[0]), ast.Name) and uncast(node.args[0]).id == params[0]


def uncast(node: ast.AST) -> ast.AST:
    """`x.float()`, `x.to(dtype)`, `x.type_as(y)` -> x."""
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr in ("float", "half", "double", "bfloat16", "to", "type_as", "type"):
        node = node.func.value
    return node


def init_parameters(cls: ast.ClassDef) -> set[str]:
    """`self.x = nn.Parameter(...)` attributes of a class (by spelling: the class is already known
    to be an nn.Module)."""
    found = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and (dotted_text(node.value.func) or "").split(".")[-1] == "Parameter":
            for target in node.targets:
                if isinstance(target, ast.Attribute) and dotted_text(target.value) == "self":
                    found.add(target.attr)
    return found


def layer_norm_forward(project: ProjectIndex, symbol: Symbol) -> bool:
    """A hand-written LayerNorm: forward subtracts the mean over the last dimension, divides by the
    standard deviation (`std`, `var`, or `pow(2).mean`) plus eps, scales by a weight parameter and
    shifts by a bias parameter. RMSNorm (no mean subtraction) and BatchNorm-like code are not."""
    found = project.method(symbol, "forward")
    if found is None:
        return False
    owner, forward = found
    parameters = init_parameters(owner.node) if isinstance(owner.node, ast.ClassDef) else set()
    methods: set[str] = set()
    for node in ast.walk(forward):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            methods.add(node.func.attr)
        elif isinstance(node, ast.Call) and dotted_text(node.func) in ("torch.mean", "torch.var", "torch.std"):
            methods.add(dotted_text(node.func).split(".")[-1])
    subtracts = any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) for n in ast.walk(forward))
    divides = any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) for n in ast.walk(forward)) \
        or "rsqrt" in methods
    used = {n.attr for n in ast.walk(forward) if isinstance(n, ast.Attribute) and dotted_text(n.value) == "self"}
    scaled = len(parameters & used) >= 2
    return "mean" in methods and bool(methods & {"std", "var", "pow"}) and subtracts and divides and scaled


# -- elementwise functions ----------------------------------------------------------------------

def elementwise_kind(project: ProjectIndex, path: str, function: ast.FunctionDef, skip_self: bool,
                     _depth: int = 0) -> str | None:
    """Which activation a function (or a module's forward) computes elementwise from its first
    parameter: "gelu" (erf form), "gelu_tanh", "gelu_sigmoid" (x * sigmoid(1.702 x)), "silu",
    "relu", "sigmoid", "tanh", a known activation it calls, or "elementwise" when the body is
    elementwise but not one of these; None when it is not elementwise (a reduction, a matmul,
    indexing, a softmax, statements other than assignments and one return)."""
    params = parameter_names(function, skip_self)
    if not params or _depth > 3:
        return None
    body = _body(function)
    branches = _feature_branches(body, params)
    if branches is not None:  # `if hasattr(F, "gelu"): return F.gelu(x) else: return <erf form>`
        kinds = {_body_kind(project, path, function, params, b, set(), _depth) for b in branches}
        return kinds.pop() if len(kinds) == 1 else None
    kept = _memo_skipped(function, body)
    memo = {dotted_text(s.body[0].targets[0]) for s in body if s not in kept}
    return _body_kind(project, path, function, params, kept, memo, _depth)


def _feature_branches(body: list[ast.stmt], params: list[str]) -> list[list[ast.stmt]] | None:
    """A body that is one `if` on something other than the parameters (a feature or version
    check), each branch ending in a return: the two branches, else None."""
    if len(body) != 1 or not isinstance(body[0], ast.If) or not body[0].orelse:
        return None
    if any(isinstance(n, ast.Name) and n.id in params for n in ast.walk(body[0].test)):
        return None
    return [body[0].body, body[0].orelse]


def _memo_skipped(function: ast.FunctionDef, body: list[ast.stmt]) -> list[ast.stmt]:
    """Without `if not hasattr(f, "_a"): f._a = <number>`, a constant cached on the function itself."""
    def memo(statement: ast.stmt) -> bool:
        return isinstance(statement, ast.If) and not statement.orelse and len(statement.body) == 1 \
            and isinstance(statement.body[0], ast.Assign) and len(statement.body[0].targets) == 1 \
            and _own_attribute(function, statement.body[0].targets[0]) \
            and not any(isinstance(n, ast.Name) and n.id in parameter_names(function, False)
                        for n in ast.walk(statement.body[0].value))
    return [s for s in body if not memo(s)]


def _own_attribute(function: ast.FunctionDef, node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == function.name


def _body_kind(project: ProjectIndex, path: str, function: ast.FunctionDef, params: list[str],
               body: list[ast.stmt], memo: set[str], _depth: int) -> str | None:
    if not body or not isinstance(body[-1], ast.Return) or body[-1].value is None:
        return None
    local = set(params)
    local.update(memo)  # memoised constants (`_memo_skipped`) are read as `f._a`
    calls: set[str] = set()
    for statement in body[:-1]:
        if not (isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets)):
            return None
        if not _elementwise(project, path, statement.value, local, calls, _depth):
            return None
        local.update(t.id for t in statement.targets)
    if not _elementwise(project, path, body[-1].value, local, calls, _depth):
        return None
    constants = {n.value for n in ast.walk(function) if isinstance(n, ast.Constant) and isinstance(n.value, float)}
    if "tanh" in calls and 0.044715 in constants:
        return "gelu_tanh"
    if "erf" in calls:
        return "gelu"
    if "sigmoid" in calls and 1.702 in constants:
        return "gelu_sigmoid"
    if "sigmoid" in calls and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mult) for n in ast.walk(body[-1])):
        return "silu"
    named = calls & {"relu", "sigmoid", "tanh", "gelu", "silu", "gelu_tanh"}
    return next(iter(named)) if len(named) == 1 and len(calls) == 1 else "elementwise"


def _elementwise(project: ProjectIndex, path: str, node: ast.AST, local: set[str], calls: set[str],
                 depth: int) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    if isinstance(node, ast.Name):
        return node.id in local or _constant(project, path, node)
    if isinstance(node, ast.BinOp):
        return not isinstance(node.op, ast.MatMult) and all(
            _elementwise(project, path, n, local, calls, depth) for n in (node.left, node.right))
    if isinstance(node, ast.UnaryOp):
        return _elementwise(project, path, node.operand, local, calls, depth)
    if isinstance(node, ast.Attribute):
        return dotted_text(node) in local or _constant(project, path, node)
    if isinstance(node, ast.Call):
        return _elementwise_call(project, path, node, local, calls, depth)
    return False


def _constant(project: ProjectIndex, path: str, node: ast.AST) -> bool:
    """`math.pi`, a module-level number."""
    if dotted_text(node) in ("math.pi", "math.e", "numpy.pi", "np.pi"):
        return True
    for symbol in _resolve(project, path, node):
        if symbol.qualified in ("math.pi", "math.e", "numpy.pi"):
            return True
        if symbol.kind == "assign" and isinstance(symbol.node, ast.Assign) \
                and isinstance(symbol.node.value, ast.Constant) and isinstance(symbol.node.value.value, (int, float)):
            return True
    return False


def _elementwise_call(project: ProjectIndex, path: str, node: ast.Call, local: set[str], calls: set[str],
                      depth: int) -> bool:
    args = list(node.args) + [k.value for k in node.keywords if k.arg not in ("dtype", "approximate", "inplace")]
    dtype_ok = all(dotted_text(k.value) is not None or isinstance(k.value, ast.Constant)
                   for k in node.keywords if k.arg in ("dtype", "approximate", "inplace"))
    if isinstance(node.func, ast.Attribute) and node.func.attr in _ELEMENTWISE_METHODS \
            and _elementwise(project, path, node.func.value, local, calls, depth):
        if node.func.attr in ("to", "type_as", "float", "half"):
            return True  # casts: their argument is a dtype or a tensor whose dtype is taken
        calls.add(node.func.attr)
        return dtype_ok and all(_elementwise(project, path, a, local, calls, depth) for a in args)
    symbols = _resolve(project, path, node.func)
    if not symbols or not all(_elementwise(project, path, a, local, calls, depth) for a in args):
        return False
    for symbol in symbols:
        if symbol.kind == "external" and symbol.qualified in _ELEMENTWISE_CALLS:
            calls.add(ACTIVATION_FUNCTIONS.get(symbol.qualified, symbol.qualified.rsplit(".", 1)[-1]))
            continue
        if symbol.kind == "function" and isinstance(symbol.node, ast.FunctionDef):
            kind = elementwise_kind(project, symbol.path, symbol.node, False, depth + 1)
            if kind is None:
                return False
            calls.add(kind)
            continue
        return False
    return dtype_ok
