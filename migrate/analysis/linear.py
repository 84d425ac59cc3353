"""Is this an `nn.Linear`? Under any alias, a subclass that computes what Linear does, a factory
function that returns one (in any project file), or an element of a list of them.

Answers what is known about the layer (`LinearLayer`): its in/out features and bias as
expressions of the file being migrated (None when not known) and which construct built it.
"""

from __future__ import annotations

import ast
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from tf_migrate.analysis.helpers import bind_arguments
from tf_migrate.analysis.names import int_value, self_attribute
from tf_migrate.analysis.project import Symbol
from tf_migrate.analysis.project.facts import LINEAR_ARGUMENTS, clones_function, forward_passes_through, returned_call
from tf_migrate.analysis.project.index import dotted_text
from tf_migrate.analysis.symbols import externals, init_values, symbols_of
from tf_migrate.analysis.walked import walked

if TYPE_CHECKING:
    from tf_migrate.analysis.modules import ModuleClass
    from tf_migrate.engine.context import FileContext

LINEAR = "torch.nn.Linear"


@dataclass
class LinearLayer:
    construct: str  # "nn.Linear", "subclass MyLinear", "factory Linear", ...
    call: cst.Call  # the construction in this file (the Linear, the factory or subclass call)
    in_features: cst.BaseExpression | None
    out_features: cst.BaseExpression | None
    bias: cst.BaseExpression | None  # None: not passed (True)
    # Called as `construct(in, out, bias=...)` it builds a layer computing what nn.Linear(in, out,
    # bias) does: a fused or resized copy may be built with the same callee.
    linear_signature: bool = False
    # A wrapper module holding the nn.Linear as `self.<inner>` (its keys are `<inner>.weight`).
    inner: str = ""


@dataclass
class LinearList:
    """A ModuleList / list whose every element is a Linear: `construct` says how it was built."""

    construct: str  # "comprehension", "clones", "deepcopy comprehension", "list"
    elements: list[LinearLayer]  # one per element when listed, else one shared description
    count: int | None  # None when the count is not a literal

    def element(self, index: int) -> LinearLayer | None:
        if len(self.elements) > 1:
            return self.elements[index] if -len(self.elements) <= index < len(self.elements) else None
        if self.count is not None and not -self.count <= index < self.count:
            return None
        return self.elements[0] if self.elements else None


def is_linear_layer(ctx: "FileContext", cls: "ModuleClass", node: cst.CSTNode) -> LinearLayer | None:
    """`node`: a construction call, `self.attr` (built in `__init__`) or `self.attr[i]`."""
    if isinstance(node, cst.Call):
        return linear_construction(ctx, node)
    attribute = self_attribute(node)
    if attribute is not None:
        values = init_values(cls, attribute)
        layers = [linear_construction(ctx, v) if isinstance(v, cst.Call) else None for v in values]
        return layers[0] if layers and all(layers) else None
    if isinstance(node, cst.Subscript) and len(node.slice) == 1 and isinstance(node.slice[0].slice, cst.Index):
        index = int_value(node.slice[0].slice.value)
        listed = linear_elements(ctx, cls, self_attribute(node.value) or "")
        return listed.element(index) if listed is not None and index is not None else None
    return None


def linear_construction(ctx: "FileContext", call: cst.Call) -> LinearLayer | None:
    symbols = symbols_of(ctx, call.func)
    layers = [_from_symbol(ctx, call, symbol) for symbol in symbols]
    return layers[0] if layers and all(layers) else None


def _from_symbol(ctx: "FileContext", call: cst.Call, symbol: Symbol) -> LinearLayer | None:
    if symbol.kind == "external":
        return _layer("nn.Linear", call, _linear_args(call), True) if symbol.qualified == LINEAR else None
    if symbol.kind == "class" and forward_passes_through(ctx.project, symbol, LINEAR):
        # Its own __init__ may take other arguments: then in/out/bias are not known from the call.
        own_init = ctx.project.method(symbol, "__init__") is not None
        return _layer(f"subclass {symbol.qualname}", call, {} if own_init else _linear_args(call), not own_init)
    if symbol.kind == "function":
        return _factory(ctx, call, symbol)
    return None


def wrapped_linear(ctx: "FileContext", call: cst.Call) -> LinearLayer | None:
    """`call` builds a wrapper module around one nn.Linear (`linear_wrapper`), described as the
    Linear it computes. Not part of `linear_construction`: its keys carry the wrapper's prefix
    (`inner`), which a caller must account for."""
    wrapper = linear_wrapper(ctx, call)
    return wrapper.layer(call) if wrapper is not None else None


def _layer(construct: str, call: cst.Call, args: dict[str, cst.BaseExpression] | None,
           signature: bool) -> LinearLayer | None:
    if args is None:
        return None
    return LinearLayer(construct, call, args.get("in_features"), args.get("out_features"), args.get("bias"), signature)


def _linear_args(call: cst.Call) -> dict[str, cst.BaseExpression] | None:
    found: dict[str, cst.BaseExpression] = {}
    for position, arg in enumerate(call.args):
        if arg.star:
            return {}
        key = arg.keyword.value if arg.keyword is not None else (
            LINEAR_ARGUMENTS[position] if position < 3 else None)
        if key in LINEAR_ARGUMENTS:
            found[key] = arg.value
    return found


def _factory(ctx: "FileContext", call: cst.Call, symbol: Symbol) -> LinearLayer | None:
    """`def Linear(i, o, bias=True): m = nn.Linear(i, o, bias); init(m); return m`."""
    returned = returned_call(ctx.project, symbol)
    if returned is None or not returned.callee:
        return None
    if not all(s.qualified == LINEAR or (s.kind == "class" and forward_passes_through(ctx.project, s, LINEAR))
               for s in returned.callee):
        return None
    bound = bind_arguments(symbol.node, call) if isinstance(symbol.node, ast.FunctionDef) else None
    inner: dict[str, cst.BaseExpression] = {}
    for position, arg in enumerate(returned.call.args):
        _inner_argument(inner, LINEAR_ARGUMENTS[position] if position < 3 else "", str(position), arg, returned, bound)
    for keyword in returned.call.keywords:
        _inner_argument(inner, keyword.arg or "", keyword.arg or "", keyword.value, returned, bound)
    return LinearLayer(f"factory {symbol.qualname}", call, inner.get("in_features"), inner.get("out_features"),
                       inner.get("bias"), _factory_signature(symbol.node, returned))


def _factory_signature(function: ast.FunctionDef, returned) -> bool:
    """`def f(a, b, bias=True)` passing a, b, bias to the Linear as they come: a call `f(in, out,
    bias=...)` means what `nn.Linear(in, out, bias=...)` does (its own init aside)."""
    params = [a.arg for a in function.args.posonlyargs + function.args.args]
    if function.args.vararg or function.args.kwarg or function.args.kwonlyargs or not 2 <= len(params) <= 3:
        return False
    passed = {LINEAR_ARGUMENTS[int(k)] if k.isdigit() and int(k) < 3 else k: v for k, v in returned.params.items()}
    expected = dict(zip(LINEAR_ARGUMENTS, params))
    return passed == expected and len(returned.call.args) + len(returned.call.keywords) == len(params) \
        and params[2:] in ([], ["bias"])


def _inner_argument(inner: dict, name: str, key: str, arg: ast.expr, returned, bound) -> None:
    if name not in LINEAR_ARGUMENTS:
        return
    param = returned.params.get(key)
    if param is not None:
        if bound is not None and param in bound:
            inner[name] = bound[param]
    elif isinstance(arg, ast.Constant):
        inner[name] = cst.parse_expression(ast.unparse(arg))


def linear_elements(ctx: "FileContext", cls: "ModuleClass", attribute: str) -> LinearList | None:
    """`self.<attribute>` as a list of Linears: `nn.ModuleList([nn.Linear(d, d) for _ in range(4)])`,
    `clones(nn.Linear(d, d), 4)`, `[copy.deepcopy(lin) for _ in range(N)]`, a list literal."""
    values = init_values(cls, attribute)
    if len(values) != 1:
        return None
    value = values[0]
    if isinstance(value, cst.Call) and externals(symbols_of(ctx, value.func)) == {"torch.nn.ModuleList"}:
        if len(value.args) != 1 or value.args[0].keyword is not None:
            return None
        value = value.args[0].value
    if isinstance(value, cst.Call):
        return _clones(ctx, cls, value)
    if isinstance(value, cst.List):
        layers = [linear_construction(ctx, e.value) if isinstance(e.value, cst.Call) else None for e in value.elements]
        return LinearList("list", layers, len(layers)) if layers and all(layers) else None
    if isinstance(value, cst.ListComp):
        return _comprehension(ctx, cls, value)
    return None


def _comprehension(ctx: "FileContext", cls: "ModuleClass", node: cst.ListComp) -> LinearList | None:
    loop = node.for_in
    if loop.inner_for_in is not None or loop.ifs or not isinstance(loop.iter, cst.Call) \
            or ctx.names.builtin(loop.iter.func) != "builtins.range" or len(loop.iter.args) != 1:
        return None
    count = int_value(loop.iter.args[0].value)
    element = node.elt
    construct = "comprehension"
    if isinstance(element, cst.Call) and externals(symbols_of(ctx, element.func)) == {"copy.deepcopy"} \
            and len(element.args) == 1:
        element = _local_value(cls, element.args[0].value)
        construct = "deepcopy comprehension"
    layer = linear_construction(ctx, element) if isinstance(element, cst.Call) else None
    return LinearList(construct, [layer], count) if layer else None


def _local_value(cls: "ModuleClass", node: cst.BaseExpression) -> cst.BaseExpression | None:
    """The one value `__init__` assigns to a local name (None when assigned more than once)."""
    from tf_migrate.analysis.nodes import find

    if isinstance(node, cst.Call):
        return node
    init = cls.methods.get("__init__")
    if not isinstance(node, cst.Name) or init is None:
        return None
    values = [a.value for a in find(init, lambda n: isinstance(n, cst.Assign))
              if any(isinstance(t.target, cst.Name) and t.target.value == node.value for t in a.targets)]
    return values[0] if len(values) == 1 else None


def _clones(ctx: "FileContext", cls: "ModuleClass", call: cst.Call) -> LinearList | None:
    symbols = symbols_of(ctx, call.func)
    if len(symbols) != 1 or not isinstance(symbols[0].node, ast.FunctionDef):
        return None
    params = clones_function(ctx.project, symbols[0])
    bound = bind_arguments(symbols[0].node, call) if params else None
    if not params or bound is None or params[0] not in bound or params[1] not in bound:
        return None
    element = _local_value(cls, bound[params[0]])
    layer = linear_construction(ctx, element) if isinstance(element, cst.Call) else None
    return LinearList(f"clones ({symbols[0].qualname})", [layer], int_value(bound[params[1]])) if layer else None


# -- wrappers: a module that holds one nn.Linear and only applies it -----------------------------

_INIT_MODULES = ("torch.nn.init.",)


@dataclass
class LinearWrapper:
    """A project class `W(in, out[, bias])` whose `__init__` builds `self.<inner> = nn.Linear(in,
    out[, bias])` (then at most `nn.init` calls on its weight/bias) and whose forward returns
    `self.<inner>(x)`: called like nn.Linear it computes what nn.Linear does, and its state_dict
    keys go through `<inner>.` (`proj.linear.weight`). The one recogniser of such wrappers: TFM102
    asks it as is (`linear_wrapper`), TFM301 as a LinearLayer (`wrapped_linear`). Anything more in
    the class (another method or attribute, `weight_norm(self.<inner>)`, a parameter of its own, an
    inherited `__init__`/`forward`) and it is not one: its keys or behaviour could differ."""

    qualname: str
    inner: str  # the attribute holding the nn.Linear
    params: list[str]  # the constructor's parameters: in, out[, bias]
    bias: str | None  # the bias the inner Linear gets when it is not a parameter: "True"/"False"
    inits: list[str]  # the `nn.init` functions `__init__` applies, by name
    bias_default: str | None = None  # the bias parameter's default ("True"/"False"), if any

    def arguments(self, call: cst.Call) -> dict[str, cst.BaseExpression] | None:
        """in_features/out_features/bias of a call of the wrapper (None: other arguments)."""
        found: dict[str, cst.BaseExpression] = {}
        names = dict(zip(self.params, LINEAR_ARGUMENTS))
        for position, arg in enumerate(call.args):
            if arg.star:
                return None
            key = arg.keyword.value if arg.keyword is not None else (
                self.params[position] if position < len(self.params) else None)
            if key not in names:
                return None
            found[names[key]] = arg.value
        if "in_features" not in found or "out_features" not in found:
            return None
        if self.bias is not None:
            found["bias"] = cst.Name(self.bias)
        elif "bias" not in found:
            if self.bias_default is None:
                return None
            found["bias"] = cst.Name(self.bias_default)
        return found

    def layer(self, call: cst.Call) -> LinearLayer:
        """A call of the wrapper as a LinearLayer: `linear_signature` when it is called like nn.Linear."""
        found = self.arguments(call)
        return LinearLayer(f"wrapper {self.qualname}", call, *((found or {}).get(k) for k in LINEAR_ARGUMENTS),
                           found is not None, self.inner)


def linear_wrapper(ctx: "FileContext", call: cst.Call) -> LinearWrapper | None:
    """The wrapper `call` builds, when every symbol its callee may be is one (see LinearWrapper)."""
    found = [_wrapper(ctx.project, s) for s in symbols_of(ctx, call.func)]
    return found[0] if found and all(found) and len({w.qualname for w in found}) == 1 else None


def _wrapper(project, symbol: Symbol) -> LinearWrapper | None:
    node = symbol.node
    if symbol.kind != "class" or not isinstance(node, ast.ClassDef) or len(node.bases) != 1 or node.keywords \
            or node.decorator_list or project.derives_from(symbol, LINEAR) \
            or {s.qualified for s in project.resolve_dotted(symbol.path, dotted_text(node.bases[0]) or "")} \
            != {"torch.nn.Module"}:
        return None
    body = [s for s in node.body if not _docstring(s)]
    methods = {s.name: s for s in body if isinstance(s, ast.FunctionDef)}
    if len(body) != 2 or set(methods) != {"__init__", "forward"} \
            or any(m.decorator_list for m in methods.values()):
        return None
    built = _inner_linear(project, symbol.path, methods["__init__"])
    if built is None or not _applies_only(methods["forward"], built[0]):
        return None
    init = methods["__init__"]
    default = init.args.defaults[0] if len(built[1]) == 3 and init.args.defaults else None
    if default is not None and not (isinstance(default, ast.Constant) and isinstance(default.value, bool)):
        return None
    return LinearWrapper(symbol.qualname, *built, str(default.value) if default is not None else None)


def _inner_linear(project, path: str, init: ast.FunctionDef) -> tuple[str, list[str], str | None, list[str]] | None:
    args = init.args
    params = [a.arg for a in args.posonlyargs + args.args][1:]
    if args.vararg or args.kwarg or args.kwonlyargs or not 2 <= len(params) <= 3 \
            or (len(params) == 3 and len(args.defaults) > 1) or (len(params) == 2 and args.defaults):
        return None
    inner, bias, inits = None, None, []
    for statement in _flat(init, params):
        if statement is None:
            return None
        value = statement.value
        if isinstance(statement, ast.Expr) and isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) \
                and value.func.attr == "__init__" and isinstance(value.func.value, ast.Call) \
                and dotted_text(value.func.value.func) == "super" and not value.args and not value.keywords:
            continue
        if isinstance(statement, ast.Assign) and inner is None and len(statement.targets) == 1 \
                and isinstance(value, ast.Call) and _self_attr(statement.targets[0]) is not None \
                and {s.qualified for s in project.resolve_dotted(path, dotted_text(value.func) or "")} == {LINEAR}:
            bias = _passes_through(value, params)
            if bias is False:
                return None
            inner = _self_attr(statement.targets[0])
            continue
        if inner is not None and isinstance(statement, ast.Expr) and isinstance(value, ast.Call) \
                and len(value.args) == 1 and not value.keywords \
                and all(s.qualified.startswith(_INIT_MODULES) for s in project.resolve_dotted(
                    path, dotted_text(value.func) or "")) and project.resolve_dotted(path, dotted_text(value.func) or "") \
                and isinstance(value.args[0], ast.Attribute) and value.args[0].attr in ("weight", "bias") \
                and _self_attr(value.args[0].value) == inner:
            inits.append(value.func.attr if isinstance(value.func, ast.Attribute) else dotted_text(value.func) or "")
            continue
        return None
    return (inner, params, bias, inits) if inner is not None else None


def _flat(init: ast.FunctionDef, params: list[str]):
    """The statements of `__init__`, an `if <bias parameter>:` block's opened; None for others."""
    for statement in init.body:
        if _docstring(statement):
            continue
        if isinstance(statement, ast.If) and not statement.orelse and len(params) == 3 \
                and isinstance(statement.test, ast.Name) and statement.test.id == params[2]:
            yield from statement.body
        elif isinstance(statement, (ast.Expr, ast.Assign)):
            yield statement
        else:
            yield None


def _passes_through(call: ast.Call, params: list[str]) -> str | None | bool:
    """None when `call` is `Linear(p0, p1[, bias=p2])` with the wrapper's own parameters (bias
    from p2 or Linear's default); "True"/"False" for a literal bias; False when it is built otherwise."""
    passed = {LINEAR_ARGUMENTS[i]: a for i, a in enumerate(call.args)} if len(call.args) <= 3 else None
    if passed is None or any(isinstance(a, ast.Starred) for a in call.args):
        return False
    for keyword in call.keywords:
        if keyword.arg not in LINEAR_ARGUMENTS or keyword.arg in passed:
            return False
        passed[keyword.arg] = keyword.value
    names = {k: v.id for k, v in passed.items() if isinstance(v, ast.Name)}
    if names.get("in_features") != params[0] or names.get("out_features") != params[1]:
        return False
    if len(params) == 3:
        return None if names.get("bias") == params[2] else False
    if "bias" not in passed:
        return "True"
    value = passed["bias"]
    return str(value.value) if isinstance(value, ast.Constant) and isinstance(value.value, bool) else False


def _applies_only(forward: ast.FunctionDef, inner: str) -> bool:
    """`def forward(self, x): return self.<inner>(x)`."""
    args = forward.args
    params = [a.arg for a in args.posonlyargs + args.args]
    body = [s for s in forward.body if not _docstring(s)]
    if len(params) != 2 or args.vararg or args.kwarg or args.kwonlyargs or len(body) != 1 \
            or not isinstance(body[0], ast.Return):
        return False
    call = body[0].value
    return isinstance(call, ast.Call) and _self_attr(call.func) == inner and len(call.args) == 1 \
        and not call.keywords and isinstance(call.args[0], ast.Name) and call.args[0].id == params[1]


def _self_attr(node: ast.AST) -> str | None:
    return node.attr if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
        and node.value.id == "self" else None


def _docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
        and isinstance(statement.value.value, str)


def transposed_linear(ctx: "FileContext", call: cst.Call) -> LinearLayer | None:
    """GPT-2's `Conv1D(nf, nx)`: a project module whose `__init__` makes `self.weight` a Parameter
    of shape (in, out) from two of its parameters (and `self.bias` of shape (out,)), and whose
    forward is `torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)` (or
    `x @ self.weight + self.bias`): a Linear storing its weight transposed. Always has a bias.
    Not part of `linear_construction`: its weight is (in, out), which a caller must account for."""
    symbols = symbols_of(ctx, call.func)
    if len(symbols) != 1 or symbols[0].kind != "class":
        return None
    symbol = symbols[0]
    init, forward = ctx.project.method(symbol, "__init__"), ctx.project.method(symbol, "forward")
    if init is None or forward is None or not ctx.project.is_nn_module(symbol) or not _addmm_forward(forward[1]):
        return None
    shape = _weight_shape(init[1])
    bound = bind_arguments(init[1], call, bound_self=True)
    if shape is None or bound is None or shape[0] not in bound or shape[1] not in bound:
        return None
    return LinearLayer(f"transposed {symbol.qualname}", call, bound[shape[0]], bound[shape[1]], None, False)


def _addmm_forward(function: ast.FunctionDef) -> bool:
    """The forward's only product is `addmm(self.bias, <input>, self.weight)` or
    `<input> @ self.weight + self.bias`."""
    known = _ADDMM_FORWARDS.get(function)
    if known is None:
        known = _ADDMM_FORWARDS[function] = _only_addmm(function)
    return known


# forward -> `_addmm_forward`'s answer (it reads only the function's subtree; asked per call of the class)
_ADDMM_FORWARDS: "weakref.WeakKeyDictionary[ast.AST, bool]" = weakref.WeakKeyDictionary()


def _only_addmm(function: ast.FunctionDef) -> bool:
    def own(node: ast.AST, name: str) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == name and isinstance(node.value, ast.Name) \
            and node.value.id == "self"

    found = []
    for node in walked(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "addmm":
            found.append(len(node.args) == 3 and own(node.args[0], "bias") and own(node.args[2], "weight"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            found.append(own(node.right, "weight"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("matmul", "mm"):
            found.append(False)
    return found == [True]


def _weight_shape(init: ast.FunctionDef) -> tuple[str, str] | None:
    """(in, out) parameter names: `w = torch.empty(nx, nf)` ... `self.weight = nn.Parameter(w)`
    (or the constructor inline), with `self.bias` of shape (nf,)."""
    params = {a.arg for a in init.args.args[1:]}
    locals_: dict[str, ast.expr] = {}
    weight = bias = None
    for node in ast.walk(init):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                locals_[target.id] = node.value
            elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                if target.attr == "weight":
                    weight = node.value
                elif target.attr == "bias":
                    bias = node.value

    def sizes(value) -> list[str] | None:
        if isinstance(value, ast.Call) and value.args and not value.keywords and dotted_text(value.func) \
                and dotted_text(value.func).split(".")[-1] == "Parameter":
            value = value.args[0]
        if isinstance(value, ast.Name):
            value = locals_.get(value.id)
        if isinstance(value, ast.Call) and all(isinstance(a, ast.Name) and a.id in params for a in value.args):
            return [a.id for a in value.args]
        return None

    w, b = sizes(weight), sizes(bias)
    if w is None or len(w) != 2 or b is None or b != [w[1]]:
        return None
    return w[0], w[1]
